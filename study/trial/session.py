"""Where a trial reports and checkpoints: Ray Tune's session in a study, or
this process alone (`LocalSession`: one trial without Ray, for tests and for
debugging a configuration in a notebook)."""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import torch

STATE_FILE = "state.pt"


class TrialSession(Protocol):
    trial_id: str  # names the trial's MLflow run: a retry finds its own run again
    node_id: str
    process_seconds: float  # the process's start to this trial, if its first; else 0

    def restore(self, device: torch.device) -> dict[str, Any] | None:
        """The last checkpointed state, or None on a first attempt."""

    def report(self, result: dict[str, Any], state: dict[str, Any] | None) -> None:
        """Report a result, with the state to continue from (None: no checkpoint)."""


class TuneSession:
    def __init__(self) -> None:
        import ray
        from ray import tune

        self.trial_id = tune.get_context().get_trial_id()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.process_seconds = _process_start_seconds()

    def restore(self, device: torch.device) -> dict[str, Any] | None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=True)

    def report(self, result: dict[str, Any], state: dict[str, Any] | None) -> None:
        from ray import tune

        if state is None:
            tune.report(result)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / STATE_FILE)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))


_process_used = False


def _process_start_seconds() -> float:
    """Seconds from this process's start (the Ray worker's boot, the imports)
    to its first trial; 0 for the later trials of a reused process."""
    global _process_used
    if _process_used:
        return 0.0
    _process_used = True
    import psutil  # Ray's own dependency

    return max(0.0, time.time() - psutil.Process().create_time())


class LocalSession:
    """Results in a list; the checkpoint as bytes in memory, saved and loaded
    exactly as Tune's are."""

    def __init__(self, trial_id: str = "local") -> None:
        self.trial_id, self.node_id = trial_id, "local"
        self.process_seconds = 0.0  # this process was not started for the trial
        self.results: list[dict[str, Any]] = []
        self._state: bytes | None = None

    def restore(self, device: torch.device) -> dict[str, Any] | None:
        if self._state is None:
            return None
        return torch.load(io.BytesIO(self._state), map_location=device, weights_only=True)

    def report(self, result: dict[str, Any], state: dict[str, Any] | None) -> None:
        self.results.append(result)
        if state is not None:
            buf = io.BytesIO()
            torch.save(state, buf)
            self._state = buf.getvalue()
