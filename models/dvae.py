"""Discrete VAE family (Jang et al. 2017): d codes of k categories drawn with
the Gumbel-softmax, hard straight-through (one-hot forward, soft gradient),
KL to the uniform categorical. The temperature is constant, linear from tau0
to tau_min over `anneal_epochs`, or exponential, tau = max(tau_min, tau0 *
exp(-rate * step)) updated every `anneal_every` steps. Samples decode
uniform random codes (sampler `uniform`, the prior the KL pulls toward), or
with prior_epochs > 0, at the end, codes from a learned prior (`prior`,
models/prior.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.coders import RECON_METRICS, EncoderDecoder, batched, epoch_means, recon_metrics
from models.config import param
from models.prior import PRIOR_METRICS, PriorSampling


@dataclass
class DVAEConfig:
    arch: str = param("mlp", choices=("mlp", "conv"), help="network architecture")
    d: int = param(20, low=1, high=1024, help="categorical codes")
    k: int = param(10, low=2, high=1024, help="categories per code")
    width: int = param(256, low=2, high=4096, help="hidden units (conv: channels)")
    kl_weight: float = param(1.0, low=0.0, high=1000.0, help="weight of the KL to uniform")
    tau0: float = param(1.0, low=0.01, high=100.0, help="initial temperature")
    tau_min: float = param(0.5, low=0.01, high=100.0, help="final (lowest) temperature")
    schedule: str = param(
        "exponential", choices=("constant", "linear", "exponential"), help="temperature schedule"
    )
    rate: float = param(1e-3, low=0.0, high=1.0, help="exponential decay per step")
    anneal_every: int = param(100, low=1, high=10**7, help="steps between exponential updates")
    anneal_epochs: float = param(20.0, low=0.01, high=10**6, help="linear: epochs to tau_min")
    lr: float = param(1e-3, low=1e-6, high=1.0, help="Adam learning rate", mutable=True)
    batch_size: int = param(128, low=2, high=65536)
    prior_epochs: int = param(
        0,
        low=0,
        high=10_000,
        help="passes of a learned prior (a small transformer) over the training codes, trained"
        " after the autoencoder, scored at the final evaluation as sampler 'prior' (0: no prior)",
    )


def temperature(cfg: DVAEConfig, step: int, steps_per_epoch: int) -> float:
    """Gumbel-softmax temperature at optimisation step `step`."""
    if cfg.schedule == "linear":
        frac = min(1.0, step / (cfg.anneal_epochs * steps_per_epoch))
        return cfg.tau0 + (cfg.tau_min - cfg.tau0) * frac
    if cfg.schedule == "exponential":
        updated = step - step % cfg.anneal_every  # held between updates
        return max(cfg.tau_min, cfg.tau0 * math.exp(-cfg.rate * updated))
    return cfg.tau0


def gumbel_noise(
    shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """Gumbel(0, 1) noise drawn as F.gumbel_softmax draws it (-log of Exp(1))."""
    return -torch.empty(shape, device=device).exponential_(generator=generator).log()


def hard_gumbel_softmax(logits: Tensor, gumbels: Tensor, tau: float) -> Tensor:
    """F.gumbel_softmax(logits, tau, hard=True) with the noise given: one-hot
    forward, the relaxed sample's gradient backward (straight-through)."""
    soft = ((logits + gumbels) / tau).softmax(-1)
    hard = torch.zeros_like(soft).scatter(-1, soft.argmax(-1, keepdim=True), 1.0)
    return hard - soft.detach() + soft


def uniform_kl(logits: Tensor) -> Tensor:
    """KL(q || uniform over k) per example, summed over the d codes; logits (N, d, k)."""
    log_q = logits.log_softmax(-1)
    return (log_q.exp() * (log_q + math.log(logits.shape[-1]))).sum((1, 2))


def perplexity(codes: Tensor, k: int) -> float:
    """exp(entropy) of each code's marginal category usage, averaged over the
    codes: 1 when a code always takes the same category, k when all are used
    equally. codes: (N, d) category indices."""
    counts = F.one_hot(codes, k).float().mean(0)  # (d, k)
    entropy = -(counts * counts.clamp_min(1e-12).log()).sum(1)
    return float(entropy.exp().mean())


class DiscreteVAE(PriorSampling, EncoderDecoder):
    Config = DVAEConfig
    base_sampler = "uniform"
    roles = {
        "learning_rate": ("lr",),
        "architecture": ("arch", "d", "k", "width"),
        "split": ("schedule", "arch"),
        "weight": ("kl_weight",),
        "schedule": ("schedule",),
        "latent": ("d", "k"),
    }
    train_metrics = frozenset({"loss", "recon_loss", "kl_train", "tau", "grad_norm"})
    eval_metrics = RECON_METRICS | {"kl", "code_perplexity"} | PRIOR_METRICS

    def __init__(
        self, cfg: DVAEConfig, train_x: Tensor, test_x: Tensor, train_y: Tensor | None = None
    ) -> None:
        super().__init__(
            train_x,
            test_x,
            arch=cfg.arch,
            width=cfg.width,
            code_size=cfg.d * cfg.k,
            latent_size=cfg.d * cfg.k,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
        )
        self.cfg = cfg

    @property
    def tau(self) -> float:
        return temperature(self.cfg, self.step, self.steps_per_epoch)

    def logits(self, x: Tensor, enc: Callable | None = None) -> Tensor:
        """(N, d, k) logits of q(c | x); `enc`: the encoder to use (a pack member's)."""
        return (enc or self.enc)(x).unflatten(1, (self.cfg.d, self.cfg.k))

    def _decode_indices(self, codes: Tensor) -> Tensor:
        return self.dec(F.one_hot(codes, self.cfg.k).float().flatten(1))

    def code_sequences(self, x: Tensor) -> Tensor:
        """The most likely category of each of the d codes, (N, d)."""
        return batched(self.logits, x).argmax(-1)

    def code_vocab(self) -> int:
        return self.cfg.k

    def decode_sequences(self, codes: Tensor) -> Tensor:
        return batched(self._decode_indices, codes)

    def _step(self, x: Tensor) -> dict[str, Tensor]:
        shape = (self.batch_size, self.cfg.d, self.cfg.k)
        gumbels = self.engine.draw(lambda g: gumbel_noise(shape, self.x.device, g))
        return self.optimise(self._loss, x, gumbels)

    def _loss(self, nets: dict, x: Tensor, gumbels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.logits(x, nets["enc"])
        z = hard_gumbel_softmax(logits, gumbels, self.tau)  # straight-through
        return self.elbo_loss(nets["dec"](z.flatten(1)), x, uniform_kl(logits), self.cfg.kl_weight)

    def train_epoch(self) -> dict[str, Tensor | float]:
        steps = epoch_means(self.engine, self.x, self.batch_size, self._step)
        out: dict[str, Tensor | float] = dict(steps)
        out["tau"] = self.tau
        return out

    def encode_latent(self, x: Tensor) -> Tensor:
        """The most likely category of each code, one-hot (N, d * k): paths
        between two inputs' codes pass through mixtures of categories."""
        return F.one_hot(self.logits(x).argmax(-1), self.cfg.k).float().flatten(1)

    @torch.inference_mode()
    def evaluate(self) -> dict[str, float]:
        logits = batched(self.logits, self.test_x)
        return {
            **recon_metrics(self.reconstruct, self.x, self.test_x),
            "kl": float(uniform_kl(logits).mean()),
            "code_perplexity": perplexity(logits.argmax(-1), self.cfg.k),
        }

    @torch.inference_mode()
    def sample(
        self, n: int, generator: torch.Generator | None = None, sampler: str | None = None
    ) -> Tensor:
        """`uniform`: decoded uniform random codes, the prior the KL term
        pulls toward; `prior`: codes from the learned prior."""
        if sampler == "prior":
            return self.prior_samples(n, generator)
        codes = torch.randint(
            self.cfg.k, (n, self.cfg.d), device=self.x.device, generator=generator
        )
        return self.decode_sequences(codes)
