"""A trial's own clock: the seconds it spent in each phase, summed over its
attempts (a retry continues the clock saved in its checkpoint), and wall
timestamps of when it entered, started training and ended. Every result
carries it, so the summary's trials.csv shows where a study's time went
(`benchmarks/overhead.py` turns it into a breakdown)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

# in the order a trial goes through them
PHASES = (
    "process_seconds",  # the trial process's start: Ray worker, imports (0 when reused)
    "data_seconds",  # the dataset onto the device, the feature classifier
    "mlflow_seconds",  # the run opened (or found again), its params and tags
    "model_seconds",  # the family built, and restored from a checkpoint on a retry
    "train_seconds",  # the training epochs, their loss reads included
    "eval_seconds",  # evaluations: the family's metrics and the sample metrics
    "log_seconds",  # MLflow writes: metric batches, sample grids, final JSON, closing
    "report_seconds",  # the checkpoint saved and persisted, the result reported to Tune
)
STAMPS = ("entered_at", "started_at", "ended_at")  # wall time (time.time())


class Clock:
    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.stamps: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def stamp(self, name: str) -> None:
        self.stamps[name] = time.time()

    def add(self, saved: dict[str, float]) -> None:
        """Continue an earlier attempt's clock (from its checkpoint)."""
        for k in PHASES:
            self.seconds[k] += saved.get(k, 0.0)

    def as_dict(self) -> dict[str, float]:
        return {**self.seconds, **self.stamps}
