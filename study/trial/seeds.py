"""What a seed sets, kept apart: the weight initialisation, the data's order,
the training noise (latents, reparameterisation, diffusion steps, Gumbel
noise) and the draw of samples an evaluation scores.

By default each source follows the trial's `seed` (repeat i: seed + i) and
training draws its order and its noise from one stream, exactly as before the
sources were split, so no earlier number changes. Once a study sets any
source (`--set data_seed=3`, `--sweep eval_seed=0,1,2`, or an axis), every
trial of it gives the data and the noise a stream each, seeded from their own
source, so a source can vary while the others stay fixed (Bouthillier et al.
2021). A source the study leaves alone still follows `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from study.studies.spec import SEED_SOURCES as SOURCES

FOLLOWS = -1  # a source's setting that follows the trial's seed
_STREAM = {"data_seed": 1, "sample_seed": 2, "eval_seed": 3}  # one stream a source


def stream_seed(seed: int, source: str, *more: int) -> int:
    """A seed for `source`'s own generator: NumPy's SeedSequence of (seed,
    source, more), so sources given the same number still draw apart."""
    return int(np.random.SeedSequence([seed, _STREAM[source], *more]).generate_state(1)[0])


@dataclass(frozen=True)
class SeedSources:
    init_seed: int
    data_seed: int
    sample_seed: int
    eval_seed: int
    split: bool  # the data and the noise draw from streams of their own

    @classmethod
    def of(cls, settings: object, seed: int) -> SeedSources:
        """The sources of one seed (`seed`: the trial's seed + the repeat)
        from the trial settings' init_seed, data_seed, ... (FOLLOWS or a number)."""
        given = {s: getattr(settings, s) for s in SOURCES}
        split = any(v != FOLLOWS for v in given.values())
        return cls(**{s: seed if v == FOLLOWS else v for s, v in given.items()}, split=split)

    def params(self) -> dict[str, int]:
        """What each run records: every source as a number."""
        return {s: getattr(self, s) for s in SOURCES}

    def seed_training(self, device: torch.device) -> torch.Generator | None:
        """Right after the members' weights are built (from init_seed): the
        global stream becomes the noise's; returns the data's own generator,
        or None when order and noise share one stream (nothing set apart)."""
        if not self.split:
            return None
        torch.manual_seed(stream_seed(self.sample_seed, "sample_seed"))
        return torch.Generator(device).manual_seed(stream_seed(self.data_seed, "data_seed"))
