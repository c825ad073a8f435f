"""VAE family: Gaussian latent (the encoder outputs mean and log-variance),
reparameterisation, loss = reconstruction (BCE, or the chapters' MSE) +
kl_weight * KL, both per pixel, with the KL weight constant, warmed up
linearly (Bowman et al.) or cyclical (Fu et al.: every cycle rises linearly
for `warmup_epochs`, then holds)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from models.coders import RECON_METRICS, EncoderDecoder, batched, epoch_means, recon_metrics
from models.config import param

ACTIVE_UNIT = 0.01  # Burda et al.: unit u is active when Cov_x(E_q[z_u | x]) > 0.01


@dataclass
class VAEConfig:
    arch: str = param("mlp", choices=("mlp", "conv"), help="network architecture")
    latent: int = param(16, low=1, high=1024, help="latent dimensions")
    width: int = param(256, low=2, high=4096, help="hidden units (conv: channels)")
    kl_weight: float = param(1.0, low=0.0, high=1000.0, help="weight of KL (beta)")
    recon_loss: str = param(
        "bce", choices=("bce", "mse"), help="image reconstruction loss (mse: the chapters')"
    )
    schedule: str = param(
        "constant", choices=("constant", "linear", "cyclical"), help="KL weight schedule"
    )
    warmup_epochs: float = param(5.0, low=0.01, high=10_000.0, help="epochs of each ramp")
    lr: float = param(1e-3, low=1e-6, high=1.0, help="Adam learning rate", mutable=True)
    batch_size: int = param(128, low=2, high=65536)


def kl_weight_at(cfg: VAEConfig, epoch: float) -> float:
    """The KL weight after `epoch` (fractional) epochs of training."""
    ramp = min(1.0, epoch / cfg.warmup_epochs)
    if cfg.schedule == "linear":
        return cfg.kl_weight * ramp
    if cfg.schedule == "cyclical":  # cycles of 2 x warmup: ramp up, then hold
        phase = math.fmod(epoch, 2 * cfg.warmup_epochs) / cfg.warmup_epochs
        return cfg.kl_weight * min(1.0, phase)
    return cfg.kl_weight


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example, summed over dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)


class VAE(EncoderDecoder):
    Config = VAEConfig
    roles = {
        "learning_rate": ("lr",),
        "architecture": ("arch", "latent", "width"),
        "loss": ("recon_loss",),
        "split": ("schedule", "arch"),
        "weight": ("kl_weight",),
        "schedule": ("schedule",),
        "latent": ("latent",),
    }
    train_metrics = frozenset({"loss", "recon_loss", "kl_train", "kl_weight", "grad_norm"})
    eval_metrics = RECON_METRICS | {"kl", "active_units"}

    def __init__(
        self, cfg: VAEConfig, train_x: Tensor, test_x: Tensor, train_y: Tensor | None = None
    ) -> None:
        super().__init__(
            train_x,
            test_x,
            arch=cfg.arch,
            width=cfg.width,
            code_size=2 * cfg.latent,
            latent_size=cfg.latent,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            recon_loss=cfg.recon_loss,
        )
        self.cfg = cfg

    def posterior(self, x: Tensor, enc: Callable | None = None) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of q(z | x); `enc`: the encoder to use (a pack member's)."""
        mu, logvar = (enc or self.enc)(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)  # exp() stays finite at any learning rate

    def encode_latent(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]

    def _step(self, x: Tensor) -> dict[str, Tensor]:
        n, device = self.batch_size, self.x.device
        noise = self.engine.draw(
            lambda g: torch.randn(n, self.cfg.latent, device=device, generator=g)
        )
        return self.optimise(self._loss, x, noise)

    def _loss(self, nets: dict, x: Tensor, noise: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        weight = kl_weight_at(self.cfg, self.step / self.steps_per_epoch)
        mu, logvar = self.posterior(x, nets["enc"])
        z = mu + noise * (0.5 * logvar).exp()  # reparameterisation
        return self.elbo_loss(nets["dec"](z), x, gaussian_kl(mu, logvar), weight)

    def train_epoch(self) -> dict[str, Tensor | float]:
        steps = epoch_means(self.engine, self.x, self.batch_size, self._step)
        out: dict[str, Tensor | float] = dict(steps)
        out["kl_weight"] = kl_weight_at(self.cfg, self.step / self.steps_per_epoch)
        return out

    @torch.inference_mode()
    def evaluate(self) -> dict[str, float]:
        mu, logvar = self.posterior(self.test_x)
        return {
            **recon_metrics(self.reconstruct, self.x, self.test_x),
            "kl": float(gaussian_kl(mu, logvar).mean()),
            "active_units": float((mu.var(0) > ACTIVE_UNIT).sum()),
        }

    @torch.inference_mode()
    def sample(
        self, n: int, generator: torch.Generator | None = None, sampler: str | None = None
    ) -> Tensor:
        z = torch.randn(n, self.cfg.latent, device=self.x.device, generator=generator)
        return batched(self.dec, z)
