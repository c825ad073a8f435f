"""GAN networks as stacks of resolution levels, so one code path serves a
fixed network and a progressively grown one (Karras et al. 2018).

A generator's `blocks[0]` makes level-0 features from the latent input and
`blocks[l]` doubles the resolution from level l - 1 to l; `to_rgb[l]` turns
level-l features into an image. A discriminator mirrors it: `from_rgb[l]`
reads an image at level l and `blocks[l]` halves level l to l - 1. At
`stage` s only levels 0..s run; while `alpha` < 1 the newest level fades in
over the upsampled (G) or downsampled (D) path of the level before. At the
last stage with alpha 1 the networks are the plain fixed ones.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.gan.parts import MinibatchDiscrimination


class TanhToUnit(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return (torch.tanh(x) + 1) / 2


class Seq(nn.Sequential):
    """A sequential block that ignores the generator's per-layer context
    (the style vectors a StyleGAN block reads)."""

    def forward(self, x: Tensor, ctx: Any = None) -> Tensor:  # noqa: ARG002
        return super().forward(x)


class Pack(nn.Module):
    """PacGAN (Lin et al. 2018): consecutive groups of `pac` samples become one
    discriminator input (features, or channels for images), so D judges sets
    of samples and sees a lack of variety."""

    def __init__(self, pac: int) -> None:
        super().__init__()
        self.pac = pac

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0] // self.pac, self.pac * x.shape[1], *x.shape[2:])


class Staged(nn.Module):
    """What the growth schedule sets on both networks."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels  # the last level index
        self.stage, self.alpha = levels, 1.0

    def grow(self, stage: int, alpha: float) -> None:
        self.stage, self.alpha = min(stage, self.levels), alpha


class Generator(Staged):
    def __init__(
        self,
        blocks: list[nn.Module],
        to_rgb: list[nn.Module],
        out: nn.Module,
        n_classes: int = 0,
        embed_dim: int = 0,
    ) -> None:
        super().__init__(len(blocks) - 1)
        self.blocks, self.to_rgb, self.out = nn.ModuleList(blocks), nn.ModuleList(to_rgb), out
        self.embed = nn.Embedding(n_classes, embed_dim) if n_classes else None

    def samplers(self) -> tuple[str, ...]:
        return ()

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The optimiser's parameter groups (one learning rate here)."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def inputs(
        self, z: Tensor, y: Tensor | None, sampler: str | None, gen: torch.Generator | None
    ) -> tuple[Tensor, Any]:
        """blocks[0]'s input and the context every block gets; a conditional
        generator reads its label embedding beside z."""
        return (z if self.embed is None else torch.cat([z, self.embed(y)], dim=1)), None

    def forward(
        self,
        z: Tensor,
        y: Tensor | None = None,
        sampler: str | None = None,
        gen: torch.Generator | None = None,
    ) -> Tensor:
        h, ctx = self.inputs(z, y, sampler, gen)
        s = self.stage
        for block in self.blocks[: max(s, 1)]:
            h = block(h, ctx)
        if s == 0:
            rgb = self.to_rgb[0](h)
        else:
            rgb = self.to_rgb[s](self.blocks[s](h, ctx))
            if self.alpha < 1:
                old = F.interpolate(self.to_rgb[s - 1](h), scale_factor=2, mode="nearest")
                rgb = torch.lerp(old, rgb, self.alpha)
        if s < self.levels:  # scored and shown at the full resolution
            rgb = F.interpolate(rgb, scale_factor=2 ** (self.levels - s), mode="nearest")
        return self.out(rgb)


class Discriminator(Staged):
    """from_rgb/blocks as the module docstring says, then `head` (to a flat
    feature vector f), optional minibatch discrimination on f, and a linear
    output; conditional: a projection discriminator (Miyato and Koyama 2018),
    D(x, y) = linear(f) + embed(y) . f."""

    def __init__(
        self,
        pac: int,
        from_rgb: list[nn.Module],
        blocks: list[nn.Module],
        head: nn.Module,
        features: int,
        mbdisc: tuple[int, int] | None = None,
        n_classes: int = 0,
    ) -> None:
        super().__init__(len(blocks) - 1)
        self.pack = Pack(pac)
        self.from_rgb, self.blocks, self.head = nn.ModuleList(from_rgb), nn.ModuleList(blocks), head
        self.mbdisc = MinibatchDiscrimination(features, *mbdisc) if mbdisc else None
        features += mbdisc[0] if mbdisc else 0
        self.linear = nn.Linear(features, 1)
        self.embed = nn.Embedding(n_classes, features) if n_classes else None

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        x, s = self.pack(x), self.stage
        if s < self.levels:
            x = F.avg_pool2d(x, 2 ** (self.levels - s))
        h = self.from_rgb[s](x)
        if s > 0:
            h = self.blocks[s](h)
            if self.alpha < 1:
                h = torch.lerp(self.from_rgb[s - 1](F.avg_pool2d(x, 2)), h, self.alpha)
            for block in self.blocks[s - 1 : 0 : -1]:
                h = block(h)
        f = self.head(h)
        if self.mbdisc is not None:
            f = self.mbdisc(f)
        out = self.linear(f)
        if self.embed is not None:
            out = out + (self.embed(y) * f).sum(dim=1, keepdim=True)
        return out
