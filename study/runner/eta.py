"""When a phase of a study will end, from the trials measured so far.

Each trial's whole duration is known once it ends; a running trial's is
projected from its own pace (seconds so far over epochs done), so a slow
configuration counts as slow from its first epoch. The trials still to start
are then placed, as Tune does, on whichever of the `slots` trial places
frees first, each taking a duration drawn from those measured: the fastest,
the mean and the slowest, which give the low, middle and high end times.
Before any trial has reported an epoch there is nothing to measure, and no
estimate. With a few trials measured the range is wide, as it should be.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Running:
    """A trial under way: `seconds` since it started, `epoch` of `epochs` done."""

    seconds: float
    epoch: int
    epochs: int

    @property
    def total(self) -> float | None:
        """Its projected whole duration; None before its first epoch."""
        if self.epoch < 1:
            return None
        return self.seconds / self.epoch * max(self.epochs, self.epoch)

    @property
    def left(self) -> float | None:
        total = self.total
        return None if total is None else max(0.0, total - self.seconds)


@dataclass(frozen=True)
class Eta:
    """Seconds from now to the phase's end: the low, middle and high
    estimate, from the durations of `trials` trials (ended or projected)."""

    low: float
    mid: float
    high: float
    trials: int


def _finish(running_left: Sequence[float], queued: int, duration: float, slots: int) -> float:
    """When the last trial ends: the running ones hold their places until
    done, and each queued one starts on the place that frees first."""
    places = [*running_left, *[0.0] * max(0, slots - len(running_left))]
    heapq.heapify(places)
    for _ in range(queued):
        heapq.heappush(places, heapq.heappop(places) + duration)
    return max(places)


def estimate(
    finished: Sequence[float], running: Sequence[Running], queued: int, slots: int
) -> Eta | None:
    """The time left for `queued` trials still to start and the `running`
    ones, `slots` at a time, given the `finished` trials' durations (s)."""
    samples = [*finished, *(r.total for r in running if r.total is not None)]
    if not samples:
        return None if queued or running else Eta(0.0, 0.0, 0.0, 0)
    low, mid, high = min(samples), sum(samples) / len(samples), max(samples)
    # one that has not reported an epoch yet: a typical trial, all of it left
    left = [max(0.0, mid - r.seconds) if r.left is None else r.left for r in running]
    ends = (_finish(left, queued, d, max(1, slots)) for d in (low, mid, high))
    return Eta(*ends, trials=len(samples))


def population(elapsed: float, progress: Sequence[Running], ended: Sequence[bool]) -> Eta | None:
    """A PBT population's time left: its members pause and resume at every
    meeting, so no member's own pace holds; the population's pace in
    trial-epochs since the phase began does (an ended member's are done)."""
    done = sum(
        r.epochs if end else min(r.epoch, r.epochs) for r, end in zip(progress, ended, strict=True)
    )
    total = sum(r.epochs for r in progress)
    if done < 1:
        return None
    left = elapsed / done * max(0, total - done)
    return Eta(
        left, left, left, trials=sum(r.epoch > 0 or e for r, e in zip(progress, ended, strict=True))
    )


def clock(seconds: float) -> str:
    """3h05m, 4m10s, 12s."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def describe(eta: Eta | None) -> str:
    """The heartbeat's words for it: the middle estimate, the range when it
    is one, and how many trials it rests on."""
    if eta is None:
        return "ETA after the first epoch"
    spread = "" if clock(eta.low) == clock(eta.high) else f"{clock(eta.low)}-{clock(eta.high)}, "
    return f"ETA {clock(eta.mid)} ({spread}from {eta.trials} trial{'' if eta.trials == 1 else 's'})"
