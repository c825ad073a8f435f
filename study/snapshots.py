"""Tune's saved state (trial statuses, checkpoints, the searcher's state),
uploaded whole before the driver goes on.

Tune writes its state to a staging folder and copies it to the storage path
in a background thread, and the next save can overwrite the staging files
while that copy still runs. A driver killed then leaves, in the storage path,
the searcher's state of one moment beside the trials of another: a searcher
ahead of the trials had drawn trials Tune never restores (the resumed phase
ends short of its trials, and every further --resume the same); one behind
them draws them again. `--resume` is only as good as that state, so each save
here waits for its copy to end (no copy is then running when the next save
writes); on a local or shared disk that takes milliseconds."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def upload_whole() -> None:
    """Make every later Tune state save in this process synchronous (once)."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as Manager

    save = Manager.sync_up_experiment_state
    if getattr(save, "uploads_whole", False):
        return

    @functools.wraps(save)
    def whole(self: Any, save_fn: Callable[[], None], force: bool = False, wait: bool = False):
        return save(self, save_fn, force=force, wait=True)

    whole.uploads_whole = True  # type: ignore[attr-defined]
    Manager.sync_up_experiment_state = whole
