"""VQ-VAE family (van den Oord et al. 2017): a convolutional encoder to a
grid of code_dim vectors, each replaced by its nearest codebook entry, the
decoder's gradient passed straight through to the encoder; loss =
reconstruction + ||sg[z_e] - e||^2 (or exponential-moving-average codebook
updates instead) + commitment * ||z_e - sg[e]||^2. Dead entries (unused over
an epoch) can be re-seeded from encoder outputs.

Samples decode code grids drawn position by position from the training set's
code histogram at each position: a weak prior (the paper trains a PixelCNN
over the grids), so the sample metrics measure the codebook and that prior
together, not what a learned prior would give."""

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
)
from models.config import param
from models.family import GenerativeFamily


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
    lr: float = param(1e-3, low=1e-6, high=1.0, help="Adam learning rate")
    batch_size: int = param(128, low=2, high=65536)


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

    @torch.no_grad()
    def ema_update(self, z: Tensor, idx: Tensor, decay: float, eps: float = 1e-5) -> None:
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        # scatter, not F.one_hot: one_hot checks its indices on the host (a sync)
        onehot = torch.zeros(len(flat), len(self.embed), device=flat.device, dtype=flat.dtype)
        onehot.scatter_(1, idx.reshape(-1, 1), 1.0)
        self.ema_count.lerp_(onehot.sum(0), 1 - decay)
        self.ema_sum.lerp_(onehot.t() @ flat, 1 - decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + eps) / (n + len(self.embed) * eps) * n
        self.embed.copy_(self.ema_sum / smoothed[:, None])

    @torch.no_grad()
    def restart(self, dead: Tensor, z: Tensor) -> None:
        """Entries `dead` (bool (K,)) take random encoder vectors of z (a
        candidate drawn for every entry and kept where dead: no host sync)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        fresh = flat[torch.randint(len(flat), (len(self.embed),), device=z.device)]
        column = dead[:, None]
        self.embed.copy_(torch.where(column, fresh, self.embed))
        self.ema_sum.copy_(torch.where(column, fresh, self.ema_sum))
        self.ema_count.copy_(torch.where(dead, 1.0, self.ema_count))


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


class VQVAE(LatentCoder, GenerativeFamily):
    Config = VQVAEConfig
    train_metrics = frozenset({"loss", "recon_loss", "codebook_loss", "commit_loss"})
    eval_metrics = RECON_METRICS | {"codebook_perplexity", "dead_codes"}

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
        self.usage = torch.zeros(cfg.codebook_size, device=device)  # this epoch's

    def losses(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """(the recon, commit and codebook losses; the encoder's grid z; its
        code indices). The decoder reads z + sg[q - z]: the straight-through
        estimator."""
        z = self.enc(x)
        idx, q = self.codebook.quantise(z)
        losses = {
            "recon_loss": F.mse_loss(self.dec(z + (q - z).detach()), x),
            "commit_loss": F.mse_loss(z, q.detach()),
            "codebook_loss": F.mse_loss(q, z.detach()),
        }
        return losses, z, idx

    def _step(self, x: Tensor) -> dict[str, Tensor]:
        parts, z, idx = self.losses(x)
        loss = parts["recon_loss"] + self.cfg.commitment * parts["commit_loss"]
        if self.cfg.codebook_update == "loss":
            loss = loss + parts["codebook_loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.cfg.codebook_update == "ema":
            self.codebook.ema_update(z.detach(), idx, self.cfg.decay)
        # index_add_, not bincount: bincount sizes its output from the data (a sync)
        flat = idx.flatten()
        self.usage.index_add_(0, flat, torch.ones_like(flat, dtype=self.usage.dtype))
        return {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}

    def train_epoch(self) -> dict[str, Tensor]:
        self.usage.zero_()
        out = epoch_means(self.x, self.cfg.batch_size, self._step)
        if self.cfg.restart_dead:
            self.restart_dead()
        return out

    @torch.no_grad()
    def restart_dead(self) -> None:
        """Entries no training position chose this epoch take the encoder
        outputs of a random training batch."""
        batch = self.x[torch.randint(len(self.x), (self.cfg.batch_size,), device=self.x.device)]
        self.codebook.restart(self.usage == 0, self.enc(batch))

    def codes(self, x: Tensor) -> Tensor:
        """Code indices (N, H, W)."""
        return batched(lambda b: self.codebook.quantise(self.enc(b))[0], x)

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
        """Each grid position drawn from the training set's codes there."""
        codes = self.codes(self.x)  # (N, H, W)
        k = self.cfg.codebook_size
        hist = F.one_hot(codes.flatten(1), k).sum(0).float()  # (H*W, K)
        drawn = torch.multinomial(hist, n, replacement=True, generator=generator)  # (H*W, n)
        grid = drawn.t().reshape(n, *codes.shape[1:])
        q = self.codebook.embed[grid].permute(0, 3, 1, 2)
        return batched(self.dec, q)

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
