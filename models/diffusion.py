"""Diffusion family: DDPM (Ho et al. 2020) with a small U-Net predicting the
noise, schedules linear, cosine and sigmoid for any T, loss MSE, MAE or Huber,
and one DDIM sampler (Song et al. 2021) for any step count and eta. DDPM's
ancestral sampler with the posterior variance is DDIM with every step and
eta = 1, so both share one code path; `ddpm_beta` is the chapter's update,
with sigma^2 = beta_t.

Class-conditional training drops the label with probability `cond_drop`
(a null label), so one network is both conditional and unconditional, and
samplers with a guidance scale w use classifier-free guidance (Ho and
Salimans 2022): eps = (1 + w) eps(x, c) - w eps(x).

Data in [0, 1] is diffused in [-1, 1] and mapped back for the metrics."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.coders import check_batch, epoch_means
from models.config import ConfigError, param
from models.family import GenerativeFamily, balanced_labels
from models.pack import Engine, Solo
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

_SAMPLER = re.compile(
    r"^(?:ddim(?P<steps>\d+)_eta(?P<eta>\d+(?:\.\d+)?)|ddpm(?:(?P<beta_steps>\d*)(?P<beta>_beta))?)"
    r"(?:_w(?P<w>-?\d+(?:\.\d+)?))?$"
)


@dataclass(frozen=True)
class Sampler:
    """One named sampler: its steps, DDIM's eta, whether the noise is the
    chapter's sigma^2 = beta_t, and the guidance scale (None: unguided)."""

    steps: int
    eta: float
    beta_noise: bool = False
    guidance: float | None = None


def samplers_param() -> Any:
    """The samplers setting, shared with latent diffusion."""
    return param(
        "ddim50_eta0,ddim10_eta0,ddim20_eta0,ddim20_eta1",
        help="samplers scored at each evaluation, the first the main one: ddimS_etaE, ddpm "
        "(posterior variance), ddpm_beta or ddpmS_beta (sigma^2 = beta); conditional: _wW "
        "adds guidance scale W",
    )


@dataclass
class DiffusionConfig:
    schedule: str = param("cosine", choices=tuple(SCHEDULES), help="noise schedule")
    T: int = param(1000, low=2, high=100_000, help="diffusion steps")
    loss: str = param("mse", choices=tuple(LOSSES), help="loss on the predicted noise")
    lr: float = param(1e-3, low=1e-7, high=1.0, help="Adam learning rate", mutable=True)
    channels: int = param(32, low=8, high=1024, help="U-Net base channels")
    attention: bool = param(False, help="self-attention at the lowest resolution")
    batch_size: int = param(128, low=2, high=65536)
    samplers: str = samplers_param()
    conditional: bool = param(False, help="class-conditional, for classifier-free guidance")
    cond_drop: float = param(0.1, low=0.0, high=1.0, help="share of labels dropped in training")
    clip_grad: float = param(1.0, low=0.0, high=1e6, help="gradient norm clip (0: off)")
    ema: float = param(0.995, low=0.0, high=0.99999, help="EMA decay of the sampling weights")


# (low, high) of the data, numbers or tensors broadcast over a batch
Bounds = tuple[float | Tensor, float | Tensor]


def ddim_sigma(ab: Tensor, ab_prev: Tensor, eta: float) -> Tensor:
    """DDIM's noise scale from alpha_bar at t to alpha_bar at the previous step."""
    return eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()


def ddim_update(
    x: Tensor,
    eps: Tensor,
    ab: Tensor,
    ab_prev: Tensor,
    eta: float,
    z: Tensor | None,
    clip: Bounds | None = (-1.0, 1.0),
) -> Tensor:
    """One DDIM step (x0 predicted and clipped to the data's range, `clip`'s
    (low, high); None: not clipped); z: the fresh noise, None at the last
    step or when eta = 0."""
    x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    x0 = x0 if clip is None else x0.clamp(*clip)
    sigma = ddim_sigma(ab, ab_prev, eta)
    x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp_min(0).sqrt() * eps
    return x if z is None else x + sigma * z


def beta_update(x: Tensor, eps: Tensor, ab: Tensor, ab_prev: Tensor, z: Tensor | None) -> Tensor:
    """The chapter's DDPM step, x_prev = (x - beta / sqrt(1 - alpha_bar) eps) /
    sqrt(alpha) + sqrt(beta) z, with alpha = alpha_bar / alpha_bar_prev over a
    stride of steps (beta_t itself when every step is taken)."""
    alpha = ab / ab_prev
    beta = 1 - alpha
    x = (x - beta / (1 - ab).sqrt() * eps) / alpha.sqrt()
    return x if z is None else x + beta.sqrt() * z


def parse_sampler(name: str, T: int) -> Sampler:
    """'ddim20_eta0.5' -> Sampler(20, 0.5); 'ddpm' -> (T, 1.0); 'ddpm_beta' ->
    (T, 1.0, beta noise); 'ddpm100_beta_w3' -> (100, 1.0, beta noise, w 3)."""
    m = _SAMPLER.match(name)
    if m is not None:
        steps = int(m["steps"] or m["beta_steps"] or T)
        eta = float(m["eta"]) if m["eta"] is not None else 1.0
        w = float(m["w"]) if m["w"] is not None else None
        if 1 <= steps <= T and eta <= 1 and (w is None or w >= -1):
            return Sampler(steps, eta, bool(m["beta"]), w)
    raise ConfigError(
        f"sampler '{name}' is not ddimS_etaE (1 <= S <= T={T}, 0 <= E <= 1), ddpm, ddpm_beta "
        "or ddpmS_beta, optionally followed by _wW (guidance scale W >= -1)"
    )


class Diffusion(GenerativeFamily):
    Config = DiffusionConfig
    roles = {
        "learning_rate": ("lr",),
        "architecture": ("channels", "attention"),
        "loss": ("loss",),
        "split": ("schedule", "cond_drop"),
        "schedule": ("schedule",),
        "steps": ("T",),
        "condition": ("cond_drop",),
    }
    train_metrics = frozenset({"eps_loss", "grad_norm"})
    eval_metrics = frozenset()  # judged on its samples, one set per sampler
    packs = True
    x0_clip: Bounds | None = (-1.0, 1.0)  # the predicted x0 is clipped to the data's range

    def __init__(
        self, cfg: DiffusionConfig, train_x: Tensor, test_x: Tensor, train_y: Tensor | None = None
    ) -> None:
        if train_x.dim() != 4 or train_x.shape[2] % 4 or train_x.shape[3] % 4:
            raise ConfigError(
                f"diffusion needs images with sides divisible by 4, got {tuple(train_x.shape[1:])}"
            )
        check_batch(cfg.batch_size, len(train_x))
        if cfg.conditional and train_y is None:
            raise ConfigError("conditional=true needs a dataset with labels")
        self.test_x = test_x
        self.y = train_y if cfg.conditional else None
        self.n_classes = int(train_y.max()) + 1 if self.y is not None else 0
        net = UNet(train_x.shape[1], cfg.channels, cfg.attention, self.n_classes)
        self.diffuse(cfg, train_x * 2 - 1, net)

    def diffuse(self, cfg: DiffusionConfig, x: Tensor, net: torch.nn.Module) -> None:
        """The DDPM around the noise predictor `net`, trained on x (in the
        space diffused: images in [-1, 1], or latent codes), with cfg's
        schedule, T, loss, samplers and optimiser settings."""
        self.variants = {s: parse_sampler(s, cfg.T) for s in cfg.samplers.split(",") if s}
        if not self.variants:
            raise ConfigError("samplers names no sampler")
        guided = [s for s, v in self.variants.items() if v.guidance is not None]
        if guided and self.y is None:
            raise ConfigError(f"guided samplers ({', '.join(guided)}) need conditional=true")
        self.cfg, self.x, device = cfg, x, x.device
        betas = SCHEDULES[cfg.schedule](cfg.T)
        self.alpha_bar = torch.cumprod(1 - betas, 0).float().to(device)
        self.net = net.to(device)
        # samples come from an exponential moving average of the weights (Ho et
        # al.): single snapshots of a short run swing by several fid points
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, fused=True)
        self.engine: Engine = Solo(self, {"net": self.net, "ema": self.ema_net}, {"opt": self.opt})
        self.loss = LOSSES[cfg.loss]

    def _step(self, i: Tensor) -> dict[str, Tensor]:
        """One step on the images (and labels) at indices i."""
        e, n, device = self.engine, self.cfg.batch_size, self.x.device
        x0, y = self.x[i], None if self.y is None else self.y[i]
        t = e.draw(lambda g: torch.randint(self.cfg.T, (n,), device=device, generator=g))
        noise = e.draw(lambda g: torch.randn((n, *self.x.shape[1:]), device=device, generator=g))
        if y is not None:  # the null label, so the same net learns eps(x)
            drop = e.draw(lambda g: torch.rand(n, device=device, generator=g)) < self.cfg.cond_drop
            y = torch.where(drop, self.n_classes, y)
        out = e.step("opt", self._loss, x0, t, noise, y, clip=self.cfg.clip_grad)
        e.lerp("ema", "net", 1 - self.cfg.ema)
        return out

    def _loss(
        self, nets: dict, x0: Tensor, t: Tensor, noise: Tensor, y: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        ab = self.alpha_bar[t].reshape(-1, *(1,) * (x0.dim() - 1))
        loss = self.loss(nets["net"](ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t, y), noise)
        return loss, {"eps_loss": loss}

    def train_epoch(self) -> dict[str, Tensor]:
        # batches of indices pick images and (conditional) their labels alike
        index = torch.arange(len(self.x), device=self.x.device)
        return epoch_means(self.engine, index, self.cfg.batch_size, self._step)

    def evaluate(self) -> dict[str, float]:
        return {}

    def samplers(self) -> tuple[str, ...]:
        return tuple(self.variants)

    @classmethod
    def is_sampler(cls, name: str) -> bool:
        return _SAMPLER.match(name) is not None

    def sample_labels(self, n: int) -> Tensor | None:
        return None if self.y is None else balanced_labels(n, self.n_classes, self.x.device)

    @torch.inference_mode()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        **options: Any,
    ) -> Tensor:
        """n samples as data: to_data() of generate()'s, which takes `options`."""
        return self.to_data(self.generate(n, generator, sampler, **options))

    @torch.inference_mode()
    def generate(
        self,
        n: int,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        noise: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """Points of the diffused space from x_T = noise (drawn from generator
        when not given) with the named sampler (default the main one), its
        steps and eta unless given; conditional: for `labels` (default
        balanced; the null label n_classes asks the unconditional model)."""
        named = self.variants[sampler or next(iter(self.variants))]
        v = replace(named, steps=steps or named.steps, eta=named.eta if eta is None else eta)
        if noise is None:
            noise = torch.randn((n, *self.x.shape[1:]), generator=generator, device=self.x.device)
        if labels is None:
            labels = self.sample_labels(len(noise))
        chunks = noise.split(500)
        ys = [None] * len(chunks) if labels is None else labels.split(500)
        pieces = zip(chunks, ys, strict=True)
        return torch.cat([self._reverse(c, y, v, generator) for c, y in pieces])

    def to_data(self, x: Tensor) -> Tensor:
        """The diffused space's points as data: images from [-1, 1] to [0, 1]."""
        return (x.clamp(-1, 1) + 1) / 2

    def _eps(self, x: Tensor, t: Tensor, y: Tensor | None, w: float | None) -> Tensor:
        """The noise estimate, guided when w is a scale other than 0 (w = -1:
        the unconditional model alone)."""
        if y is None or not w:
            return self.ema_net(x, t, y)
        null = torch.full_like(y, self.n_classes)
        if w == -1:
            return self.ema_net(x, t, null)
        both = self.ema_net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = both.chunk(2)
        return (1 + w) * cond - w * uncond

    def _reverse(
        self, x: Tensor, y: Tensor | None, v: Sampler, generator: torch.Generator | None
    ) -> Tensor:
        ts = torch.linspace(0, self.cfg.T - 1, v.steps, device=x.device).round().long()
        ones = torch.ones(len(x), dtype=torch.long, device=x.device)
        for i in range(v.steps - 1, -1, -1):
            ab = self.alpha_bar[ts[i]]
            ab_prev = self.alpha_bar[ts[i - 1]] if i > 0 else torch.ones((), device=x.device)
            eps = self._eps(x, ones * ts[i], y, v.guidance)
            z = (
                torch.randn(x.shape, generator=generator, device=x.device)
                if i > 0 and (v.eta > 0 or v.beta_noise)
                else None
            )
            if v.beta_noise:
                x = beta_update(x, eps, ab, ab_prev, z)
            else:
                x = ddim_update(x, eps, ab, ab_prev, v.eta, z, self.x0_clip)
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
