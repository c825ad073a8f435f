"""Diffusion family: DDPM (Ho et al. 2020) with a small U-Net predicting the
noise, schedules linear, cosine and sigmoid for any T, loss MSE, MAE or Huber,
and one DDIM sampler (Song et al. 2021) for any step count and eta. DDPM's
ancestral sampler is DDIM with every step and eta = 1, which gives exactly
DDPM's posterior variance, so both share one code path.

Data in [0, 1] is diffused in [-1, 1] and mapped back for the metrics."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.coders import check_batch, epoch_means
from models.config import ConfigError, param
from models.family import GenerativeFamily
from models.unet import UNet


def linear_betas(T: int) -> Tensor:
    """Ho et al.: 1e-4 -> 0.02 over 1000 steps, rescaled by 1000/T."""
    scale = 1000 / T
    return torch.linspace(1e-4 * scale, 0.02 * scale, T, dtype=torch.float64)


def cosine_alpha_bar(u: Tensor, s: float = 0.008) -> Tensor:
    """Nichol and Dhariwal, as f(u)/f(0) with u = t/T."""
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def sigmoid_alpha_bar(u: Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> Tensor:
    """Jabri et al. 2023 / Chen 2023: a sigmoid of u = t/T, scaled to run 1 -> 0."""
    v_start, v_end = 1 / (1 + math.exp(-start / tau)), 1 / (1 + math.exp(-end / tau))
    return (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)


def betas_from_alpha_bar(alpha_bar: Callable[[Tensor], Tensor], T: int) -> Tensor:
    """beta_t = 1 - alpha_bar(t/T) / alpha_bar((t-1)/T), clipped at 0.999."""
    u = torch.arange(T + 1, dtype=torch.float64) / T
    ab = alpha_bar(u)
    return (1 - ab[1:] / ab[:-1]).clamp(max=0.999)


SCHEDULES: dict[str, Callable[[int], Tensor]] = {
    "linear": linear_betas,
    "cosine": lambda T: betas_from_alpha_bar(cosine_alpha_bar, T),
    "sigmoid": lambda T: betas_from_alpha_bar(sigmoid_alpha_bar, T),
}

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "huber": F.smooth_l1_loss,
}

_SAMPLER = re.compile(r"^ddim(\d+)_eta(\d+(?:\.\d+)?)$")


@dataclass
class DiffusionConfig:
    schedule: str = param("cosine", choices=tuple(SCHEDULES), help="noise schedule")
    T: int = param(1000, low=2, high=100_000, help="diffusion steps")
    loss: str = param("mse", choices=tuple(LOSSES), help="loss on the predicted noise")
    lr: float = param(1e-3, low=1e-7, high=1.0, help="Adam learning rate")
    channels: int = param(32, low=8, high=1024, help="U-Net base channels")
    attention: bool = param(False, help="self-attention at the lowest resolution")
    batch_size: int = param(128, low=2, high=65536)
    samplers: str = param(
        "ddim50_eta0,ddim10_eta0,ddim20_eta0,ddim20_eta1",
        help="samplers scored at each evaluation, ddimS_etaE or ddpm; the first is the main one",
    )
    clip_grad: float = param(1.0, low=0.0, high=1e6, help="gradient norm clip (0: off)")
    ema: float = param(0.995, low=0.0, high=0.99999, help="EMA decay of the sampling weights")


def ddim_sigma(ab: Tensor, ab_prev: Tensor, eta: float) -> Tensor:
    """DDIM's noise scale from alpha_bar at t to alpha_bar at the previous step."""
    return eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()


def parse_sampler(name: str, T: int) -> tuple[int, float]:
    """'ddim20_eta0.5' -> (20, 0.5); 'ddpm' -> (T, 1.0)."""
    if name == "ddpm":
        return T, 1.0
    m = _SAMPLER.match(name)
    if m is None or not 1 <= int(m[1]) <= T or float(m[2]) > 1:
        raise ConfigError(
            f"sampler '{name}' is not ddpm or ddimS_etaE with 1 <= S <= T={T} and 0 <= E <= 1"
        )
    return int(m[1]), float(m[2])


class Diffusion(GenerativeFamily):
    Config = DiffusionConfig
    train_metrics = frozenset({"eps_loss", "grad_norm"})
    eval_metrics = frozenset()  # judged on its samples, one set per sampler

    def __init__(
        self, cfg: DiffusionConfig, train_x: Tensor, test_x: Tensor, train_y: Tensor | None = None
    ) -> None:
        if train_x.dim() != 4 or train_x.shape[2] % 4 or train_x.shape[3] % 4:
            raise ConfigError(
                f"diffusion needs images with sides divisible by 4, got {tuple(train_x.shape[1:])}"
            )
        check_batch(cfg.batch_size, len(train_x))
        self.variants = {s: parse_sampler(s, cfg.T) for s in cfg.samplers.split(",") if s}
        if not self.variants:
            raise ConfigError("samplers names no sampler")
        self.cfg, self.x, self.test_x = cfg, train_x * 2 - 1, test_x
        device = train_x.device
        betas = SCHEDULES[cfg.schedule](cfg.T)
        self.alpha_bar = torch.cumprod(1 - betas, 0).float().to(device)
        self.net = UNet(train_x.shape[1], cfg.channels, cfg.attention).to(device)
        # samples come from an exponential moving average of the weights (Ho et
        # al.): single snapshots of a short run swing by several fid points
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, fused=True)
        self.loss = LOSSES[cfg.loss]

    def _step(self, x0: Tensor) -> dict[str, Tensor]:
        t = torch.randint(self.cfg.T, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        ab = self.alpha_bar[t][:, None, None, None]
        loss = self.loss(self.net(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t), noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip_grad)
            if self.cfg.clip_grad
            else torch.zeros((), device=x0.device)
        )
        self.opt.step()
        ema, params = list(self.ema_net.parameters()), list(self.net.parameters())
        torch._foreach_lerp_(ema, params, 1 - self.cfg.ema)
        return {"eps_loss": loss.detach(), "grad_norm": grad_norm.detach()}

    def train_epoch(self) -> dict[str, Tensor]:
        return epoch_means(self.x, self.cfg.batch_size, self._step)

    def evaluate(self) -> dict[str, float]:
        return {}

    def samplers(self) -> tuple[str, ...]:
        return tuple(self.variants)

    @classmethod
    def is_sampler(cls, name: str) -> bool:
        return name == "ddpm" or _SAMPLER.match(name) is not None

    @torch.inference_mode()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """DDIM from x_T = noise (drawn from generator when not given): the
        named sampler's (default the main one's) steps and eta unless given.
        Images in [0, 1]."""
        named_steps, named_eta = self.variants[sampler or next(iter(self.variants))]
        steps, eta = steps or named_steps, named_eta if eta is None else eta
        if noise is None:
            noise = torch.randn((n, *self.x.shape[1:]), generator=generator, device=self.x.device)
        out = torch.cat([self._ddim(c, steps, eta, generator) for c in noise.split(500)])
        return (out.clamp(-1, 1) + 1) / 2

    def _ddim(self, x: Tensor, steps: int, eta: float, generator: torch.Generator | None) -> Tensor:
        ts = torch.linspace(0, self.cfg.T - 1, steps, device=x.device).round().long()
        ones = torch.ones(len(x), dtype=torch.long, device=x.device)
        for i in range(steps - 1, -1, -1):
            ab = self.alpha_bar[ts[i]]
            ab_prev = self.alpha_bar[ts[i - 1]] if i > 0 else torch.ones((), device=x.device)
            eps = self.ema_net(x, ones * ts[i])
            x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
            sigma = ddim_sigma(ab, ab_prev, eta)
            x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp_min(0).sqrt() * eps
            if eta > 0 and i > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device)
        return x

    def state_dict(self) -> dict:
        return {
            "net": self.net.state_dict(),
            "ema": self.ema_net.state_dict(),
            "opt": self.opt.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.ema_net.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
