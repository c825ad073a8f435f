"""A small U-Net for epsilon prediction (Ho et al. 2020, shrunk for a CPU):
sinusoidal time embedding (plus a label embedding when conditional),
residual blocks with GroupNorm, two resolutions down and up with skip
connections, optional self-attention at the bottom."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Transformer-style sinusoids of the integer timesteps t: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, ch), ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(tdim, cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.temb(temb)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Attention(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm, self.qkv, self.out = _norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)
        a = F.scaled_dot_product_attention(q, k, v)  # (n, h*w, c)
        return x + self.out(a.transpose(1, 2).reshape(n, c, h, w))


class UNet(nn.Module):
    def __init__(
        self, in_ch: int, ch: int = 32, attention: bool = False, n_classes: int = 0
    ) -> None:
        super().__init__()
        tdim = 4 * ch
        self.ch = ch
        self.time = nn.Sequential(nn.Linear(ch, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        # class-conditional: a label embedding added to the time embedding;
        # index n_classes is the null label of classifier-free guidance
        self.label = nn.Embedding(n_classes + 1, tdim) if n_classes else None
        self.inp = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.res1, self.down1 = ResBlock(ch, ch, tdim), nn.Conv2d(ch, ch, 3, 2, 1)
        self.res2, self.down2 = ResBlock(ch, 2 * ch, tdim), nn.Conv2d(2 * ch, 2 * ch, 3, 2, 1)
        self.mid1, self.mid2 = ResBlock(2 * ch, 2 * ch, tdim), ResBlock(2 * ch, 2 * ch, tdim)
        self.attn = Attention(2 * ch) if attention else nn.Identity()
        self.up2, self.res_up2 = (
            nn.Conv2d(2 * ch, 2 * ch, 3, padding=1),
            ResBlock(4 * ch, 2 * ch, tdim),
        )
        self.up1, self.res_up1 = nn.Conv2d(2 * ch, 2 * ch, 3, padding=1), ResBlock(3 * ch, ch, tdim)
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_ch, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        temb = self.time(timestep_embedding(t, self.ch))
        if self.label is not None:
            temb = temb + self.label(y)
        h1 = self.res1(self.inp(x), temb)
        h2 = self.res2(self.down1(h1), temb)
        m = self.mid2(self.attn(self.mid1(self.down2(h2), temb)), temb)
        u = self.up2(F.interpolate(m, scale_factor=2.0, mode="nearest"))
        u = self.res_up2(torch.cat([u, h2], 1), temb)
        u = self.up1(F.interpolate(u, scale_factor=2.0, mode="nearest"))
        return self.out(self.res_up1(torch.cat([u, h1], 1), temb))
