"""Latent diffusion (Rombach et al. 2022, as the chapters tell it): an
autoencoder compresses each training image to a small latent code, a DDPM
learns the codes, and the autoencoder's decoder turns sampled codes back
into images, so each denoising step handles a few numbers, not every pixel.

The first stage is this package's VAE (models.vae), trained within the trial
before the diffusion: `first_epochs` passes at the start of the trial's first
epoch (`epochs` counts the diffusion's passes; the first stage's time is
logged as `first_stage_seconds`). Its KL weight is an axis: at 0 the VAE is
an autoencoder (its posterior noise shrinks to nothing); at 1 its codes are
pulled toward N(0, I). The diffusion learns the posterior means, centred per
dimension and divided by one overall standard deviation (Rombach et al.'s
single scale factor: a per-dimension scale would blow the near-constant
dimensions of a VAE with inactive units up to unit variance).

The latent is a vector (the MLP VAE's, or the conv VAE's linear code), so
the noise predictor is a residual MLP told the time by the U-Net's
sinusoidal embedding; everything else (schedules, losses, EMA, the DDIM and
DDPM samplers) is the pixel-space family's. Where the pixel family clips each
step's predicted clean image to the pixel range, this one clips the predicted
code to the box the training codes span, per dimension: unclipped, a cosine
schedule's last steps (alpha_bar near 0) multiply the denoiser's error into
codes hundreds of standard deviations out (measured)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.coders import LatentCoder, batched, check_batch, recon_rule
from models.config import ConfigError, param
from models.diffusion import LOSSES, SCHEDULES, Diffusion, samplers_param
from models.family import mode_rule
from models.unet import timestep_embedding
from models.vae import VAE, VAEConfig


@dataclass
class LatentDiffusionConfig:
    # the first stage, a VAE
    first_arch: str = param("mlp", choices=("mlp", "conv"), help="first stage's architecture")
    latent: int = param(8, low=1, high=1024, help="latent dimensions the diffusion runs in")
    first_width: int = param(256, low=2, high=4096, help="first stage's hidden units")
    kl_weight: float = param(1.0, low=0.0, high=1000.0, help="first stage's KL weight (0: an AE)")
    recon_loss: str = param("bce", choices=("bce", "mse"), help="first stage's reconstruction")
    first_epochs: int = param(
        30, low=1, high=100_000, help="first stage's training passes, before the first epoch"
    )
    first_lr: float = param(1e-3, low=1e-6, high=1.0, help="first stage's Adam learning rate")
    # the diffusion in its latent space
    schedule: str = param("cosine", choices=tuple(SCHEDULES), help="noise schedule")
    T: int = param(1000, low=2, high=100_000, help="diffusion steps")
    loss: str = param("mse", choices=tuple(LOSSES), help="loss on the predicted noise")
    lr: float = param(1e-3, low=1e-7, high=1.0, help="denoiser's Adam learning rate", mutable=True)
    width: int = param(256, low=8, high=8192, help="denoiser's hidden units")
    depth: int = param(3, low=1, high=64, help="denoiser's residual blocks")
    batch_size: int = param(128, low=2, high=65536, help="both stages' batch size")
    samplers: str = samplers_param()
    clip_grad: float = param(1.0, low=0.0, high=1e6, help="gradient norm clip (0: off)")
    ema: float = param(0.995, low=0.0, high=0.99999, help="EMA decay of the sampling weights")


class LatentDenoiser(nn.Module):
    """eps(z_t, t) for vector codes: residual MLP blocks, each given the
    time's embedding, between a linear map in and one out."""

    def __init__(self, dim: int, width: int, depth: int) -> None:
        super().__init__()
        self.width = width
        self.inp = nn.Linear(dim, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width))
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        temb = self.time(timestep_embedding(t, self.width))
        h = self.inp(z)
        for block in self.blocks:
            h = h + block(h + temb)
        return self.out(h)


class LatentDiffusion(Diffusion, LatentCoder):
    Config = LatentDiffusionConfig
    roles = {
        "learning_rate": ("lr", "first_lr"),
        "architecture": ("first_arch", "latent", "first_width", "width", "depth"),
        "loss": ("loss",),
        "split": ("schedule", "kl_weight"),
        "weight": ("kl_weight",),
        "schedule": ("schedule",),
        "steps": ("T",),
        "latent": ("latent",),
    }
    eval_metrics = VAE.eval_metrics | {"first_stage_seconds", "latent_scale"}
    packs = False  # two stages, each its own networks: one seed per trial
    collapse_rules = (mode_rule, recon_rule)

    def __init__(
        self,
        cfg: LatentDiffusionConfig,
        train_x: Tensor,
        test_x: Tensor,
        train_y: Tensor | None = None,
    ) -> None:
        check_batch(cfg.batch_size, len(train_x))
        first = VAEConfig(
            arch=cfg.first_arch,
            latent=cfg.latent,
            width=cfg.first_width,
            kl_weight=cfg.kl_weight,
            recon_loss=cfg.recon_loss,
            lr=cfg.first_lr,
            batch_size=cfg.batch_size,
        )
        try:
            self.first = VAE(first, train_x, test_x)
        except ConfigError as e:  # named as the user set it: first_arch, not arch
            raise ConfigError(re.sub(r"\barch=", "first_arch=", f"first stage: {e}")) from None
        self.test_x, self.y, self.n_classes = test_x, None, 0
        self.first_done, self.first_seconds = False, 0.0
        self.x0_clip = None  # the training codes' box, once there are codes
        self.shift = torch.zeros(cfg.latent, device=train_x.device)
        self.scale = torch.ones((), device=train_x.device)
        codes = torch.zeros(len(train_x), cfg.latent, device=train_x.device)  # until trained
        self.diffuse(cfg, codes, LatentDenoiser(cfg.latent, cfg.width, cfg.depth))

    def train_epoch(self) -> dict[str, Tensor]:
        if not self.first_done:
            self._train_first_stage()
        return super().train_epoch()

    def _train_first_stage(self) -> None:
        start = time.perf_counter()
        self.first.engine.data_generator = self.engine.data_generator  # the trial's data order
        for _ in range(self.cfg.first_epochs):
            self.first.train_epoch()
        self._encode_training_set()
        device = self.first.x.device
        if device.type == "cuda":  # the clock must not stop before the GPU does
            torch.cuda.synchronize(device)
        self.first_done, self.first_seconds = True, time.perf_counter() - start

    def _encode_training_set(self) -> None:
        """The diffusion's data: the training set's codes, centred and scaled."""
        codes = batched(self.first.encode_latent, self.first.x).clone()  # a normal tensor
        self.shift = codes.mean(0)
        self.scale = (codes - self.shift).pow(2).mean().sqrt().clamp_min(1e-8)
        self.x = (codes - self.shift) / self.scale
        self.x0_clip = (self.x.amin(0), self.x.amax(0))

    def to_data(self, z: Tensor) -> Tensor:
        return batched(self.decode_latent, z * self.scale + self.shift)

    def encode_latent(self, x: Tensor) -> Tensor:
        return self.first.encode_latent(x)

    def decode_latent(self, z: Tensor) -> Tensor:
        return self.first.decode_latent(z)

    def encoder_network(self) -> nn.Module:
        return self.first.encoder_network()

    @torch.inference_mode()
    def evaluate(self) -> dict[str, float]:
        """The first stage's held-out metrics (reconstruction, KL, active
        units), its training time, and the scale its codes were divided by."""
        out = self.first.evaluate()
        return out | {"first_stage_seconds": self.first_seconds, "latent_scale": float(self.scale)}

    def networks(self) -> dict[str, nn.Module]:
        first = {f"first_{k}": v for k, v in self.first.networks().items()}
        return {**super().networks(), **first}

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "first": self.first.state_dict(),
            "first_done": self.first_done,
            "first_seconds": self.first_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.first.load_state_dict(state["first"])
        self.first_done, self.first_seconds = state["first_done"], state["first_seconds"]
        if self.first_done:  # the codes follow from the first stage's weights
            self._encode_training_set()
