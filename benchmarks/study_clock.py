"""A whole study timed from outside and from its trials' own clocks; shared by
`throughput.py` and `overhead.py`.

`run(args)` runs `python -m study.run ARGS` in a temporary folder (a sqlite
MLflow store there), sampling the machine's CPU use once a second, and returns
its wall clock, output and trials.csv. `breakdown(run)` splits the study's
core-seconds (wall x slots, the trials at once) into phases: what happens
before the first trial, each trial's own phases (study/clock.py), the gaps
between trials and the tail after the last. Trials are put on slots in the
order they entered, each on the slot that freed up last before it entered.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import pandas as pd

from study.trial.clock import PHASES


@dataclass
class StudyRun:
    out: str  # what the study printed
    launch: float  # time.time() when the command started
    end: float  # and when it exited
    trials: pd.DataFrame  # the study's trials.csv, one row per Tune trial (its clock)
    slots: int  # trials at once, from the study's header
    cpu_mean: float  # share of all cores busy over the run (Linux)
    cpu_median: float  # median second
    seeds: int = 0  # seeds trained (trials.csv's rows: a seed pack's trial has one a seed)

    @property
    def wall(self) -> float:
        return self.end - self.launch


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies summed over all cores."""
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def run(args: list[str]) -> StudyRun:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        first = last = _cpu_times()
        samples = []
        launch = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "study.run", *args, "--storage", f"{tmp}/runs"],
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        while proc.poll() is None:
            time.sleep(1.0)
            now = _cpu_times()
            if now[1] > last[1]:
                samples.append((now[0] - last[0]) / (now[1] - last[1]))
            last = now
        end = time.time()
        out = proc.stdout.read()
        final = _cpu_times()
        if proc.returncode != 0:
            sys.exit(f"study failed with exit code {proc.returncode}:\n{out[-2000:]}")
        seeds = pd.read_csv(glob.glob(f"{tmp}/runs/*/summary/trials.csv")[0])
    # a seed pack's rows share their trial's clock: the clock once per trial
    trials = seeds[seeds["trial_id"].isna() | ~seeds.duplicated("trial_id")]
    slots = int(re.search(r"(\d+) at once", out).group(1))
    mean = (final[0] - first[0]) / (final[1] - first[1])
    median = sorted(samples)[len(samples) // 2] if samples else mean
    return StudyRun(out, launch, end, trials, slots, mean, median, len(seeds))


LABELS = {
    "before": "driver start: CLI imports, checks, Ray's start, MLflow set-up, Tune",
    "process_seconds": "trial processes' start: Ray worker, imports (torch, MLflow, Tune)",
    "data_seconds": "dataset onto the device, feature classifier",
    "mlflow_seconds": "MLflow run opened, params and tags",
    "model_seconds": "model built (restored on a retry)",
    "train_seconds": "training",
    "eval_seconds": "evaluation",
    "log_seconds": "MLflow writes: metrics, sample grids, final JSON",
    "report_seconds": "checkpoint saved and persisted, result reported",
    "untimed": "in the trial, between its timed phases",
    "between": "between trials: last report, Ray's actor reset and scheduling",
    "after": "after the last trial: idle slots in the tail, end tables, shutdown",
}


def slots_of(trials: pd.DataFrame, n: int) -> list[list[pd.Series]]:
    """The trials on n slots in the order they ran: each on the slot that
    freed up last before it entered (overlapping clocks: the earliest to end)."""
    slots: list[list[pd.Series]] = [[] for _ in range(n)]
    for _, t in trials.sort_values("entered_at").iterrows():
        free = [s for s in slots if not s or s[-1]["ended_at"] <= t["entered_at"]]
        slot = (
            max(free, key=lambda s: s[-1]["ended_at"] if s else -1.0)
            if free
            else min(slots, key=lambda s: s[-1]["ended_at"])
        )
        slot.append(t)
    return slots


def breakdown(study: StudyRun) -> pd.DataFrame:
    """Core-seconds by phase; the rows add up to wall x slots."""
    t = study.trials
    secs = {k: float(t[k].sum()) for k in PHASES}
    secs["untimed"] = float((t["ended_at"] - t["entered_at"]).sum()) - sum(
        v for k, v in secs.items() if k != "process_seconds"
    )
    secs["before"] = secs["between"] = secs["after"] = 0.0
    for slot in slots_of(t, study.slots):
        if not slot:
            secs["after"] += study.wall
            continue
        # a first trial's process was started by Tune once the driver was ready
        waited = slot[0]["entered_at"] - study.launch
        started = min(slot[0]["process_seconds"], waited)
        secs["before"] += waited - started
        secs["process_seconds"] -= slot[0]["process_seconds"] - started
        for prev, cur in zip(slot, slot[1:], strict=False):
            secs["between"] += cur["entered_at"] - prev["ended_at"] - cur["process_seconds"]
        secs["after"] += study.end - slot[-1]["ended_at"]
    total = study.wall * study.slots
    rows = [(LABELS[k], secs[k], secs[k] / total) for k in LABELS]
    return pd.DataFrame(rows, columns=["phase", "core_seconds", "share"])


def busy_share(study: StudyRun) -> float:
    """Training and evaluation over all core-seconds."""
    t = study.trials
    return float(t["train_seconds"].sum() + t["eval_seconds"].sum()) / (study.wall * study.slots)


def print_breakdown(study: StudyRun) -> None:
    table = breakdown(study)
    width = max(map(len, table["phase"]))
    print(
        f"where the {study.wall * study.slots:.0f} core-seconds went "
        f"({study.slots} slots x {study.wall:.1f} s wall, {len(study.trials)} trials, "
        f"{int((study.trials['process_seconds'] > 0).sum())} trial processes started):"
    )
    for _, r in table.iterrows():
        print(f"  {r['phase']:<{width}}  {r['core_seconds']:8.1f} s  {r['share']:6.1%}")


if __name__ == "__main__":
    # a module the benchmarks share, not a benchmark: say so, and how to use it
    import argparse

    argparse.ArgumentParser(
        prog="benchmarks/study_clock.py",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="Run benchmarks/throughput.py or benchmarks/overhead.py instead.",
    ).parse_args()
    print("study_clock is a module of throughput.py and overhead.py; see --help")
