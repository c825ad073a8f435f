"""A seed's course over its evaluations: the mode histogram and how it
moved, the collapse rule's verdict at each evaluation, and the persistent
vectors of its sigma0 measurements. What it keeps is plain data, saved in
the trial's checkpoints, so a resumed trial judges its whole course."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from models import Family
from scoring.modes import ModeCounts, ModeTrack
from scoring.outcomes import Timeline, collapse_reason, final_outcome
from scoring.registry import mode_floor
from scoring.spectral import TopSingular
from study.tracking.store import MODE_METRICS_MAX, MODE_SHARE


def share_names(k: int) -> list[str]:
    """The metric names of K modes' shares, zero-padded so they sort in order."""
    width = len(str(k - 1))
    return [f"{MODE_SHARE}{i:0{width}d}" for i in range(k)]


@dataclass
class Course:
    seed: int
    timeline: Timeline = field(default_factory=Timeline)
    modes: ModeTrack | None = None
    shares: dict[str, list[float]] = field(default_factory=dict)  # epoch -> shares (many modes)
    spectral: TopSingular = field(init=False)

    def __post_init__(self) -> None:
        self.spectral = TopSingular()

    def modes_seen(self, epoch: int, counts: ModeCounts, dataset: str, device: str) -> dict:
        """The metrics of this evaluation's mode histogram: each mode's share
        (when there are few modes) and the dynamics since the last one."""
        if self.modes is None:
            self.modes = ModeTrack(floor=mode_floor(dataset, counts.n, device))
        out: dict[str, float] = self.modes.step(counts)
        shares = counts.shares.tolist()
        if len(shares) <= MODE_METRICS_MAX:
            out |= dict(zip(share_names(len(shares)), shares, strict=True))
        else:
            self.shares[str(epoch)] = shares
        return out

    def judge(self, family: Family, epoch: int, metrics: dict[str, float], n_modes: int) -> None:
        """The family's collapse rules on this evaluation."""
        self.timeline.add(epoch, collapse_reason(type(family).collapse_rules, metrics, n_modes))

    @property
    def hopping(self) -> bool:
        return self.modes is not None and self.modes.hopping

    def end(self, diverged: str | None) -> tuple[str, str]:
        """(outcome, reason) at the seed's last epoch."""
        hopped = ""
        if self.hopping:
            hops = [e for e, h in zip(self.timeline.epochs[1:], self.modes.hops, strict=True) if h]
            hopped = "hopped between modes at epochs " + ", ".join(map(str, hops))
        return final_outcome(diverged, self.timeline, hopped)

    def summary(self) -> dict[str, Any]:
        """What the seed's result and tags record of its course."""
        first = self.timeline.collapse_epoch
        return {
            "collapse_epoch": float("nan") if first is None else float(first),
            "recovered": float(self.timeline.recovered),
            # no mode histogram (a family that draws no samples): hopping does not apply
            "hopping": float("nan") if self.modes is None else float(self.hopping),
        }

    def tags(self, epoch: int) -> dict[str, str]:
        """The course tags of a seed that ended at `epoch`."""
        first = self.timeline.collapse_epoch
        tags = {
            "collapse_epoch": "none" if first is None else str(first),
            "ended_epoch": str(epoch),
            "recovered": str(self.timeline.recovered).lower(),
        }
        if self.modes is not None:
            tags["hopping"] = str(self.hopping).lower()
        return tags

    def state(self) -> dict[str, Any]:
        return {
            "timeline": self.timeline.state(),
            "modes": None if self.modes is None else asdict(self.modes),
            "shares": self.shares,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.timeline = Timeline(**state["timeline"])
        self.modes = None if state["modes"] is None else ModeTrack(**state["modes"])
        self.shares = state["shares"]
