"""A StyleGAN-style generator (Karras et al. 2019), sized for a CPU.

z (and a conditional model's label embedding) goes through a mapping network
to w; a learned constant is the synthesis input; every layer adds per-pixel
noise scaled by a learned per-channel weight (zero at the start, as in the
paper) and is then modulated by AdaIN from its own affine map of w. In
training a share `mixing_prob` of samples switches from one w to a second
one at a random layer (style mixing); at sampling time, sampler `psiP` draws
w = w_avg + P (w - w_avg) (the truncation trick), w_avg a running mean of
the mapping's outputs. Growth levels as in models.gan.nets: 0 at a quarter
of the side, two layers per level.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.gan.nets import Generator, TanhToUnit
from models.gan.parts import PixelNorm

SAMPLER = re.compile(r"psi(\d+(\.\d+)?)")
W_AVG_DECAY = 0.995  # StyleGAN's running mean of w
MAPPING_LR = 0.01  # StyleGAN's learning-rate multiplier of the mapping network


class AdaIN(nn.Module):
    """Adaptive instance normalisation: each sample's channels normalised to
    zero mean and unit variance, then scaled by y_s and shifted by y_b, an
    affine map of the style w (scale biased to 1, so a fresh layer is close to
    plain instance normalisation)."""

    def __init__(self, w_dim: int, channels: int) -> None:
        super().__init__()
        self.affine = nn.Linear(w_dim, 2 * channels)
        with torch.no_grad():  # StyleGAN's init: styles vary O(1) with a unit-scale w
            self.affine.weight.normal_(0.0, w_dim**-0.5)
            self.affine.bias[:channels] = 1.0
            self.affine.bias[channels:] = 0.0

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        ys, yb = self.affine(w)[:, :, None, None].chunk(2, dim=1)
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
        return ys * (x - mean) * torch.rsqrt(var + 1e-8) + yb


class NoiseInput(nn.Module):
    """One map of Gaussian noise per sample, broadcast to every channel with a
    learned per-channel scale (the "B" boxes of the paper's figure)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        b, _, h, w = x.shape
        noise = torch.randn(b, 1, h, w, device=x.device, generator=gen)
        return x + self.scale * noise


class StyleLayer(nn.Module):
    """[upsample] [conv 3x3] -> noise -> leaky ReLU [-> pixel norm] -> AdaIN(w_index)."""

    def __init__(
        self, index: int, c_in: int, c_out: int, w_dim: int, conv: bool, up: bool, pixelnorm: bool
    ) -> None:
        super().__init__()
        self.index, self.up = index, up
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1) if conv else None
        self.noise = NoiseInput(c_out)
        self.norm = PixelNorm() if pixelnorm else nn.Identity()
        self.adain = AdaIN(w_dim, c_out)

    def forward(self, x: Tensor, ctx: tuple[Tensor, torch.Generator | None]) -> Tensor:
        ws, gen = ctx
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.conv is not None:
            x = self.conv(x)
        x = self.norm(F.leaky_relu(self.noise(x, gen), 0.2))
        return self.adain(x, ws[:, self.index])


class StyleBlock(nn.Module):
    def __init__(self, layers: list[StyleLayer], const: tuple[int, int, int] | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.const = nn.Parameter(torch.ones(1, *const)) if const else None

    def forward(self, x: Tensor, ctx: tuple[Tensor, torch.Generator | None]) -> Tensor:
        if self.const is not None:  # the first block ignores x: it is the batch's w
            x = self.const.expand(len(x), -1, -1, -1)
        for layer in self.layers:
            x = layer(x, ctx)
        return x


class StyleGenerator(Generator):
    def __init__(
        self,
        shape: tuple[int, int, int],
        channels: int,
        z_dim: int,
        mapping_layers: int,
        mixing_prob: float,
        truncation: float,
        pixelnorm: bool,
        n_classes: int = 0,
    ) -> None:
        c, h, w = shape
        in_dim = 2 * z_dim if n_classes else z_dim
        w_dim = z_dim if mapping_layers else in_dim
        widths = [2 * channels, channels, channels]  # levels at h/4, h/2, h
        blocks: list[nn.Module] = []
        for level, width in enumerate(widths):
            c_in = widths[max(level - 1, 0)]
            first = StyleLayer(2 * level, c_in, width, w_dim, level > 0, level > 0, pixelnorm)
            second = StyleLayer(2 * level + 1, width, width, w_dim, True, False, pixelnorm)
            const = (width, h // 4, w // 4) if level == 0 else None
            blocks.append(StyleBlock([first, second], const))
        to_rgb = [nn.Conv2d(width, c, 1) for width in widths]
        super().__init__(blocks, to_rgb, TanhToUnit(), n_classes, z_dim)
        self.n_layers, self.mixing_prob = 2 * len(widths), mixing_prob
        self.truncation = truncation
        mapping: list[nn.Module] = [PixelNorm()] if not n_classes else []
        for i in range(mapping_layers):
            mapping += [nn.Linear(in_dim if i == 0 else w_dim, w_dim), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*mapping)
        for layer in self.mapping:
            # He init keeps w at unit scale through the layers (torch's default
            # shrinks it about 3x a layer, and a near-constant w collapses G)
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(layer.bias)
        # the running mean of w, per class for a conditional model, so that
        # truncation pulls towards the class's centre and keeps the class
        self.register_buffer("w_avg", torch.zeros(max(n_classes, 1), w_dim))

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The mapping network learns at MAPPING_LR x lr, as in the paper:
        at the full rate its w drifts faster than the synthesis can follow."""
        mapping = {id(p) for p in self.mapping.parameters()}
        rest = [p for p in self.parameters() if id(p) not in mapping]
        groups = [{"params": rest, "lr": lr}]
        if mapping:
            groups.append({"params": list(self.mapping.parameters()), "lr": lr * MAPPING_LR})
        return groups

    def samplers(self) -> tuple[str, ...]:
        return ("psi1", f"psi{self.truncation:g}") if self.truncation != 1 else ("psi1",)

    def map(self, z: Tensor, y: Tensor | None) -> Tensor:
        if self.embed is not None:  # both normalised, as StyleGAN2-ADA conditions
            z = torch.cat([PixelNorm()(z), PixelNorm()(self.embed(y))], dim=1)
        return self.mapping(z)

    def inputs(
        self, z: Tensor, y: Tensor | None, sampler: str | None, gen: torch.Generator | None
    ) -> tuple[Tensor, tuple[Tensor, torch.Generator | None]]:
        w = self.map(z, y)
        ws = w.unsqueeze(1).expand(-1, self.n_layers, -1)
        if self.training:
            self.track(w.detach(), y)
            if self.mixing_prob > 0:
                ws = self.mix(ws, self.map(torch.randn_like(z), y))
        elif sampler:
            psi = float(SAMPLER.fullmatch(sampler).group(1))
            centre = self.w_avg[self._classes(z, y)][:, None]
            ws = centre + psi * (ws - centre)
        return z, (ws, gen)

    @torch.no_grad()
    def track(self, w: Tensor, y: Tensor | None) -> None:
        """w_avg moves towards this batch's mean w (each class's towards its
        own samples' mean); no host sync."""
        y = self._classes(w, y)
        sums = torch.zeros_like(self.w_avg).index_add_(0, y, w)
        counts = torch.zeros(len(self.w_avg), device=w.device).index_add_(
            0, y, torch.ones_like(y, dtype=w.dtype)
        )
        mean = sums / counts.clamp(min=1)[:, None]
        step = torch.where(counts[:, None] > 0, 1 - W_AVG_DECAY, 0.0)
        self.w_avg.lerp_(mean, step)

    @staticmethod
    def _classes(x: Tensor, y: Tensor | None) -> Tensor:
        """Each sample's row of w_avg: its class, or the one row."""
        return torch.zeros(len(x), dtype=torch.long, device=x.device) if y is None else y

    def mix(self, ws: Tensor, w2: Tensor) -> Tensor:
        """Style mixing: for a share mixing_prob of the samples, the layers from
        a random crossover (1..n_layers - 1) on take their style from w2."""
        b = len(ws)
        cross = torch.randint(1, self.n_layers, (b, 1), device=ws.device)
        mixed = torch.rand(b, 1, device=ws.device) < self.mixing_prob
        cross = torch.where(mixed, cross, self.n_layers)
        later = torch.arange(self.n_layers, device=ws.device)[None, :] >= cross  # (b, layers)
        return torch.where(later[:, :, None], w2[:, None, :], ws)
