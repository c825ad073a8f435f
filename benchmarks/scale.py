"""How a study's driver grows with its number of trials: one study of N
nearly free trials per size, on a local Ray, measured inside the driver.

    python benchmarks/scale.py [--trials 100 300 1000] [--concurrent 2] [--address ADDR]

The study is gan_stability's search (Optuna's TPE over its settings, one
seed each) with the MLP: each trial trains one epoch on 256 images and
scores 100 samples once, so what grows is the harness's own work. Per size
it prints the driver's peak resident memory, its CPU seconds per trial, the
seconds from one trial's end
to the next one's start on the same slot (median and p95, from the trials'
own clocks), Tune's saves of its experiment state (how many, the mean and
the last one's seconds, the state's size) and the end tables' seconds (the
MLflow queries and summaries after the last trial). Then each figure per
trial against the smallest size's: a ratio near 1 means it grows linearly
with the trials (memory: the growth over the smallest size's peak).
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import study_clock  # noqa: E402

STUDY = "gan_stability"
TINY = {"arch": "mlp", "epochs": "1", "eval_every": "1", "train_size": "256", "eval_samples": "100"}


@dataclass
class Timed:
    """Seconds of each call of a wrapped function."""

    seconds: list[float] = field(default_factory=list)


@contextmanager
def timed(owner: object, name: str) -> Iterator[Timed]:
    """owner.name wrapped to time each call, for the block."""
    original, out = getattr(owner, name), Timed()

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            out.seconds.append(time.perf_counter() - t0)

    setattr(owner, name, wrapper)
    try:
        yield out
    finally:
        setattr(owner, name, original)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


@contextmanager
def peak_rss() -> Iterator[Callable[[], float]]:
    """The driver's peak resident memory (MB) over the block, sampled 5 times a second."""
    peak, done = [rss_mb()], threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0]
    finally:
        done.set()
        thread.join()


def gaps(trials, slots: int) -> list[float]:
    """Seconds from a trial's end to the next one's start on its slot."""
    return [
        cur["entered_at"] - prev["ended_at"]
        for slot in study_clock.slots_of(trials, slots)
        for prev, cur in zip(slot, slot[1:], strict=False)
    ]


def one_size(n: int, concurrent: int, root: Path, address: str | None = None) -> dict:
    """A study of n one-seed trials in this process; the driver's figures."""
    from ray.tune.execution.tune_controller import TuneController

    from study import StudyRequest
    from study.runner import api

    request = StudyRequest(
        STUDY, num_samples=n, seeds=1, confirm=0, sets=dict(TINY),
        max_concurrent=concurrent, address=address, storage=str(root / "runs"),
        tracking_uri=f"sqlite:///{root}/mlflow-{n}.db", name=f"scale-{n}",
    )  # fmt: skip
    cpu0, t0 = time.process_time(), time.perf_counter()
    with (
        timed(TuneController, "save_to_dir") as saves,
        timed(api, "summarise") as tables,
        peak_rss() as peak,
    ):
        result = api.run_study(request)
        top = peak()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    if len(result.trials) != n:
        sys.exit(f"scale: {len(result.trials)} of {n} trials ended")
    between = gaps(result.trials, concurrent)
    state = glob.glob(str(root / "runs" / f"scale-{n}" / "experiment_state-*.json"))
    return {
        "trials": n,
        "wall_s": wall,
        "peak_rss_mb": top,
        "cpu_s": cpu,
        "cpu_s_per_trial": cpu / n,
        "gap_p50_s": statistics.median(between) if between else float("nan"),
        "gap_p95_s": statistics.quantiles(between, n=20)[18] if len(between) > 1 else 0.0,
        "state_saves": len(saves.seconds),
        "save_mean_s": statistics.fmean(saves.seconds) if saves.seconds else 0.0,
        "save_total_s": sum(saves.seconds),
        "save_last_s": saves.seconds[-1] if saves.seconds else 0.0,
        "state_kb": os.path.getsize(state[0]) / 1024 if state else 0.0,
        "end_tables_s": sum(tables.seconds),
    }


def growth(rows: list[dict], rss_before: float) -> dict[str, float]:
    """Each figure per trial at the largest size over the smallest's (peak
    memory: what the study added to the process, rss_before MB)."""
    first, last = rows[0], rows[-1]

    def ratio(key: str, per_trial: bool = True, base: float = 0.0) -> float:
        a, b = first[key] - base, last[key] - base
        if per_trial:
            a, b = a / first["trials"], b / last["trials"]
        return b / a if a > 0 else float("nan")

    return {
        "peak_rss_mb": ratio("peak_rss_mb", base=rss_before),
        "cpu_s_per_trial": ratio("cpu_s_per_trial", per_trial=False),
        "gap_p50_s": ratio("gap_p50_s", per_trial=False),
        "save_mean_s": ratio("save_mean_s"),
        "state_kb": ratio("state_kb"),
        "end_tables_s": ratio("end_tables_s"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, nargs="+", default=[100, 300, 1000])
    p.add_argument("--concurrent", type=int, default=2, help="trials at once")
    p.add_argument("--address", help="a running Ray to join (default: a local one per size)")
    args = p.parse_args(argv)
    if any(n < 2 for n in args.trials):
        p.error("--trials: at least 2 each")
    from study.runner.lean_start import skip_here

    skip_here()  # as the CLI's driver: jsonschema without the IRI grammars
    from study.runner import api  # noqa: F401  (its imports before the first measurement)

    rss_before = rss_mb()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in sorted(args.trials):
            print(f"{n} trials ...", file=sys.stderr, flush=True)
            rows.append(one_size(n, args.concurrent, Path(d), args.address))
    for r in rows:
        print(
            " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
        )
    if len(rows) > 1:
        grown = growth(rows, rss_before)
        print(f"per trial, {rows[-1]['trials']} trials against {rows[0]['trials']} (1.0: linear):")
        print(" ".join(f"{k}=x{v:.2f}" for k, v in grown.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
