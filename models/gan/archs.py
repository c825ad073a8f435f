"""The GAN architectures, registered by name: each builds a generator and a
discriminator (models.gan.nets) from the config and the data shape.

Images are in [0, 1]; 2-D points are raw coordinates. The DCGAN's tanh output is
mapped to [0, 1], which is the usual [-1, 1] set-up up to an affine change of
the discriminator's input, so one data range serves every architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from models.config import ConfigError
from models.gan.nets import Discriminator, Generator, Seq, TanhToUnit
from models.gan.parts import MinibatchStdDev, PixelNorm
from models.gan.stylegan import StyleGenerator

Shape = tuple[int, ...]


def _g_norm(cfg: Any, width: int, dims: int) -> nn.Module:
    """The generator's normalisation after each layer: batch norm (DCGAN's
    rule) or ProGAN's pixelwise normalisation."""
    if cfg.pixelnorm:
        return PixelNorm()
    return nn.BatchNorm1d(width) if dims == 1 else nn.BatchNorm2d(width)


def _mbdisc(cfg: Any) -> tuple[int, int] | None:
    return (cfg.mbdisc_kernels, cfg.mbdisc_dim) if cfg.mbdisc else None


# --- mlp: one level, no growth ----------------------------------------------


def _mlp_generator(cfg: Any, shape: Shape, n_classes: int) -> Generator:
    # BatchNorm matters here: without it the discriminator wins outright and a
    # textbook configuration stays at noise-level fid on mnist5k (measured).
    out, w = int(torch.Size(shape).numel()), cfg.width
    z_in = cfg.z_dim * (2 if n_classes else 1)
    body = Seq(
        nn.Linear(z_in, w), _g_norm(cfg, w, 1), nn.LeakyReLU(0.2),
        nn.Linear(w, w), _g_norm(cfg, w, 1), nn.LeakyReLU(0.2),
        nn.Linear(w, out), nn.Unflatten(1, shape),
    )  # fmt: skip
    squash = nn.Sigmoid() if len(shape) == 3 else nn.Identity()  # images in [0, 1]
    return Generator([body], [nn.Identity()], squash, n_classes, cfg.z_dim)


def _mlp_discriminator(cfg: Any, shape: Shape, n_classes: int) -> Discriminator:
    inp, w = int(torch.Size(shape).numel()) * cfg.pac, cfg.width
    stats = [MinibatchStdDev()] if cfg.mbstd else []
    head = nn.Sequential(
        nn.Flatten(), nn.Linear(inp, w), nn.LeakyReLU(0.2),
        nn.Linear(w, w), nn.LeakyReLU(0.2), *stats,
    )  # fmt: skip
    features = w + len(stats)
    return Discriminator(
        cfg.pac, [nn.Identity()], [nn.Identity()], head, features, _mbdisc(cfg), n_classes
    )


# --- dcgan: three levels (h/4, h/2, h) ----------------------------------------


def _image_shape(cfg: Any, shape: Shape) -> tuple[int, int, int]:
    if len(shape) != 3 or shape[1] % 4 or shape[2] % 4:
        raise ConfigError(
            f"arch={cfg.arch} needs images with sides divisible by 4, got data of shape {shape}"
        )
    return shape  # type: ignore[return-value]


def _dcgan_generator(cfg: Any, shape: Shape, n_classes: int) -> Generator:
    c, h, w = _image_shape(cfg, shape)
    w1, w2 = cfg.channels, 2 * cfg.channels
    z_in = cfg.z_dim * (2 if n_classes else 1)
    blocks = [
        Seq(
            nn.Linear(z_in, w2 * (h // 4) * (w // 4)),
            nn.Unflatten(1, (w2, h // 4, w // 4)),
            _g_norm(cfg, w2, 2),
            nn.ReLU(),
        ),
        Seq(nn.ConvTranspose2d(w2, w1, 4, 2, 1), _g_norm(cfg, w1, 2), nn.ReLU()),
        Seq(nn.ConvTranspose2d(w1, c, 4, 2, 1)),
    ]
    # the last level's block already ends in image channels
    rgb = [nn.Conv2d(w2, c, 1), nn.Conv2d(w1, c, 1)] if cfg.progressive else [nn.Identity()] * 2
    return Generator(blocks, [*rgb, nn.Identity()], TanhToUnit(), n_classes, cfg.z_dim)


def _dcgan_discriminator(cfg: Any, shape: Shape, n_classes: int) -> Discriminator:
    c, h, w = _image_shape(cfg, shape)
    w1, w2, cp = cfg.channels, 2 * cfg.channels, c * cfg.pac
    blocks = [
        nn.Identity(),
        nn.Sequential(nn.Conv2d(w1, w2, 4, 2, 1), nn.LeakyReLU(0.2), nn.Dropout(cfg.dropout)),
        nn.Sequential(nn.Conv2d(cp, w1, 4, 2, 1), nn.LeakyReLU(0.2), nn.Dropout(cfg.dropout)),
    ]
    rgb = (
        [nn.Sequential(nn.Conv2d(cp, width, 1), nn.LeakyReLU(0.2)) for width in (w2, w1)]
        if cfg.progressive
        else [nn.Identity()] * 2
    )
    stats = [MinibatchStdDev()] if cfg.mbstd else []
    head = nn.Sequential(*stats, nn.Flatten())
    features = (w2 + len(stats)) * (h // 4) * (w // 4)
    return Discriminator(
        cfg.pac, [*rgb, nn.Identity()], blocks, head, features, _mbdisc(cfg), n_classes
    )


# --- style: StyleGAN's generator, DCGAN's discriminator (the paper changed only G)


def _style_generator(cfg: Any, shape: Shape, n_classes: int) -> Generator:
    return StyleGenerator(
        _image_shape(cfg, shape),
        cfg.channels,
        cfg.z_dim,
        cfg.mapping_layers,
        cfg.mixing_prob,
        cfg.truncation,
        cfg.pixelnorm,
        n_classes,
    )


Builder = Callable[[Any, Shape, int], nn.Module]
ARCHS: dict[str, tuple[Builder, Builder]] = {
    "mlp": (_mlp_generator, _mlp_discriminator),
    "dcgan": (_dcgan_generator, _dcgan_discriminator),
    "style": (_style_generator, _dcgan_discriminator),
}
GROWS = ("dcgan", "style")  # the architectures with resolution levels
