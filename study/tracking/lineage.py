"""Population-based training's lineage in MLflow. When PBT clones a member
into another trial (an exploit), that trial's runs so far end and new child
runs start, each naming the run it continues (`pbt_parent`), its
`pbt_generation` and the epoch it continues from (`pbt_epoch`), with the new
settings as params: no param is ever rewritten, and each run's settings held
for every epoch it logged. The lineage rides in the checkpoint, so a trial
tells a clone (another trial's state) from its own retry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PARENT, GENERATION, FROM_EPOCH = "pbt_parent", "pbt_generation", "pbt_epoch"
# a run whose trial was cloned over: its trial's id moves to this tag, so the
# trial's own runs (retries, ends, tables) are its latest generation's alone
REPLACED_TRIAL = "pbt_replaced_trial"


@dataclass(frozen=True)
class Lineage:
    """Where a trial's runs continue from: nothing (generation 0), or the
    runs of the state it cloned (one per member), at `from_epoch`."""

    generation: int = 0
    parents: tuple[str, ...] = ()
    from_epoch: int = 0
    cloned: bool = False  # this start continues another trial's state

    @classmethod
    def of(cls, state: dict[str, Any] | None, trial_id: str) -> Lineage:
        """The lineage of a trial starting from `state` (its checkpoint):
        its own saved lineage on a retry; a new generation when the state is
        another trial's (PBT cloned it in)."""
        saved = (state or {}).get("lineage")
        if saved is None:
            return cls()
        if saved["trial_id"] == trial_id:
            return cls(saved["generation"], tuple(saved["parents"]), saved["from_epoch"])
        return cls(saved["generation"] + 1, tuple(saved["runs"]), int(state["epoch"]), True)

    def params(self, member: int) -> dict[str, Any]:
        """The lineage params of a member's run (none before any clone)."""
        if not self.parents:
            return {GENERATION: self.generation}
        return {
            GENERATION: self.generation,
            PARENT: self.parents[member],
            FROM_EPOCH: self.from_epoch,
        }

    def saved(self, trial_id: str, runs: list[str]) -> dict[str, Any]:
        """What a checkpoint holds of it: a clone of it continues `runs`."""
        return {
            "trial_id": trial_id,
            "generation": self.generation,
            "parents": list(self.parents),
            "from_epoch": self.from_epoch,
            "runs": runs,
        }


def same_lineage(params: dict[str, str], lineage_params: dict[str, Any]) -> bool:
    """Whether a run's logged params are of this lineage step (a run from
    before PBT logged none: generation 0)."""
    return all(
        params.get(k, "0" if k == GENERATION else "") == str(v) for k, v in lineage_params.items()
    )
