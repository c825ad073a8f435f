"""A population member of Tune's own for the meeting test, in a module of
its own: Ray's workers import the module a trainable is defined in, and
this one imports nothing but Ray (tests/test_population.py imports torch,
MLflow and the models: seconds of each worker's start)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def member(config: dict) -> None:
    """A population member of Tune's own: `objective` x + step at each step,
    a checkpoint each time; the one that `ends` leaves after its first step,
    once the others wait at the meeting of step 2."""
    from ray import tune

    start = 1
    if (checkpoint := tune.get_checkpoint()) is not None:
        with checkpoint.as_directory() as d:
            start = int((Path(d) / "step").read_text()) + 1
    for step in range(start, 4):
        if config["ends"] and step == 2:
            time.sleep(3)  # the others have reached step 2 and wait
            return
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "step").write_text(str(step))
            result = {"running_epoch": step, "objective": config["x"] + step}
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
