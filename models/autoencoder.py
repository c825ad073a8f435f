"""Autoencoder family: stacked (MLP), tied-weights and convolutional, each
optionally denoising (Gaussian noise or input dropout) and sparse (an L1
activity penalty, or KL between a target sparsity p and each unit's batch-mean
activation q, on a sigmoid coding layer; without a penalty the codes are linear)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.coders import (
    RECON_METRICS,
    LatentCoder,
    batched,
    check_batch,
    decoder,
    encoder,
    epoch_means,
    recon_metrics,
)
from models.config import param
from models.pack import Engine, Solo

ACTIVE = 0.5  # a sigmoid coding unit is "on" for an input above this


@dataclass
class AEConfig:
    arch: str = param("mlp", choices=("mlp", "tied", "conv"), help="stacked, tied or conv")
    coding: int = param(32, low=1, high=4096, help="coding units")
    width: int = param(128, low=2, high=4096, help="hidden units (conv: channels)")
    noise: str = param("none", choices=("none", "gaussian", "dropout"), help="input corruption")
    noise_level: float = param(0.3, low=0.0, high=0.95, help="noise std, or dropout rate")
    penalty: str = param("none", choices=("none", "l1", "kl"), help="sparsity penalty")
    sparsity_weight: float = param(1e-3, low=0.0, high=100.0, help="weight of the penalty")
    target_sparsity: float = param(0.1, low=1e-3, high=0.5, help="p of the kl penalty")
    lr: float = param(1e-3, low=1e-6, high=1.0, help="Adam learning rate", mutable=True)
    batch_size: int = param(128, low=2, high=65536)


class TiedAE(nn.Module):
    """Stacked MLP autoencoder whose decoder reuses the encoder's weights,
    transposed: half the parameters, a common regulariser."""

    def __init__(self, shape: tuple[int, ...], width: int, coding: int) -> None:
        super().__init__()
        n = int(torch.Size(shape).numel())
        self.shape = shape
        self.enc1, self.enc2 = nn.Linear(n, width), nn.Linear(width, coding)
        self.dec_b1, self.dec_b2 = nn.Parameter(torch.zeros(width)), nn.Parameter(torch.zeros(n))

    def encode(self, x: Tensor) -> Tensor:
        return self.enc2(F.relu(self.enc1(x.flatten(1))))

    def decode(self, h: Tensor) -> Tensor:
        h = F.relu(F.linear(h, self.enc2.weight.t(), self.dec_b1))
        out = F.linear(h, self.enc1.weight.t(), self.dec_b2)
        return (torch.sigmoid(out) if len(self.shape) == 3 else out).unflatten(1, self.shape)

    def forward(self, x: Tensor, squash: bool) -> tuple[Tensor, Tensor]:
        return _codes_and_output(self, x, squash)


class _Untied(nn.Module):
    def __init__(self, arch: str, shape: tuple[int, ...], width: int, coding: int) -> None:
        super().__init__()
        self.encode, self.decode = (
            encoder(arch, shape, width, coding),
            decoder(arch, shape, width, coding),
        )

    def forward(self, x: Tensor, squash: bool) -> tuple[Tensor, Tensor]:
        return _codes_and_output(self, x, squash)


def _codes_and_output(net: TiedAE | _Untied, x: Tensor, squash: bool) -> tuple[Tensor, Tensor]:
    """(codes, reconstruction) of x; `squash`: sigmoid codes (the sparse
    variants'). A forward pass, so a seed pack can call it on every member."""
    h = net.encode(x)
    h = torch.sigmoid(h) if squash else h
    return h, net.decode(h)


def kl_sparsity(codes: Tensor, p: float) -> Tensor:
    """sum over units of KL(Bernoulli(p) || Bernoulli(q_u)), q_u the batch mean."""
    q = codes.mean(0).clamp(1e-6, 1 - 1e-6)
    return (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).sum()


class Autoencoder(LatentCoder):
    Config = AEConfig
    roles = {
        "learning_rate": ("lr",),
        "architecture": ("arch", "coding", "width"),
        "split": ("arch", "penalty"),
        "regulariser": ("penalty",),
        "weight": ("sparsity_weight",),
        "target": ("target_sparsity",),
        "noise": ("noise_level", "noise"),
        "latent": ("coding",),
    }
    acts_when = {"target_sparsity": ("penalty", "kl")}
    train_metrics = frozenset({"loss", "recon_loss", "sparsity_penalty", "grad_norm"})
    eval_metrics = RECON_METRICS | {"sparsity", "active_fraction", "denoise_mse"}
    packs = True

    def __init__(
        self, cfg: AEConfig, train_x: Tensor, test_x: Tensor, train_y: Tensor | None = None
    ) -> None:
        check_batch(cfg.batch_size, len(train_x))
        self.cfg, self.x, self.test_x = cfg, train_x, test_x
        shape = tuple(train_x.shape[1:])
        self.net = (
            TiedAE(shape, cfg.width, cfg.coding)
            if cfg.arch == "tied"
            else _Untied(cfg.arch, shape, cfg.width, cfg.coding)
        ).to(train_x.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, fused=True)
        self.engine: Engine = Solo(self, {"net": self.net}, {"opt": self.opt})
        # held-out noise is drawn once, so denoise_mse compares like with like
        gen = torch.Generator(device=test_x.device).manual_seed(0)
        self.noisy_test = self.corrupt(test_x, gen)

    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self._corrupted(x, self._noise(tuple(x.shape), generator))

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor | None:
        """The corruption's random draw for inputs of `shape`; None: no noise."""
        device = self.x.device
        if self.cfg.noise == "gaussian":
            return torch.randn(shape, device=device, generator=generator)
        if self.cfg.noise == "dropout":
            return torch.rand(shape, device=device, generator=generator)
        return None

    def _corrupted(self, x: Tensor, noise: Tensor | None) -> Tensor:
        level = self.cfg.noise_level
        if self.cfg.noise == "gaussian":
            return x + level * noise
        if self.cfg.noise == "dropout":
            # Vincent et al.'s masking noise: zeroed, not rescaled. Inverted
            # dropout's x / (1 - level) trains the conv AE on pixels of up to 2
            # and it then fails on clean inputs (measured at level 0.5: clean
            # recon_mse 0.059, the same digits doubled 0.014; masked 0.015)
            return x * (noise >= level)
        return x

    def codes(self, x: Tensor) -> Tensor:
        # the sparse variants' codes are sigmoid activations, which the
        # penalties keep off saturation; without a penalty a sigmoid coding
        # layer saturates at 1 within an epoch and the decoder can only output
        # the mean digit (measured: recon_mse stuck at 0.068), so plain
        # autoencoders keep linear codes
        h = self.net.encode(x)
        return torch.sigmoid(h) if self.cfg.penalty != "none" else h

    def _penalty(self, h: Tensor) -> Tensor:
        if self.cfg.penalty == "l1":
            return h.abs().sum(1).mean()
        if self.cfg.penalty == "kl":
            return kl_sparsity(h, self.cfg.target_sparsity)
        return torch.zeros((), device=h.device)

    def _step(self, x: Tensor) -> dict[str, Tensor]:
        shape = (self.cfg.batch_size, *self.x.shape[1:])
        noise = (
            None if self.cfg.noise == "none" else self.engine.draw(lambda g: self._noise(shape, g))
        )
        return self.engine.step("opt", self._loss, x, noise)

    def _loss(self, nets: dict, x: Tensor, noise: Tensor | None) -> tuple[Tensor, dict]:
        h, out = nets["net"](self._corrupted(x, noise), self.cfg.penalty != "none")
        recon = F.mse_loss(out, x)  # the clean input is the target
        penalty = self._penalty(h)
        loss = recon + self.cfg.sparsity_weight * penalty
        return loss, {"loss": loss, "recon_loss": recon, "sparsity_penalty": penalty}

    def train_epoch(self) -> dict[str, Tensor]:
        return epoch_means(self.engine, self.x, self.cfg.batch_size, self._step)

    def encode_latent(self, x: Tensor) -> Tensor:
        return self.codes(x)

    def encoder_network(self) -> nn.Module:
        net = self.net
        if isinstance(net, TiedAE):  # its encoder's layers, shared with the decoder
            return nn.Sequential(nn.Flatten(), net.enc1, nn.ReLU(), net.enc2)
        return net.encode

    def decode_latent(self, z: Tensor) -> Tensor:
        return self.net.decode(z)

    @torch.inference_mode()
    def reconstruction_rows(self, x: Tensor) -> list[Tensor]:
        if self.cfg.noise == "none":
            return super().reconstruction_rows(x)
        noisy = self.corrupt(x, torch.Generator(device=x.device).manual_seed(0))
        return [x, noisy.clamp(0, 1), self.reconstruct(noisy)]

    @torch.inference_mode()
    def evaluate(self) -> dict[str, float]:
        h = batched(self.codes, self.test_x)
        out = recon_metrics(self.reconstruct, self.x, self.test_x)
        if self.cfg.penalty != "none":
            out["sparsity"] = float(h.mean())
            out["active_fraction"] = float((h > ACTIVE).float().mean())
        if self.cfg.noise != "none":
            denoised = batched(self.reconstruct, self.noisy_test)
            out["denoise_mse"] = float(F.mse_loss(denoised, self.test_x))
        return out

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
