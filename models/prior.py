"""A learned prior over discrete codes, and the sampler that draws from it.

The chapter's recipe for sampling a discrete VAE or a VQ-VAE: encode the
training set, each image becoming a sequence of integer codes, train a
transformer on those sequences by next-code prediction, then generate a
sequence code by code and decode it. `CodePrior` is that transformer, small
(2 layers, width 64): a causal transformer rather than a PixelCNN because it
is what the chapter teaches, and because one model serves both code shapes,
a VQ-VAE's grid (read in raster order) and a discrete VAE's d codes, where a
masked convolution needs a grid.

`PriorSampling` gives a family with discrete codes the `prior` sampler beside
its own (the VQ-VAE's per-position histogram, the discrete VAE's uniform
draw), which stays the main one. The prior is trained after the autoencoder,
at the trial's final evaluation (`final_stage`), on the training set's codes
in `prior_epochs` passes, and scored there; its randomness comes from its own
fixed seed, so the autoencoder's training streams are untouched.
"""

from __future__ import annotations

import time
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PRIOR_SEED = 0  # the prior's initial weights and batch order
# what a family with a prior logs at each evaluation
PRIOR_METRICS = frozenset({"prior_nll", "prior_seconds"})
PRIOR_BATCH = 128
PRIOR_LR = 3e-3


class CodePrior(nn.Module):
    """p(c_1 .. c_L) = prod_i p(c_i | c_<i): a causal transformer over code
    sequences of length `length` with `vocab` values, a start token first."""

    def __init__(self, vocab: int, length: int, width: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.vocab, self.length = vocab, length
        self.embed = nn.Embedding(vocab + 1, width)  # the last id is the start token
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, nhead=4, dim_feedforward=2 * width, dropout=0.0, batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, codes: Tensor) -> Tensor:
        """Logits (N, L', vocab) of each position given the ones before it,
        for the codes (N, L') shifted right behind the start token."""
        start = torch.full_like(codes[:, :1], self.vocab)
        inputs = torch.cat([start, codes[:, :-1]], 1)
        n = inputs.shape[1]
        h = self.embed(inputs) + self.position[:n]
        mask = nn.Transformer.generate_square_subsequent_mask(n, device=codes.device)
        return self.head(self.body(h, mask=mask, is_causal=True))

    @torch.no_grad()
    def nll(self, codes: Tensor) -> float:
        """Negative log-likelihood per code, nats, averaged over codes (N, L)."""
        total = sum(
            F.cross_entropy(self(c).flatten(0, 1), c.flatten(), reduction="sum").item()
            for c in codes.split(1000)
        )
        return total / codes.numel()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, L) codes drawn position by position."""
        device = self.position.device
        codes = torch.zeros(n, 0, dtype=torch.long, device=device)
        for _ in range(self.length):
            step = torch.cat([codes, codes.new_zeros(n, 1)], 1)  # the new slot is not read
            probs = self(step)[:, -1].softmax(-1)
            codes = torch.cat([codes, torch.multinomial(probs, 1, generator=generator)], 1)
        return codes


def fit_prior(codes: Tensor, vocab: int, epochs: int) -> CodePrior:
    """A CodePrior trained on codes (N, L) for `epochs` passes with Adam, from
    its own seed (the caller's random streams are left as they were)."""
    codes = codes.detach().clone().long()  # a normal tensor, even from inference mode
    devices = [codes.device] if codes.is_cuda else []
    with (
        torch.random.fork_rng(devices=devices),
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.device(codes.device),  # the prior's tensors where the codes are
    ):
        torch.manual_seed(PRIOR_SEED)
        prior = CodePrior(vocab, codes.shape[1])
        opt = torch.optim.Adam(prior.parameters(), lr=PRIOR_LR)
        gen = torch.Generator(device=codes.device).manual_seed(PRIOR_SEED)
        for _ in range(epochs):
            order = torch.randperm(len(codes), device=codes.device, generator=gen)
            for batch in codes[order].split(PRIOR_BATCH):
                loss = F.cross_entropy(prior(batch).flatten(0, 1), batch.flatten())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return prior.eval()


class PriorSampling:
    """The `prior` sampler of a family with discrete codes. The family sets
    `base_sampler` (the name of its own sampler) and gives its codes as
    sequences (`code_sequences`), their number of values (`code_vocab`) and
    the way back to data (`decode_sequences`); its config has `prior_epochs`
    (0: no prior, only its own sampler, unnamed as before)."""

    base_sampler: ClassVar[str]

    def code_sequences(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def decode_sequences(self, codes: Tensor) -> Tensor:
        raise NotImplementedError

    def code_vocab(self) -> int:
        raise NotImplementedError

    def samplers(self) -> tuple[str, ...]:
        return (self.base_sampler,) if self.cfg.prior_epochs else ()

    def final_samplers(self) -> tuple[str, ...]:
        return ("prior",) if self.cfg.prior_epochs else ()

    @classmethod
    def is_sampler(cls, name: str) -> bool:
        return name in ("prior", cls.base_sampler)

    def final_stage(self) -> dict[str, float]:
        """Fit the prior to the training codes: prior_nll (held-out codes,
        nats per code) and prior_seconds (the fit); nothing without a prior."""
        if not self.cfg.prior_epochs:
            return {}
        prior = self.learned_prior()
        nll = prior.nll(self.code_sequences(self.test_x))
        return {"prior_nll": nll, "prior_seconds": self._prior_seconds}

    def learned_prior(self) -> CodePrior:
        """The prior fitted to the training codes as they are now: refitted
        once the family has trained since (its counters moved)."""
        key = tuple(getattr(self, c) for c in self.counters)
        if getattr(self, "_prior_key", None) != key:
            t0 = time.perf_counter()
            codes = self.code_sequences(self.x)
            self._prior = fit_prior(codes, self.code_vocab(), self.cfg.prior_epochs)
            self._prior_key, self._prior_seconds = key, time.perf_counter() - t0
        return self._prior

    def prior_samples(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self.decode_sequences(self.learned_prior().sample(n, generator))
