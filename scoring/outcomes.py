"""How a trial ends, defined once: the outcome names in display order, their
colours, the divergence rule, how a family's collapse rules combine, and a
run's evaluations judged over time (when it collapsed, whether it had
learned first, whether it recovered). The collapse rules themselves belong
to the families (models.family.CollapseRule)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

OUTCOMES = ("ok", "collapsed", "diverged", "stopped", "failed")
RUNNING = "running"  # a trial's result before its last epoch
COLOURS = {
    "ok": "#2a9d8f", "collapsed": "#e9c46a", "diverged": "#e76f51", "stopped": "#8d99ae",
    "failed": "#6d597a",
}  # fmt: skip
SCORED = ("ok", "collapsed", "stopped")  # outcomes whose metric values mean something


def ended(outcome: str | None) -> str:
    """The outcome of a trial that has ended: one still `running` when it
    ended was stopped early (by a scheduler); none at all means it failed."""
    if outcome is None:
        return "failed"
    return "stopped" if outcome == RUNNING else outcome


def seed_results(result: dict | None) -> list[dict]:
    """The per-seed results a trial reported: a seed pack's members, or the
    trial's own result (one seed)."""
    result = result or {}
    return result.get("members") or [result]


def divergence(metrics: dict[str, float], max_loss: float) -> str | None:
    """Why training metrics count as diverged, or None: a non-finite value,
    or a loss whose magnitude exceeds max_loss."""
    for k, v in metrics.items():
        if not math.isfinite(v):
            return f"non-finite {k}"
        if "loss" in k and abs(v) > max_loss:
            return f"|{k}| = {abs(v):.3g} exceeds max_loss {max_loss:g}"
    return None


def collapse_reason(
    rules: Sequence[Callable[[dict[str, float], int], str | None]],
    metrics: dict[str, float],
    n_modes: int,
) -> str | None:
    """Why an evaluation counts as collapsed by the first of a family's
    collapse rules that holds (models.family.CollapseRule), or None."""
    return next((r for rule in rules if (r := rule(metrics, n_modes)) is not None), None)


@dataclass
class Timeline:
    """A run's evaluations judged one by one: the epoch of each and the
    collapse rule's reason there (None: not collapsed). Plain lists, so a
    checkpoint holds it."""

    epochs: list[int] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)

    def add(self, epoch: int, reason: str | None) -> None:
        self.epochs.append(epoch)
        self.reasons.append(reason)

    @property
    def collapse_epoch(self) -> int | None:
        """The first evaluation at which the rule held once the run had been
        above it (the first evaluations of a run still learning do not
        count); for a run never above it, its first evaluation."""
        above = False
        for epoch, reason in zip(self.epochs, self.reasons, strict=True):
            if reason is None:
                above = True
            elif above:
                return epoch
        return self.epochs[0] if self.epochs and not above else None

    @property
    def learned(self) -> bool:
        """Whether any evaluation was above the rule."""
        return any(r is None for r in self.reasons)

    @property
    def recovered(self) -> bool:
        """Whether an evaluation after the first collapse no longer met the rule."""
        first = self.collapse_epoch
        return first is not None and any(
            r is None for e, r in zip(self.epochs, self.reasons, strict=True) if e > first
        )

    def story(self) -> str:
        """What happened, and when, in a few words."""
        first = self.collapse_epoch
        if first is None:
            return ""
        last = self.reasons[-1]
        if last is None:
            back = next(
                e for e, r in zip(self.epochs, self.reasons, strict=True) if e > first and r is None
            )
            return f"collapsed at epoch {first}, recovered by epoch {back}"
        if not self.learned:
            return f"never learned: collapsed from the first evaluation (epoch {first}) on"
        again = " (recovered in between)" if self.recovered else ""
        return f"learned, then collapsed at epoch {first}{again}"

    def state(self) -> dict[str, list]:
        return {"epochs": list(self.epochs), "reasons": list(self.reasons)}


def final_outcome(diverged: str | None, timeline: Timeline, hopped: str = "") -> tuple[str, str]:
    """(outcome, reason) of a run's last epoch: `diverged` is why it
    diverged (None: it did not), `timeline` its evaluations so far, `hopped`
    a note when it hopped between modes. The names are OUTCOMES'; the
    reason says what happened and when."""
    story = timeline.story()
    notes = "; ".join(x for x in (story, hopped) if x)
    if diverged is not None:
        return "diverged", "; ".join(x for x in (diverged, notes) if x)
    last = timeline.reasons[-1] if timeline.reasons else None
    if last is not None:
        return "collapsed", f"{last} ({notes})"
    return "ok", notes
