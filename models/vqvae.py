"""VQ-VAE family (van den Oord et al. 2017): a convolutional encoder to a
grid of code_dim vectors, each replaced by its nearest codebook entry, the
decoder's gradient passed straight through to the encoder; loss =
reconstruction + ||sg[z_e] - e||^2 (or exponential-moving-average codebook
updates instead) + commitment * ||z_e - sg[e]||^2. Dead entries (unused over
an epoch) can be re-seeded from encoder outputs.

Samples decode code grids drawn position by position from the training set's
code histogram at each position (sampler `histogram`): a weak prior, so its
sample metrics measure the codebook and that prior together. With
prior_epochs > 0 a learned prior over the grids (models/prior.py; the paper
trains a PixelCNN), trained after the VQ-VAE, is scored at the end too as
sampler `prior`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.coders import (
    RECON_METRICS,
    LatentCoder,
    batched,
    check_batch,
    conv_shape,
    epoch_means,
    recon_metrics,
    recon_rule,
)
from models.config import param
from models.family import GenerativeFamily, mode_rule
from models.pack import Engine, Solo
from models.prior import PRIOR_METRICS, PriorSampling


@dataclass
class VQVAEConfig:
    codebook_size: int = param(64, low=2, high=65536, help="codebook entries K")
    code_dim: int = param(16, low=1, high=1024, help="dimensions of each entry")
    commitment: float = param(0.25, low=0.0, high=100.0, help="commitment weight beta")
    codebook_update: str = param(
        "loss", choices=("loss", "ema"), help="codebook learned by its loss, or by EMA"
    )
    decay: float = param(0.99, low=0.0, high=0.99999, help="EMA decay of the codebook")
    restart_dead: bool = param(False, help="re-seed entries unused in an epoch")
    width: int = param(32, low=2, high=4096, help="channels of the conv networks")
    lr: float = param(1e-3, low=1e-6, high=1.0, help="Adam learning rate", mutable=True)
    batch_size: int = param(128, low=2, high=65536)
    prior_epochs: int = param(
        0,
        low=0,
        high=10_000,
        help="passes of a learned prior (a small transformer) over the training codes, trained"
        " after the autoencoder, scored at the final evaluation as sampler 'prior' (0: no prior)",
    )


def usage_perplexity(counts: Tensor) -> float:
    """exp(entropy) of the code usage histogram: K when all K entries are used
    equally, 1 when one entry takes every position."""
    p = counts.float() / counts.sum()
    return math.exp(float(-(p * p.clamp_min(1e-12).log()).sum()))


def nearest(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest entry for each row of z (M, D); codebook (K, D)."""
    d = z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.t() + codebook.pow(2).sum(1)
    return d.argmin(1)


class Codebook(nn.Module):
    """K entries of dimension D, with the EMA statistics of the `ema` update
    (Laplace-smoothed counts N and sums m; e = m / N)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.empty(size, dim).uniform_(-1 / size, 1 / size))
        self.register_buffer("ema_count", torch.ones(size))
        self.register_buffer("ema_sum", self.embed.detach().clone())

    def quantise(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(indices (N, H, W), quantised (N, D, H, W)) of a grid z (N, D, H, W)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        idx = nearest(flat, self.embed)
        q = self.embed[idx].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        return idx.view(z.shape[0], z.shape[2], z.shape[3]), q

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.quantise(z)


# The codebook's two updates outside the gradient step, on its tensors
# (embed, ema_count, ema_sum) with any leading dimensions: one codebook's, or
# a seed pack's stacked ones (the member dimension first) in one go.


def _grid_rows(z: Tensor) -> Tensor:
    """(..., N, D, H, W) -> (..., N * H * W, D)."""
    return z.movedim(-3, -1).flatten(-4, -2)


@torch.no_grad()
def ema_update(book: dict[str, Tensor], z: Tensor, idx: Tensor, decay: float) -> None:
    """Laplace-smoothed EMA of the entries' counts and sums over z's vectors
    (z (..., N, D, H, W), idx their entries (..., N, H, W)); e = m / N."""
    eps = 1e-5
    embed, count, total = book["embed"], book["ema_count"], book["ema_sum"]
    flat = _grid_rows(z)
    # scatter, not F.one_hot: one_hot checks its indices on the host (a sync)
    onehot = torch.zeros(*flat.shape[:-1], embed.shape[-2], device=z.device, dtype=z.dtype)
    onehot.scatter_(-1, idx.flatten(-3).unsqueeze(-1), 1.0)
    count.lerp_(onehot.sum(-2), 1 - decay)
    total.lerp_(onehot.transpose(-1, -2) @ flat, 1 - decay)
    n = count.sum(-1, keepdim=True)
    smoothed = (count + eps) / (n + embed.shape[-2] * eps) * n
    embed.copy_(total / smoothed.unsqueeze(-1))


@torch.no_grad()
def restart(book: dict[str, Tensor], dead: Tensor, z: Tensor, pick: Tensor) -> None:
    """Entries `dead` (bool (..., K)) take the encoder vectors of z at rows
    `pick` (..., K): a candidate drawn for every entry and kept where dead,
    with no host sync."""
    fresh = _grid_rows(z).gather(-2, pick.unsqueeze(-1).expand(*pick.shape, z.shape[-3]))
    column = dead.unsqueeze(-1)
    book["embed"].copy_(torch.where(column, fresh, book["embed"]))
    book["ema_sum"].copy_(torch.where(column, fresh, book["ema_sum"]))
    book["ema_count"].copy_(torch.where(dead, 1.0, book["ema_count"]))


def vq_encoder(c: int, width: int, dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c, width // 2, 4, 2, 1),
        nn.ReLU(),
        nn.Conv2d(width // 2, width, 4, 2, 1),
        nn.ReLU(),
        nn.Conv2d(width, dim, 1),
    )


def vq_decoder(c: int, width: int, dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(dim, width, 1),
        nn.ReLU(),
        nn.ConvTranspose2d(width, width // 2, 4, 2, 1),
        nn.ReLU(),
        nn.ConvTranspose2d(width // 2, c, 4, 2, 1),
        nn.Sigmoid(),
    )


# dead_codes above this: a codebook collapsed to a few entries (measured on
# mnist5k: collapsed codebooks leave 80-97% unused, live ones 0-2%)
CODEBOOK_COLLAPSE = 0.75


def codebook_rule(metrics: dict[str, float], n_modes: int) -> str | None:
    """The codebook went mostly unused on held-out inputs."""
    dead = metrics.get("dead_codes")
    if dead is not None and dead > CODEBOOK_COLLAPSE:
        perplexity = metrics.get("codebook_perplexity", math.nan)
        return f"codebook collapsed: {dead:.0%} of entries unused (perplexity {perplexity:.1f})"
    return None


class VQVAE(PriorSampling, LatentCoder, GenerativeFamily):
    Config = VQVAEConfig
    base_sampler = "histogram"
    counters = ("epochs_done",)  # what a fitted prior is keyed by
    collapse_rules = (codebook_rule, mode_rule, recon_rule)
    roles = {
        "learning_rate": ("lr",),
        "architecture": ("codebook_size", "code_dim", "width"),
        "split": ("restart_dead", "codebook_update"),
        "weight": ("commitment",),
        "latent": ("codebook_size",),
    }
    train_metrics = frozenset({"loss", "recon_loss", "codebook_loss", "commit_loss", "grad_norm"})
    eval_metrics = RECON_METRICS | {"codebook_perplexity", "dead_codes"} | PRIOR_METRICS
    packs = True

    def __init__(
        self, cfg: VQVAEConfig, train_x: Tensor, test_x: Tensor, train_y: Tensor | None = None
    ) -> None:
        c = conv_shape(tuple(train_x.shape[1:]))[0]
        check_batch(cfg.batch_size, len(train_x))
        self.cfg, self.x, self.test_x = cfg, train_x, test_x
        device = train_x.device
        self.enc = vq_encoder(c, cfg.width, cfg.code_dim).to(device)
        self.dec = vq_decoder(c, cfg.width, cfg.code_dim).to(device)
        self.codebook = Codebook(cfg.codebook_size, cfg.code_dim).to(device)
        params = [*self.enc.parameters(), *self.dec.parameters()]
        if cfg.codebook_update == "loss":
            params.append(self.codebook.embed)
        else:
            self.codebook.embed.requires_grad_(False)
        self.opt = torch.optim.Adam(params, lr=cfg.lr, fused=True)
        nets = {"enc": self.enc, "dec": self.dec, "codebook": self.codebook}
        self.engine: Engine = Solo(self, nets, {"opt": self.opt})
        self.epochs_done = 0
        with torch.no_grad():  # the code grid's (H, W), what a sequence folds back into
            self.grid_shape = tuple(self.enc(train_x[:1]).shape[-2:])

    def losses(
        self, x: Tensor, nets: dict | None = None
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """(the recon, commit and codebook losses; the encoder's grid z; its
        code indices), with this model's networks or `nets` (a pack
        member's). The decoder reads z + sg[q - z]: the straight-through
        estimator."""
        nets = nets or {"enc": self.enc, "dec": self.dec, "codebook": self.codebook}
        z = nets["enc"](x)
        idx, q = nets["codebook"](z)
        losses = {
            "recon_loss": F.mse_loss(nets["dec"](z + (q - z).detach()), x),
            "commit_loss": F.mse_loss(z, q.detach()),
            "codebook_loss": F.mse_loss(q, z.detach()),
        }
        return losses, z, idx

    def _loss(self, nets: dict, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        parts, z, idx = self.losses(x, nets)
        loss = parts["recon_loss"] + self.cfg.commitment * parts["commit_loss"]
        if self.cfg.codebook_update == "loss":
            loss = loss + parts["codebook_loss"]
        return loss, {"loss": loss, **parts, "z": z, "idx": idx}

    def _step(self, x: Tensor) -> dict[str, Tensor]:
        out = self.engine.step("opt", self._loss, x)
        z, idx = out.pop("z"), out.pop("idx")
        if self.cfg.codebook_update == "ema":
            self.engine.update("codebook", lambda book: ema_update(book, z, idx, self.cfg.decay))
        # scatter_add_, not bincount: bincount sizes its output from the data (a sync)
        flat = idx.flatten(-3)
        self.usage.scatter_add_(-1, flat, torch.ones_like(flat, dtype=self.usage.dtype))
        return out

    def train_epoch(self) -> dict[str, Tensor]:
        # this epoch's code usage, one row per member of a seed pack
        self.usage = torch.zeros(*self.engine.lead, self.cfg.codebook_size, device=self.x.device)
        out = epoch_means(self.engine, self.x, self.cfg.batch_size, self._step)
        if self.cfg.restart_dead:
            self.restart_dead()
        self.epochs_done += 1
        return out

    @torch.no_grad()
    def restart_dead(self) -> None:
        """Entries no training position chose this epoch take the encoder
        outputs of a random training batch."""
        e, device, b = self.engine, self.x.device, self.cfg.batch_size
        idx = e.order(lambda g: torch.randint(len(self.x), (b,), device=device, generator=g))
        z = e.call("enc", self.x[idx])
        rows, size = z.shape[-4] * z.shape[-2] * z.shape[-1], self.cfg.codebook_size
        pick = e.draw(lambda g: torch.randint(rows, (size,), device=device, generator=g))
        e.update("codebook", lambda book: restart(book, self.usage == 0, z, pick))

    def codes(self, x: Tensor) -> Tensor:
        """Code indices (N, H, W)."""
        return batched(lambda b: self.codebook.quantise(self.enc(b))[0], x)

    def code_sequences(self, x: Tensor) -> Tensor:
        return self.codes(x).flatten(1)

    def code_vocab(self) -> int:
        return self.cfg.codebook_size

    def decode_sequences(self, codes: Tensor) -> Tensor:
        grid = codes.reshape(len(codes), *self.grid_shape)
        return batched(self.dec, self.codebook.embed[grid].permute(0, 3, 1, 2))

    def encode_latent(self, x: Tensor) -> Tensor:
        return self.codebook.quantise(self.enc(x))[1]

    def decode_latent(self, z: Tensor) -> Tensor:
        return self.dec(z)

    @torch.inference_mode()
    def evaluate(self) -> dict[str, float]:
        counts = torch.bincount(self.codes(self.test_x).flatten(), minlength=self.cfg.codebook_size)
        return {
            **recon_metrics(self.reconstruct, self.x, self.test_x),
            "codebook_perplexity": usage_perplexity(counts),
            "dead_codes": float((counts == 0).float().mean()),
        }

    @torch.inference_mode()
    def sample(
        self, n: int, generator: torch.Generator | None = None, sampler: str | None = None
    ) -> Tensor:
        """`histogram`: each grid position drawn from the training set's codes
        there; `prior`: grids drawn from the learned prior."""
        if sampler == "prior":
            return self.prior_samples(n, generator)
        codes = self.code_sequences(self.x)  # (N, H*W)
        hist = F.one_hot(codes, self.cfg.codebook_size).sum(0).float()  # (H*W, K)
        drawn = torch.multinomial(hist, n, replacement=True, generator=generator)  # (H*W, n)
        return self.decode_sequences(drawn.t())

    def state_dict(self) -> dict:
        return {
            "enc": self.enc.state_dict(),
            "dec": self.dec.state_dict(),
            "codebook": self.codebook.state_dict(),
            "opt": self.opt.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.enc.load_state_dict(state["enc"])
        self.dec.load_state_dict(state["dec"])
        self.codebook.load_state_dict(state["codebook"])
        self.opt.load_state_dict(state["opt"])
