"""Which modes a generator's samples fall in, evaluation after evaluation:
the histogram over classes (images, by the dataset's classifier) or mixture
modes (2-D data, high-quality samples only), how it moved since the last
evaluation, and the noise floor that movement is judged against.

The chapter's picture of mode collapse is a process: the generator cycles
between modes, forgetting the ones it had. `ModeTrack` records that
process; `hopping` names a run that moved beyond the noise floor while
forgetting modes it had held, more than once in a short window."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.distance import jensenshannon

# A hop: the histogram moved more than HOP_FACTOR x the noise floor since the
# previous evaluation and a mode that held at least its uniform share (1/K)
# is no longer covered: forgotten, not a rare class flickering at the
# coverage bar (measured on gan_collapse: counting any lost mode flagged half
# of the steadily learning runs at lr 4e-3, this rule one in twelve). A run
# hops when HOP_EVENTS hops fall within HOP_WINDOW successive evaluations.
HOP_FACTOR = 5.0
HOP_EVENTS = 2
HOP_WINDOW = 4
FLOOR_DRAWS = 64  # pairs of real draws the noise floor averages over
# what every evaluation of a generating family logs of its mode histogram
DYNAMICS = ("modes_lost", "modes_regained", "mode_jsd", "modes_ever", "mode_jsd_floor")


@dataclass(frozen=True)
class ModeCounts:
    """Samples per mode at one evaluation, and the count that makes a mode
    covered (the rule `modes_covered`/`modes_captured` count by)."""

    counts: np.ndarray
    min_count: float
    n: int  # samples scored

    @property
    def shares(self) -> np.ndarray:
        """Share of all samples in each mode (a mixture's low-quality samples
        count nowhere, so its shares may sum to under 1)."""
        return self.counts / max(self.n, 1)

    @property
    def covered(self) -> np.ndarray:
        return self.counts >= self.min_count


def mode_jsd(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2: 0 same, 1 disjoint) between two
    histograms, each normalised; an empty one counts as uniform."""
    p, q = (_normalised(h) for h in (p, q))
    return float(jensenshannon(p, q, base=2) ** 2)


def _normalised(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, dtype=float)
    return h / h.sum() if h.sum() > 0 else np.full_like(h, 1 / len(h))


def noise_floor(labels: np.ndarray, k: int, n: int, seed: int = 0) -> float:
    """The mode_jsd of a perfect generator: the mean JSD between the
    histograms of two draws of n from the real data's modes (`labels`,
    -1 for a point in none), over FLOOR_DRAWS pairs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(FLOOR_DRAWS):
        a, b = (rng.choice(labels, n) for _ in range(2))
        hist = [np.bincount(x[x >= 0], minlength=k) for x in (a, b)]
        out.append(mode_jsd(*hist))
    return float(np.mean(out))


@dataclass
class ModeTrack:
    """A run's mode histograms so far, as plain lists (checkpointed with it)."""

    floor: float
    covered: list[bool] = field(default_factory=list)  # at the last evaluation
    ever: list[bool] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)
    hops: list[bool] = field(default_factory=list)  # one per evaluation after the first

    def step(self, now: ModeCounts) -> dict[str, float]:
        """The dynamics metrics of this evaluation against the last one."""
        covered = now.covered.tolist()
        out = {"mode_jsd_floor": self.floor}
        if self.covered:
            lost = sum(a and not b for a, b in zip(self.covered, covered, strict=True))
            regained = sum(
                b and not a and e for a, b, e in zip(self.covered, covered, self.ever, strict=True)
            )
            jsd = mode_jsd(np.array(self.shares), now.shares)
            major = 1 / len(covered)
            forgot = sum(s >= major and not c for s, c in zip(self.shares, covered, strict=True))
            self.hops.append(jsd > HOP_FACTOR * self.floor and forgot > 0)
            out |= {"modes_lost": lost, "modes_regained": regained, "mode_jsd": jsd}
        self.ever = [a or b for a, b in zip(self.ever or covered, covered, strict=True)]
        self.covered, self.shares = covered, now.shares.tolist()
        return out | {"modes_ever": float(sum(self.ever))}

    @property
    def hopping(self) -> bool:
        return hopping(self.hops)


def hopping(hops: list[bool]) -> bool:
    """Whether HOP_EVENTS hops fall within some HOP_WINDOW successive
    evaluations (`hops`: one flag per evaluation after the first)."""
    flags = np.asarray(hops, dtype=int)
    if len(flags) < HOP_EVENTS:
        return False
    window = min(HOP_WINDOW, len(flags))
    return bool(np.convolve(flags, np.ones(window, dtype=int), "valid").max() >= HOP_EVENTS)
