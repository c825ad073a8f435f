"""Encoder and decoder networks shared by the autoencoder families (AE, VAE,
discrete VAE), and the epoch loop they share: they differ in what sits between
the two networks and in their loss, not in these."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import ConfigError
from models.family import Family, GenerativeFamily, mode_rule
from models.latent import lerp, pairs
from models.pack import Engine, Solo


def conv_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3 or shape[1] % 4 or shape[2] % 4:
        raise ConfigError(f"arch=conv needs images with sides divisible by 4, got {shape}")
    return shape  # type: ignore[return-value]


def encoder(arch: str, shape: tuple[int, ...], width: int, out: int) -> nn.Module:
    """Data (N, *shape) -> (N, out) pre-activations."""
    if arch == "conv":
        c, h, w = conv_shape(shape)
        return nn.Sequential(
            nn.Conv2d(c, width // 2, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(width // 2, width, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(width * (h // 4) * (w // 4), out),
        )
    n = int(torch.Size(shape).numel())
    return nn.Sequential(nn.Flatten(), nn.Linear(n, width), nn.ReLU(), nn.Linear(width, out))


def decoder(arch: str, shape: tuple[int, ...], width: int, inp: int) -> nn.Module:
    """(N, inp) -> data (N, *shape) in [0, 1] (images) or unbounded (points)."""
    if arch == "conv":
        c, h, w = conv_shape(shape)
        return nn.Sequential(
            nn.Linear(inp, width * (h // 4) * (w // 4)),
            nn.Unflatten(1, (width, h // 4, w // 4)),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width // 2, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(width // 2, c, 4, 2, 1),
            nn.Sigmoid(),
        )
    n = int(torch.Size(shape).numel())
    layers = [nn.Linear(inp, width), nn.ReLU(), nn.Linear(width, n)]
    if len(shape) == 3:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers, nn.Unflatten(1, shape))


def check_batch(batch_size: int, n: int) -> None:
    if batch_size > n:
        raise ConfigError(f"batch_size={batch_size} exceeds the {n} training samples")


def epoch_means(
    engine: Engine, x: Tensor, batch_size: int, step: Callable[[Tensor], dict[str, Tensor]]
) -> dict[str, Tensor]:
    """One shuffled pass in batches (each member of a seed pack its own
    order, the member dimension first); step(batch) -> detached 0-d (or, in
    a pack, (K,)) tensors, summed on the device and averaged, so the epoch
    costs no host sync per step."""
    steps = len(x) // batch_size
    perm = engine.order(lambda g: torch.randperm(len(x), device=x.device, generator=g))
    sums: dict[str, Tensor] = {}
    for i in range(steps):
        for k, v in step(x[perm[..., i * batch_size : (i + 1) * batch_size]]).items():
            sums[k] = sums[k] + v if k in sums else v
    return {k: v / steps for k, v in sums.items()}


@torch.inference_mode()
def batched(fn: Callable[[Tensor], Tensor], x: Tensor, size: int = 1000) -> Tensor:
    return torch.cat([fn(chunk) for chunk in x.split(size)])


RECON_METRICS = frozenset({"recon_mse", "recon_mse_train", "recon_vs_mean"})
RECON_COLLAPSE = 0.9  # recon_vs_mean above this: barely better than the mean image


def recon_rule(metrics: dict[str, float], n_modes: int) -> str | None:
    """A reconstructing family answers held-out inputs hardly better than
    the training mean image (dead codes, posterior collapse)."""
    ratio = metrics.get("recon_vs_mean")
    if ratio is not None and ratio > RECON_COLLAPSE:
        return f"held-out recon_mse is {ratio:.2f} x that of the mean image"
    return None


def recon_metrics(
    reconstruct: Callable[[Tensor], Tensor], train_x: Tensor, test_x: Tensor
) -> dict[str, float]:
    """Held-out and training reconstruction error (on as many training inputs
    as held-out ones), and `recon_vs_mean`: the held-out error over that of
    always answering the training set's mean image. Near 1 or above, the
    model ignores its input (dead codes, posterior collapse, a stuck decoder)."""
    train = train_x[: len(test_x)]
    test_mse = float(F.mse_loss(batched(reconstruct, test_x), test_x))
    mean_mse = float(F.mse_loss(train_x.mean(0, keepdim=True).expand_as(test_x), test_x))
    return {
        "recon_mse": test_mse,
        "recon_mse_train": float(F.mse_loss(batched(reconstruct, train), train)),
        "recon_vs_mean": test_mse / mean_mse,
    }


def recon_sum(out: Tensor, x: Tensor, kind: str = "bce") -> Tensor:
    """Per-example negative log-likelihood up to a constant, summed over
    dimensions: images Bernoulli (`bce`) or squared error (`mse`, a Gaussian
    of variance 1/2, the chapters' F.mse_loss scaled to the same per-pixel
    sum); points a unit Gaussian."""
    if x.dim() != 4:
        nll = 0.5 * (out - x) ** 2
    elif kind == "mse":
        nll = (out - x) ** 2
    else:
        # BCE refuses a NaN input (an error on the CPU, a device assert on a
        # GPU); a diverged network's NaN must reach the loss instead, where
        # the divergence rule sees it (and, in a seed pack, must not stop the
        # other members). For finite outputs the value and gradient are BCE's.
        nll = F.binary_cross_entropy(out.nan_to_num(0.5), x, reduction="none") + 0 * out
    return nll.flatten(1).sum(1)


class LatentCoder(Family):
    """The latent probes of a family with an encoder and a decoder: codes for
    the linear probe, straight paths between the codes of held-out pairs, and
    inputs beside their reconstructions. A family says what its code is."""

    test_x: Tensor
    collapse_rules = (recon_rule,)

    def encode_latent(self, x: Tensor) -> Tensor:
        """The deterministic code of x (a VAE's posterior mean)."""
        raise NotImplementedError

    def decode_latent(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode_latent(self.encode_latent(x))

    def reconstruction_rows(self, x: Tensor) -> list[Tensor]:
        return [x, batched(self.reconstruct, x)]

    def probe_codes(self, x: Tensor) -> Tensor:
        return batched(self.encode_latent, x).flatten(1)

    def anomaly_scores(self, x: Tensor) -> Tensor:
        return (batched(self.reconstruct, x) - x).pow(2).flatten(1).mean(1)

    def latent_ends(self, n: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        idx = pairs(n, len(self.test_x), generator, self.test_x.device)
        return tuple(batched(self.encode_latent, self.test_x[i]) for i in idx)

    def decode_path(self, ends: tuple[Tensor, ...], t: Tensor) -> Tensor:
        return self.decode_codes(lerp(ends[0], ends[1], t))

    def encode_codes(self, x: Tensor) -> Tensor:
        return batched(self.encode_latent, x)

    def encoder_network(self) -> nn.Module:
        return self.enc  # the VAEs' and the VQ-VAE's encoder

    def decode_codes(self, z: Tensor) -> Tensor:
        return batched(self.decode_latent, z)


class EncoderDecoder(LatentCoder, GenerativeFamily):
    """What the VAE families share: an encoder to `code_size` numbers, a
    decoder from `latent_size`, one Adam over both, and a step counter that
    drives their schedules; checkpoints hold all of it. They train in seed
    packs: each step is a loss function of the networks `enc` and `dec`."""

    packs = True
    counters = ("step",)
    collapse_rules = (mode_rule, recon_rule)

    def __init__(
        self,
        train_x: Tensor,
        test_x: Tensor,
        *,
        arch: str,
        width: int,
        code_size: int,
        latent_size: int,
        lr: float,
        batch_size: int,
        recon_loss: str = "bce",
    ) -> None:
        check_batch(batch_size, len(train_x))
        self.x, self.test_x = train_x, test_x
        shape = tuple(train_x.shape[1:])
        self.pixels = int(torch.Size(shape).numel())
        self.enc = encoder(arch, shape, width, code_size).to(train_x.device)
        self.dec = decoder(arch, shape, width, latent_size).to(train_x.device)
        params = [*self.enc.parameters(), *self.dec.parameters()]
        self.opt = torch.optim.Adam(params, lr=lr, fused=True)
        self.engine: Engine = Solo(self, {"enc": self.enc, "dec": self.dec}, {"opt": self.opt})
        self.batch_size = batch_size
        self.steps_per_epoch = len(train_x) // batch_size
        self.step = 0
        self.recon_loss = recon_loss

    def decode_latent(self, z: Tensor) -> Tensor:
        return self.dec(z)

    def elbo_loss(
        self, out: Tensor, x: Tensor, kl: Tensor, weight: float = 1.0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The per-pixel negative ELBO, reconstruction + weight * KL, from the
        decoded batch `out` and per-example `kl`, and its parts. kl_train is
        the epoch's mean; "kl" is the held-out value evaluate() logs."""
        rec, kl = recon_sum(out, x, self.recon_loss).mean(), kl.mean()
        loss = (rec + weight * kl) / self.pixels  # per pixel, both terms alike
        return loss, {"loss": loss, "recon_loss": rec / self.pixels, "kl_train": kl}

    def optimise(self, loss_fn: Callable, *inputs: Tensor | None) -> dict[str, Tensor]:
        """One optimiser step on loss_fn(nets, *inputs) (every member's, in a pack)."""
        metrics = self.engine.step("opt", loss_fn, *inputs)
        self.step += 1
        return metrics

    def state_dict(self) -> dict:
        return {
            "enc": self.enc.state_dict(),
            "dec": self.dec.state_dict(),
            "opt": self.opt.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.enc.load_state_dict(state["enc"])
        self.dec.load_state_dict(state["dec"])
        self.opt.load_state_dict(state["opt"])
        self.step = state["step"]
