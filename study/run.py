"""`python -m study.run STUDY ...`: run a study as Ray Tune trials, log to MLflow.

Everything a user can get wrong is checked before Ray starts: a mistake ends
with one line on stderr and exit code 2, and nothing is started or written.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from models import FAMILIES
from models.config import ConfigError
from study.data import DATASETS, DataError, load_dataset
from study.spec import Resolved, Study, resolve, split_settings
from study.studies import STUDIES
from study.tracking import TrackingError, check_tracking_uri, resolve_tracking_uri

INVOCATION_FILE = "invocation.json"  # what --resume needs, beside Tune's own state
MIN_FREE_MB = 500  # checkpoints, sample grids and the store of a default study fit easily
EXIT_USAGE, EXIT_STORAGE, EXIT_INTERRUPTED = 2, 3, 130


class UsageError(Exception):
    """A mistake in the command line; the message is one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m study.run", description=__doc__.splitlines()[0])
    p.add_argument("study", nargs="?", help="study name (see --list)")
    p.add_argument("--list", action="store_true", help="list the studies and exit")
    p.add_argument("--dataset", help="dataset (default: the study's)")
    p.add_argument("--data-dir", default="data", help="folder for torchvision datasets")
    p.add_argument("--num-samples", type=int, help="configurations to try (default: the study's)")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default: the study's)")
    p.add_argument("--epochs", type=int, help="shorthand for --set epochs=E")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a setting (repeatable); a searched key leaves the search",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="search any setting over these values (repeatable; grid-friendly)",
    )
    p.add_argument(
        "--search",
        choices=("optuna", "random", "grid"),
        help="search algorithm (default: the study's, mostly optuna)",
    )
    p.add_argument("--scheduler", choices=("none", "asha"), default="none")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument(
        "--max-concurrent",
        type=int,
        help="trials at once (default: as many as the cluster's CPUs and GPUs fit)",
    )
    p.add_argument("--address", help="Ray cluster to join ('auto' for the local one)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI "
        "or MLflow's default, sqlite:///mlflow.db)",
    )
    p.add_argument("--experiment", help="MLflow experiment (default: the study name)")
    p.add_argument("--storage", default="runs", help="folder for Tune state and checkpoints")
    p.add_argument("--name", help="name of this run's folder under --storage")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run named --name (default: the study's latest)",
    )
    p.add_argument("--smoke", action="store_true", help="shrink everything to finish in seconds")
    return p


@dataclass
class Plan:
    """A validated invocation: everything execute() needs, nothing started yet."""

    study: Study
    resolved: Resolved
    dataset: str
    data_dir: str
    configs: int
    seeds: int
    tracking_uri: str
    experiment: str
    run_dir: Path
    args: argparse.Namespace
    parent_run_id: str | None = None  # set when resuming

    @property
    def searched(self) -> tuple[str, ...]:
        return tuple(self.resolved.axes)


def _parse_sets(items: list[str], flag: str = "--set") -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects KEY=VALUE, got '{item}'")
        out[key.strip()] = value.strip()
    return out


def _parse_sweeps(items: list[str]) -> dict[str, list[str]]:
    out = {}
    for key, value in _parse_sets(items, "--sweep").items():
        values = [v.strip() for v in value.split(",") if v.strip()]
        if len(values) < 2:
            raise UsageError(f"--sweep {key} needs at least two values, got '{value}'")
        out[key] = values
    return out


def _positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero) or math.isnan(value)):
        raise UsageError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_builds(study: Study, resolved: Resolved, data) -> None:
    """Build the model once per searched choice on a few samples, so a setting
    that cannot work with this dataset fails here, not in every trial."""
    variants = [{}] + [
        {k: v} for k, a in resolved.axes.items() if hasattr(a, "values") for v in a.values
    ]
    base = {k: a.grid()[0] for k, a in resolved.axes.items()}
    for extra in variants:
        _, cfg = split_settings(study, {**resolved.fixed, **base, **extra})
        FAMILIES[study.family](cfg, data.train_x, data.test_x)


def _check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Ray retries an unreachable head for minutes; answer in seconds instead."""
    if address == "auto" or "://" in address:  # Ray finds the local one itself, fast
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address expects HOST:PORT or 'auto', got '{address}'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UsageError(f"cannot join Ray at {address}: {e.strerror or e}") from None


def _check_free_space(folder: Path, what: str) -> None:
    """A study that fills the disk dies half-way; refuse to start instead."""
    need = float(os.environ.get("GENSTUDY_MIN_FREE_MB", MIN_FREE_MB))
    free = shutil.disk_usage(folder).free / 2**20
    if free < need:
        raise UsageError(
            f"{what} ({folder}) has {free:.0f} MB free, under the {need:.0f} MB a study "
            "needs; free some space (or lower GENSTUDY_MIN_FREE_MB)"
        )


def prepare(args: argparse.Namespace) -> Plan:
    if args.resume:
        args = _resumed_args(args)
    if args.study not in STUDIES:
        given = f"unknown study '{args.study}'" if args.study else "no study given"
        raise UsageError(f"{given}; choose from: {', '.join(STUDIES)}")
    study = STUDIES[args.study]
    args.search = args.search or study.search
    for name in ("num_samples", "seeds", "epochs", "cpus_per_trial", "max_concurrent"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    _positive("--gpus-per-trial", args.gpus_per_trial, allow_zero=True)
    if args.dataset is not None and args.dataset not in DATASETS:
        raise UsageError(f"unknown dataset '{args.dataset}'; choose from: {', '.join(DATASETS)}")
    dataset = args.dataset or study.dataset
    sets = _parse_sets(args.set)
    if args.epochs is not None:
        sets["epochs"] = str(args.epochs)
    resolved = resolve(study, sets, smoke=args.smoke, sweeps=_parse_sweeps(args.sweep))

    configs = args.num_samples or (2 if args.smoke else study.num_samples)
    if args.search == "grid":
        configs = math.prod(len(a.grid()) for a in resolved.axes.values())
        if args.smoke:  # a random few points of the grid
            configs = min(configs, args.num_samples or 3)
    seeds = args.seeds or (2 if args.smoke else study.seeds)

    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(tracking_uri)
    if args.address:
        _check_ray_address(args.address)

    storage = Path(args.storage).expanduser().resolve()
    existing = next(p for p in (storage, *storage.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UsageError(f"--storage {storage} cannot be created or written ({existing})")
    _check_free_space(existing, "--storage")
    if tracking_uri.startswith("sqlite:///"):
        _check_free_space(Path(tracking_uri[len("sqlite:///") :]).parent, "the MLflow store")

    plan = Plan(
        study,
        resolved,
        dataset,
        args.data_dir,
        configs,
        seeds,
        tracking_uri,
        args.experiment or study.name,
        storage / (args.name or ""),
        args,
    )
    if args.resume:
        info = json.loads((plan.run_dir / INVOCATION_FILE).read_text())
        plan.parent_run_id = info["parent_run_id"]
    else:
        name = args.name or f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        plan.run_dir = storage / name
        if plan.run_dir.exists():
            raise UsageError(f"{plan.run_dir} exists; pick another --name or add --resume")

    inception = resolved.fixed.get("inception_weights")
    if inception:
        from analysis.extractors import InceptionError, inception_extractor

        try:
            inception_extractor(inception)
        except InceptionError as e:
            raise UsageError(str(e)) from None
    data = load_dataset(dataset, args.data_dir)  # DataError if missing; cached after
    try:
        _check_builds(study, resolved, data.subset(4096))
    except ConfigError as e:
        raise UsageError(f"study {study.name} on {dataset}: {e}") from None
    return plan


def _resumed_args(args: argparse.Namespace) -> argparse.Namespace:
    """The original command's arguments, for the run --name (or the study's
    latest) under --storage: a resumed study keeps its settings and searcher."""
    storage = Path(args.storage).expanduser().resolve()
    if args.name:
        run_dir = storage / args.name
    else:
        found = sorted(
            (
                p
                for p in storage.glob(f"*/{INVOCATION_FILE}")
                if json.loads(p.read_text()).get("study") == args.study
            ),
            key=lambda p: p.stat().st_mtime,
        )
        if not found:
            raise UsageError(f"nothing to resume: no {args.study} run under {storage}")
        run_dir = found[-1].parent
    saved = run_dir / INVOCATION_FILE
    if not saved.exists():
        raise UsageError(f"nothing to resume at {run_dir}")
    info = json.loads(saved.read_text())
    if args.study and info["study"] != args.study:
        raise UsageError(f"{run_dir} holds study {info['study']}, not {args.study}")
    resumed = build_parser().parse_args(info["argv"])
    resumed.resume, resumed.name, resumed.storage = True, run_dir.name, str(storage)
    resumed.tracking_uri, resumed.argv = info["tracking_uri"], info["argv"]
    resumed.experiment = info["experiment"]
    return resumed


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _quiet() -> None:
    """Ray, Optuna and MLflow talk a lot; the user wants our progress lines."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TUNE_WARN_SLOW_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1e9")
    warnings.filterwarnings("ignore")
    for name in ("ray", "ray.tune", "optuna", "mlflow", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _searcher(plan: Plan):
    import optuna
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.repeater import Repeater

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    axes = plan.resolved.axes
    seed = int(plan.resolved.fixed.get("seed", 0))
    samplers = {
        "optuna": lambda: optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=max(2, min(10, plan.configs // 2))
        ),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: optuna.samplers.GridSampler(
            {k: a.grid() for k, a in axes.items()}, seed=seed
        ),
    }
    space = {k: a.optuna() for k, a in axes.items()}
    searcher = OptunaSearch(
        space, metric="objective", mode=plan.study.mode, sampler=samplers[plan.args.search]()
    )
    return Repeater(searcher, repeat=plan.seeds, set_index=True)


def trials_at_once(
    resources: dict[str, float], cpus_per_trial: float, gpus_per_trial: float
) -> int:
    """How many trials fit on the cluster at once: its CPUs, and its GPUs when
    trials take some (Optuna should not suggest trials that can only wait)."""
    fits = resources.get("CPU", 1) / cpus_per_trial
    if gpus_per_trial:
        fits = min(fits, resources.get("GPU", 0) / gpus_per_trial)
    return max(1, int(fits + 1e-9))  # 0.7 / 0.1 is 6.999... in floating point


def execute(plan: Plan) -> int:
    _quiet()
    import ray
    from mlflow import MlflowClient
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from analysis.metrics import provenance
    from study.progress import CloseRuns, Progress
    from study.summary import config_table, format_table, outcome_line, trial_rows
    from study.tracking import (
        experiment_id,
        init_store,
        kill_running_children,
        log_params,
        start_parent,
    )
    from study.trainable import TrialContext, train

    args, study = plan.args, plan.study
    total = plan.configs * plan.seeds
    if FAMILIES[study.family].generates and load_dataset(plan.dataset).is_image:
        provenance(plan.dataset)  # trains the feature classifier once, before any trial

    try:
        ray.init(
            address=args.address,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
            configure_logging=True,
        )
    except (ConnectionError, RuntimeError, ValueError) as e:
        print(
            f"error: cannot start or join Ray at {args.address or 'local'}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    if args.gpus_per_trial > gpus:
        print(
            f"error: --gpus-per-trial {args.gpus_per_trial:g} but the Ray cluster has "
            f"{gpus:g} GPU{'' if gpus == 1 else 's'}, so no trial could start",
            file=sys.stderr,
        )
        return EXIT_USAGE
    concurrent = args.max_concurrent or trials_at_once(
        resources, args.cpus_per_trial, args.gpus_per_trial
    )

    init_store(plan.tracking_uri)
    client = MlflowClient(plan.tracking_uri)
    exp_id = experiment_id(client, plan.experiment)
    searched = plan.searched
    print(f"{study.name}: {study.description}")
    print(
        f"  {plan.dataset} · {plan.configs} configurations x {plan.seeds} seeds = {total} "
        f"trials · {args.search} search · {concurrent} at once ({args.cpus_per_trial:g} CPU"
        f"{f', {args.gpus_per_trial:g} GPU' if args.gpus_per_trial else ''} each)"
    )
    print("  searched: " + ("; ".join(f"{k} {a}" for k, a in plan.resolved.axes.items()) or "-"))
    print("  fixed: " + " ".join(f"{k}={v}" for k, v in sorted(plan.resolved.fixed.items())))

    if plan.parent_run_id is None:
        tags = {
            "study": study.name,
            "command": shlex.join([sys.executable, "-m", "study.run", *sys.argv[1:]]),
            "mlflow.source.git.commit": _git_commit(),
            "run_dir": str(plan.run_dir),
        }
        params = {
            "dataset": plan.dataset,
            "configurations": plan.configs,
            "seeds": plan.seeds,
            "search": args.search,
            "scheduler": args.scheduler,
            "metric": study.metric,
            "mode": study.mode,
            **{f"space.{k}": str(a) for k, a in plan.resolved.axes.items()},
            **{f"fixed.{k}": v for k, v in plan.resolved.fixed.items()},
        }
        plan.parent_run_id = start_parent(client, exp_id, plan.run_dir.name, tags, params)
        plan.run_dir.mkdir(parents=True)  # created now, after every check passed
        (plan.run_dir / INVOCATION_FILE).write_text(
            json.dumps(
                {
                    "study": study.name,
                    "parent_run_id": plan.parent_run_id,
                    "tracking_uri": plan.tracking_uri,
                    "experiment": plan.experiment,
                    "argv": args.argv,
                },
                indent=2,
            )
        )
    else:
        client.update_run(plan.parent_run_id, status="RUNNING")
    print(
        f"  MLflow: {plan.tracking_uri} · experiment '{plan.experiment}' · parent run "
        f"{plan.parent_run_id}\n",
        flush=True,
    )

    ctx = TrialContext(
        study=study.name,
        dataset=plan.dataset,
        data_dir=str(Path(plan.data_dir).resolve()),
        fixed=plan.resolved.fixed,
        tracking_uri=plan.tracking_uri,
        experiment_id=exp_id,
        parent_run_id=plan.parent_run_id,
        threads=max(1, int(args.cpus_per_trial)),
        searched=searched,
    )
    trainable = tune.with_resources(
        tune.with_parameters(train, ctx=ctx),
        {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial},
    )
    callbacks = [
        Progress(total, study.metric, study.mode, searched),
        CloseRuns(plan.tracking_uri, exp_id, plan.parent_run_id),
    ]
    run_config = tune.RunConfig(
        name=plan.run_dir.name,
        storage_path=str(plan.run_dir.parent),
        callbacks=callbacks,
        verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=2),
    )
    epochs = split_settings(study, plan.resolved.fixed)[0].epochs
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",
            metric="objective",
            mode=study.mode,
            max_t=epochs,
            grace_period=max(1, epochs // 4),
        )
        if args.scheduler == "asha"
        else None
    )
    try:
        # no saved Tune state when the driver died within seconds: start over
        if args.resume and tune.Tuner.can_restore(str(plan.run_dir)):
            tuner = tune.Tuner.restore(
                str(plan.run_dir), trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = tune.Tuner(
                trainable,
                run_config=run_config,
                tune_config=tune.TuneConfig(
                    search_alg=_searcher(plan),
                    scheduler=scheduler,
                    num_samples=total,
                    max_concurrent_trials=concurrent,
                ),
            )
        results = tuner.fit()
        interrupted = results.num_terminated + results.num_errors < total
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:  # Ctrl-C: Tune stops its trials and returns early
        print(
            f"\ninterrupted; continue with: python -m study.run {study.name} --resume "
            f"--name {plan.run_dir.name} --storage {plan.run_dir.parent}",
            file=sys.stderr,
        )
        kill_running_children(client, exp_id, plan.parent_run_id)
        client.set_terminated(plan.parent_run_id, "KILLED")
        return EXIT_INTERRUPTED

    reported = {k for r in results for k in (r.metrics or {})}
    # a sampler variant left out by --set samplers=... is no column
    metrics = tuple(
        m for m in study.table_metrics or (study.metric,) if m == study.metric or m in reported
    )
    trials = trial_rows(results, searched, metrics)
    table = config_table(trials, searched, metrics, study.metric, study.mode)
    out = plan.run_dir / "summary"
    out.mkdir(exist_ok=True)
    trials.to_csv(out / "trials.csv", index=False)
    table.to_csv(out / "configurations.csv", index=False)
    client.log_artifacts(plan.parent_run_id, str(out), "summary")
    log_params(client, plan.parent_run_id, {"trials": len(trials)})
    client.set_terminated(plan.parent_run_id, "FINISHED")

    better = "lower" if study.mode == "min" else "higher"
    print(f"\nBest configurations by {study.metric} ({better} is better; mean ± std over seeds)")
    print(format_table(table, searched, metrics) if len(table) else "(no trial reported)")
    print(f"\nOutcomes: {outcome_line(trials)}")
    print(f"Tables: {out}/configurations.csv, {out}/trials.csv")
    print("Browse the runs:")
    print(
        f"  mlflow ui --backend-store-uri {plan.tracking_uri}"
        if not plan.tracking_uri.startswith("http")
        else f"  open {plan.tracking_uri}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # saved for --resume
    if args.list:
        width = max(map(len, STUDIES))
        for s in STUDIES.values():
            print(f"{s.name:{width}s}  {s.description}")
        return 0
    try:
        plan = prepare(args)
    except (UsageError, ConfigError, DataError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return execute(plan)
    except OSError as e:  # the disk filled up or storage went away mid-study
        print(
            f"error: cannot write {e.filename or 'the study state'} ({e.strerror or e}); "
            f"free the space and continue with --resume --name {plan.run_dir.name}",
            file=sys.stderr,
        )
        return EXIT_STORAGE


if __name__ == "__main__":
    sys.exit(main())
