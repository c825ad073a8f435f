"""`python -m study.run STUDY ...`: run a study as Ray Tune trials, log to MLflow.

Everything a user can get wrong is checked before Ray starts: a mistake ends
with one line on stderr and exit code 2, and nothing is started or written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from datasources import DataError
from models.config import ConfigError
from study.errors import StorageError, UsageError
from study.request import StudyRequest
from study.runner.lean_start import skip_here
from study.runner.prepare import prepare
from study.runner.summary import (
    confirmation_lines,
    format_confirmation,
    format_groups,
    format_table,
    outcome_line,
)
from study.studies import STUDIES, describe_study
from study.studies import defaults as d
from study.tracking.store import TrackingError, ui_url

EXIT_USAGE, EXIT_STORAGE, EXIT_INTERRUPTED = 2, 3, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m study.run", description=__doc__.splitlines()[0])
    add = p.add_argument
    add("study", nargs="?", help="study name (see --list)")
    add(
        "--list",
        action="store_true",
        help="list the studies; with a study: its axes and every setting --set accepts",
    )
    add("--dataset", help="dataset (default: the study's)")
    add("--data-dir", default=d.DATA_DIR, help="folder for torchvision datasets")
    add("--num-samples", type=int, help="configurations to try (default: the study's)")
    add("--seeds", type=int, help="seeds per configuration (default: the study's)")
    add(
        "--pack",
        type=int,
        default=1,
        metavar="K",
        help="train K seeds of a configuration as one fused model in one trial "
        "(a seed pack; default 1: a trial per seed)",
    )
    add("--epochs", type=int, help="shorthand for --set epochs=E")
    add(
        "--confirm",
        type=int,
        metavar="K",
        help="after the search, re-run its K best configurations on fresh seeds "
        "(default: the study's; 0 under --smoke)",
    )
    add("--confirm-seeds", type=int, metavar="S", help="fresh seeds per confirmed configuration")
    add(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a setting (repeatable); a searched key leaves the search",
    )
    add(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="search any setting over these values (repeatable; grid-friendly)",
    )
    add("--search", choices=d.SEARCHES, help="search algorithm (default: the study's)")
    add(
        "--objectives",
        metavar="M1,M2,...",
        help="search several registered metrics at once, each in its registered direction "
        "(Optuna's multi-objective sampler); the end table prints the Pareto front",
    )
    add(
        "--scheduler",
        choices=d.SCHEDULERS,
        default=d.SCHEDULER,
        help="asha: stop poor trials early; pbt, pb2: train a population that clones its best "
        "members and changes their learning rates mid-training (default: none)",
    )
    add("--cpus-per-trial", type=float, default=d.CPUS_PER_TRIAL)
    add("--gpus-per-trial", type=float, default=d.GPUS_PER_TRIAL)
    add(
        "--max-concurrent",
        type=int,
        help="trials at once (default: as many as the cluster's CPUs and GPUs fit)",
    )
    add("--address", help="Ray cluster to join ('auto' for the local one)")
    add(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI "
        "or MLflow's default, sqlite:///mlflow.db)",
    )
    add("--experiment", help="MLflow experiment (default: the study name)")
    add("--storage", default=d.STORAGE, help="folder for Tune state and checkpoints")
    add("--name", help="name of this run's folder under --storage")
    add(
        "--optuna-storage",
        metavar="URL",
        help="database for the searcher's history, e.g. sqlite:///optuna.db or postgresql://... "
        "(default: optuna.db in the run's folder)",
    )
    add(
        "--resume",
        action="store_true",
        help="continue the run named --name (default: the study's latest)",
    )
    add("--smoke", action="store_true", help="shrink everything to finish in seconds")
    return p


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects KEY=VALUE, got '{item}'")
        out[key.strip()] = value.strip()
    return out


def to_request(args: argparse.Namespace) -> StudyRequest:
    sweeps = {}
    for key, value in _pairs(args.sweep, "--sweep").items():
        values = [v.strip() for v in value.split(",") if v.strip()]
        if len(values) < 2:
            raise UsageError(f"--sweep {key} needs at least two values, got '{value}'")
        sweeps[key] = values
    skip = ("list", "set", "sweep", "objectives")
    plain = {k: v for k, v in vars(args).items() if k not in skip}
    objectives = [m.strip() for m in (args.objectives or "").split(",") if m.strip()]
    return StudyRequest(
        **plain, sets=_pairs(args.set, "--set"), sweeps=sweeps, objectives=objectives
    )


def print_end(result) -> None:
    study, out = result.plan.study, result.summary_dir
    better = "lower" if study.mode == "min" else "higher"
    by_sampler = len(result.samplers) > 0  # a study spanning families: a row per sampler
    table = result.samplers if by_sampler else result.table
    knobs = (*result.plan.knobs, "sampler") if by_sampler else result.plan.knobs
    if by_sampler:  # its metrics with the trials' train_seconds
        metrics = tuple(c[: -len("_mean")] for c in table if c.endswith("_mean"))
    else:
        metrics = result.metrics
    what = "configurations and samplers" if by_sampler else "configurations"
    print(f"\nBest {what} by {study.metric} ({better} is better; mean ± std over seeds)")
    print(format_table(table, knobs, metrics) if len(table) else "(no trial reported)")
    if "pareto" in result.table:
        print_front(result.table, result.plan)
    if len(result.groups):
        group = study.group_by
        print(
            f"\nBy {group} (over the rest of the grid and the seeds: share of trials ok, "
            f"configurations with every seed ok, best configuration and median trial "
            f"{study.metric})"
        )
        extra = tuple(m for m in result.metrics if m != study.metric)
        print(format_groups(result.groups, group, study.metric, extra))
    confirmation = result.confirmation
    if len(confirmation):
        biased = "low" if study.mode == "min" else "high"
        print(
            f"\nConfirmed on fresh seeds (mean [95% interval over seeds]; a search's estimate of "
            f"its best is biased {biased}, its winner partly the luckiest)"
        )
        print(format_confirmation(confirmation, result.plan.knobs, study.metric))
        for line in confirmation_lines(confirmation):
            print(line)
    print(f"\nOutcomes: {outcome_line(result.trials)}")
    tables = [
        "configurations.csv",
        *(["by_sampler.csv"] if by_sampler else []),
        *([f"by_{study.group_by}.csv"] if len(result.groups) else []),
        *(["confirmation.csv"] if len(confirmation) else []),
        "trials.csv",
    ]
    print("Tables: " + ", ".join(f"{out}/{name}" for name in tables))
    uri = result.plan.tracking_uri
    print("Browse the runs:")
    if not uri.startswith("http"):
        print(f"  mlflow ui --backend-store-uri {uri}")
    print(f"  open {ui_url(uri, result.experiment_id)}")
    if result.plan.optuna_url:
        print(f"  optuna-dashboard {result.plan.optuna_url}")


def print_front(table, plan) -> None:
    """--objectives: the configurations no other beats on every objective."""
    (first, mode), *_ = plan.objectives
    front = table[table["pareto"]].sort_values(f"{first}_mean", ascending=mode == "min")
    front = front.reset_index(drop=True)  # format_table aligns its columns on the index
    names = ", ".join(f"{m} ({'lower' if d == 'min' else 'higher'} is better)"
                      for m, d in plan.objectives)  # fmt: skip
    print(
        f"\nPareto front of {names}: {len(front)} of {len(table)} configurations, none of them "
        "beaten on every objective by another (mean ± std over seeds)"
    )
    print(format_table(front, plan.knobs, tuple(m for m, _ in plan.objectives), len(front)))


def main(argv: list[str] | None = None) -> int:
    skip_here()
    args = build_parser().parse_args(argv)
    if args.list:
        if args.study in STUDIES:
            print(describe_study(STUDIES[args.study]))
            return 0
        width = max(map(len, STUDIES))
        for s in STUDIES.values():
            print(f"{s.name:{width}s}  {s.description}")
        print("\nEvery setting of a study, its axes and defaults: python -m study.run STUDY --list")
        return 0
    try:
        plan = prepare(to_request(args))
    except (UsageError, ConfigError, DataError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from study.runner.api import run_plan  # Ray's import: only for a valid plan

    try:
        result = run_plan(plan)
    except (UsageError, ConfigError, DataError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STORAGE
    if result.interrupted:
        print(f"\ninterrupted; continue with: {result.plan.resume_hint()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print_end(result)
    return 0


def exit_now(code: int) -> None:
    """Everything is written and closed and Ray is shut down: skip the
    interpreter's teardown of torch, Ray and MLflow (1.5 s on 2 cores)."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
