"""Paths through a latent space, for the interpolation pictures and the
perceptual path length: linear paths between codes, spherical ones between
Gaussian draws (StyleGAN's `slerp` in Z)."""

from __future__ import annotations

import torch
from torch import Tensor


def _column(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(-1, *[1] * (like.dim() - 1)).to(like.dtype)


def lerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """a + t (b - a) per row; t: (N,)."""
    return torch.lerp(a, b, _column(t, a))


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """The great-circle path between the directions of a and b (Shoemake), its
    length lerped from |a| to |b|: draws from N(0, I) stay on the shell they
    live on, where a straight line would pass through the improbable centre."""
    flat_a, flat_b = a.flatten(1), b.flatten(1)
    na, nb = flat_a.norm(dim=1, keepdim=True), flat_b.norm(dim=1, keepdim=True)
    ua, ub = flat_a / na, flat_b / nb
    cos = (ua * ub).sum(1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    omega, tc = torch.acos(cos), _column(t, flat_a)
    ortho = ub - cos * ua  # the part of b's direction orthogonal to a's
    ortho = ortho / ortho.norm(dim=1, keepdim=True).clamp_min(1e-12)
    angle = tc * omega
    direction = ua * torch.cos(angle) + ortho * torch.sin(angle)
    return (direction * torch.lerp(na, nb, tc)).reshape(a.shape)


def pairs(n: int, pool: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """(2, n) indices into `pool` items: n random pairs of distinct items."""
    first = torch.randint(pool, (n,), generator=generator, device=device)
    shift = torch.randint(1, pool, (n,), generator=generator, device=device)
    return torch.stack([first, (first + shift) % pool])
