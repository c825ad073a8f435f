"""`run_study(request) -> StudyResult`: the typed entry point behind the CLI,
the benchmarks and notebooks. Validates (a `UsageError` for bad input, before
anything starts), runs the trials on Ray Tune with MLflow bookkeeping, and
returns the end-of-study tables."""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from datasources import load_dataset
from models import FAMILIES, generates
from scoring.aggregate import per_configuration, per_group, per_sampler
from scoring.few_labels import FEW_LABEL_METRICS
from scoring.outcomes import seed_results
from scoring.pareto import on_front
from scoring.ranking import confirmation_table
from scoring.registry import prepare_reference, split_sampler_metric
from study.errors import StorageError
from study.internals import check_internals, mlflow_environment
from study.plan import Plan
from study.request import StudyRequest
from study.runner.callbacks import CloseRuns, Progress
from study.runner.prepare import prepare, record_invocation
from study.runner.summary import trial_rows
from study.runner.tune_run import confirm_points, fit, fit_confirm, quiet_libraries, ray_cluster
from study.tracking.optuna_store import fail_stale_trials
from study.tracking.store import (
    answers,
    close_parent,
    experiment_id,
    import_store,
    init_store,
    kill_running_children,
    log_params,
    open_parent,
)


@dataclass(kw_only=True)
class StudyResult:
    plan: Plan
    experiment_id: str
    parent_run_id: str
    trials: pd.DataFrame  # one row per trial (empty when interrupted)
    table: pd.DataFrame  # one row per configuration, best first
    metrics: tuple[str, ...]  # the table's metric columns
    # the confirmed configurations, both estimates side by side (empty without --confirm)
    confirmation: pd.DataFrame = field(default_factory=pd.DataFrame)
    # per value of the study's group_by axis, over the rest of the grid
    groups: pd.DataFrame = field(default_factory=pd.DataFrame)
    # a study spanning families: a row per family and sampler (empty otherwise)
    samplers: pd.DataFrame = field(default_factory=pd.DataFrame)
    interrupted: bool = False

    @property
    def summary_dir(self) -> Path:
        return self.plan.summary_dir


def run_study(request: StudyRequest) -> StudyResult:
    """Validate, run and summarise one study. Raises UsageError (and the
    config, data and tracking errors) for bad input before anything starts,
    StorageError when writing fails mid-study; an interrupt (Ctrl-C) returns
    a result with `interrupted` set and the runs marked KILLED."""
    return run_plan(prepare(request))


def run_plan(plan: Plan) -> StudyResult:
    """Run a validated plan (`prepare`); the CLI validates first, so a bad
    invocation never pays for importing Ray. A Ray or Optuna whose internals
    moved is refused here, before Ray starts (`study.internals`)."""
    check_internals()
    mlflow_environment()  # before Ray starts: its processes inherit it
    try:
        return execute(plan)
    except MlflowException as e:
        if answers(plan.tracking_uri):
            raise  # not an outage: a bug to see in full
        raise StorageError(
            f"the tracking store {plan.tracking_uri} stopped answering mid-study; "
            f"once it is back, continue with --resume --name {plan.run_dir.name}"
        ) from e
    except OSError as e:
        raise StorageError(
            f"cannot write {e.filename or 'the study state'} ({e.strerror or e}); "
            f"free the space and continue with --resume --name {plan.run_dir.name}"
        ) from e


def execute(plan: Plan) -> StudyResult:
    quiet_libraries()
    threading.Thread(target=import_store, args=(plan.tracking_uri,), daemon=True).start()
    shipped = {}
    generating = any(generates(FAMILIES[f]) for f in plan.study.families)
    if generating and load_dataset(plan.dataset).is_image:
        # the feature classifier, trained once before any trial, goes to every trial
        shipped = prepare_reference(plan.dataset, plan.classifier_spaces)
    with ray_cluster(plan) as concurrent:
        init_store(plan.tracking_uri)  # before any client: a client creates the store
        client = MlflowClient(plan.tracking_uri)
        plan = start_study_run(plan, client)
        print_header(plan, concurrent)
        print_where(plan, client)
        run_phase = phase_runner(plan, shipped, concurrent)
        results, confirmed, interrupted = phases(plan, run_phase)
    exp_id, parent = plan.experiment_id, plan.parent_run_id
    if interrupted:  # Ray is down: no trial writes to its run any more
        kill_running_children(client, exp_id, parent)
        close_parent(client, parent, None, "KILLED")
        return StudyResult(
            plan=plan, experiment_id=exp_id, parent_run_id=parent, trials=pd.DataFrame(),
            table=pd.DataFrame(), metrics=(), interrupted=True,
        )  # fmt: skip
    return summarise(plan, client, results, confirmed)


def start_study_run(plan: Plan, client: MlflowClient) -> Plan:
    """The plan with its experiment and parent run, opened (or found again
    on --resume); the run folder recorded for --resume."""
    exp_id = experiment_id(client, plan.experiment, plan.tracking_uri)
    parent = open_parent(
        client, exp_id, plan.parent_run_id, plan.run_dir.name, *parent_record(plan)
    )
    opened = replace(plan, experiment_id=exp_id, parent_run_id=parent)
    if plan.parent_run_id is None:
        record_invocation(opened)
    return opened


def phase_runner(
    plan: Plan, shipped: dict[str, bytes], concurrent: int
) -> Callable[[str, int, list[dict] | None], Any | None]:
    """run_phase(name, seeds, points): the search (points None) or the
    confirmation of the given points, `seeds` trainings in all, with the
    progress and run-closing callbacks; Tune's results, or None when
    interrupted. `shipped`: the driver's cache files every trial installs."""

    def run_phase(name: str, seeds: int, points: list[dict] | None) -> Any | None:
        callbacks = [Progress(seeds, plan, name, slots=concurrent), CloseRuns(plan, name)]
        if points is None:
            return fit(plan, shipped, callbacks, concurrent)
        return fit_confirm(plan, shipped, callbacks, concurrent, points)

    return run_phase


def phases(plan: Plan, run_phase: Callable[..., Any]) -> tuple[Any, Any, bool]:
    """The search, then (with --confirm) its best configurations on fresh
    seeds: (search results, confirmation results or None, interrupted)."""
    results = run_phase("search", plan.configs * plan.seeds, None)
    if results is None or not plan.confirm:
        return results, None, results is None
    points = confirm_points(plan, results)
    if not points:
        print(f"\nNothing to confirm: no configuration has a {plan.study.metric} on any seed")
        return results, None, False
    configs = len(points) // plan.phase("confirm").packs
    print_confirm_header(plan, configs)
    confirmed = run_phase("confirm", configs * plan.confirm_seeds, points)
    return results, confirmed, confirmed is None


# logged only when a trial setting asks (anomaly_class, finetune_labels)
SETTING_METRICS = ("anomaly_auroc", *FEW_LABEL_METRICS)


def summarise(plan: Plan, client: MlflowClient, results, confirmed=None) -> StudyResult:
    """The tables, written beside Tune's state and attached to the parent run:
    every trial of both phases, the search's configurations, and the
    confirmed ones with both estimates."""
    study = plan.study
    phases = [("search", results), *([("confirm", confirmed)] if confirmed else [])]
    reported = {k for _, grid in phases for r in grid for s in seed_results(r.metrics) for k in s}
    # a sampler left out by --set samplers=... is no column; a metric a trial
    # setting switches on (anomaly_class) is one when some trial reported it
    objectives = tuple(m for m, _ in plan.objectives)
    wanted = (*objectives, *(study.table_metrics or (study.metric,)), *SETTING_METRICS)
    metrics = tuple(
        m for m in dict.fromkeys(wanted) if m in (study.metric, *objectives) or m in reported
    )
    if study.spans:  # each family's other samplers: rows of their own in `samplers`
        metrics += tuple(
            k for k in sorted(reported) if (s := split_sampler_metric(k)) and s[0] in metrics
        )
    trials = pd.concat(
        [trial_rows(grid, plan.searched, metrics).assign(phase=name) for name, grid in phases],
        ignore_index=True,
    )
    searched = trials[trials["phase"] == "search"]
    table = per_configuration(searched, plan.knobs, metrics, study.mode, study.metric)
    if plan.objectives and len(table):  # a Pareto search: which configurations no other beats
        table["pareto"] = on_front(table, plan.objectives)
    confirmation = confirmation_table(trials, plan.knobs, study.metric, study.mode)
    groups = _groups(plan, searched, metrics)
    samplers = None
    if study.spans:  # with each trial's training time beside the sampling time
        samplers = per_sampler(searched, plan.knobs, (*metrics, "train_seconds"), study.mode)
    out = plan.summary_dir
    out.mkdir(exist_ok=True)
    trials.to_csv(out / "trials.csv", index=False)
    table.to_csv(out / "configurations.csv", index=False)
    if len(confirmation):
        confirmation.to_csv(out / "confirmation.csv", index=False)
    if len(groups):
        groups.to_csv(out / f"by_{study.group_by}.csv", index=False)
    if samplers is not None:
        samplers.to_csv(out / "by_sampler.csv", index=False)
    parent = plan.parent_run_id
    log_params(client, parent, {"trials": len(trials)})
    if plan.optuna_url:
        fail_stale_trials(plan.optuna_url, plan.run_dir.name)
    close_parent(client, parent, out)
    return StudyResult(
        plan=plan, experiment_id=plan.experiment_id, parent_run_id=parent, trials=trials,
        table=table, metrics=metrics, confirmation=confirmation, groups=groups,
        samplers=pd.DataFrame() if samplers is None else samplers,
    )  # fmt: skip


def _groups(plan: Plan, trials: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """The study's per-technique table, when its group_by axis was searched."""
    group, metric = plan.study.group_by, plan.study.metric
    if group not in plan.searched:
        return pd.DataFrame()
    rest = [k for k in plan.knobs if k != group]
    extra = [m for m in metrics if m != metric]
    return per_group(trials, group, rest, metric, plan.study.mode, extra)


def print_header(plan: Plan, concurrent: int) -> None:
    r, study = plan.request, plan.study
    gpus = f", {r.gpus_per_trial:g} GPU" if r.gpus_per_trial else ""
    print(f"{study.name}: {study.description}")
    print(
        f"  {plan.dataset} · {plan.configs} configurations x {plan.seeds} seeds = "
        f"{_trials(plan, plan.configs, 'search')} · {plan.search} search · {concurrent} at "
        f"once ({r.cpus_per_trial:g} CPU{gpus} each)"
    )
    if plan.confirm:
        print(
            f"  then the best {plan.confirm} on {plan.confirm_seeds} fresh seeds each = "
            f"{_trials(plan, plan.confirm, 'confirm', 'confirmation ')}"
        )
    print("  searched: " + ("; ".join(f"{k} {a}" for k, a in plan.resolved.axes.items()) or "-"))
    print("  fixed: " + " ".join(f"{k}={v}" for k, v in sorted(plan.resolved.fixed.items())))
    scheduler = {
        "asha": lambda: f"ASHA: {asha_unit(plan)}",
        "pbt": lambda: f"PBT: {pbt_line(plan, 'perturbs')}",
        "pb2": lambda: f"PB2: {pbt_line(plan, 'picks by a GP bandit')}",
    }
    if r.scheduler in scheduler:
        print(f"  {scheduler[r.scheduler]()}")


def pbt_line(plan: Plan, how: str) -> str:
    p, every = plan.phase("search"), plan.eval_every
    unit = "a seed" if p.pack == 1 else f"a pack of {p.pack} seeds"
    return (
        f"a population of {plan.trials} members ({unit} each); every {every} epoch"
        f"{'' if every == 1 else 's'} the worst quarter clones the best quarter and {how} "
        f"{', '.join(plan.population)}"
    )


def asha_unit(plan: Plan) -> str:
    """What ASHA compares and stops: a whole configuration when its seeds
    train as one pack (the pack's mean, a diverged seed the penalty), else
    single trials of it."""
    p = plan.phase("search")
    if p.packs == 1:
        on = "its one seed" if p.seeds == 1 else f"the mean of its {p.seeds} seeds in one pack"
        return f"stops whole configurations, on {on}"
    unit = "seed" if p.pack == 1 else f"pack of {p.pack} seeds"
    return (
        f"stops each {unit} of a configuration on its own; --pack {p.seeds} "
        "makes it stop whole configurations"
    )


def print_where(plan: Plan, client: MlflowClient) -> None:
    """Where the study's runs, artifacts and searcher's history go."""
    artifacts = client.get_experiment(plan.experiment_id).artifact_location
    print(
        f"  MLflow: {plan.tracking_uri} · experiment '{plan.experiment}' · parent run "
        f"{plan.parent_run_id}\n  artifacts: {artifacts}"
    )
    if plan.optuna_url:
        print(f"  Optuna: {plan.optuna_url} · study '{plan.run_dir.name}'")
    print(flush=True)


def _trials(plan: Plan, configs: int, phase: str, kind: str = "") -> str:
    p = plan.phase(phase)
    n = configs * p.seeds
    if p.pack == 1:
        return f"{n} {kind}trials"
    return f"{n} seeds in {configs * p.packs} {kind}trials (seed packs of {p.pack})"


def print_confirm_header(plan: Plan, configs: int) -> None:
    """Why a second phase: the search's best is partly its luckiest."""
    base = int(plan.resolved.fixed.get("seed", 0))
    fresh, last = base + plan.seeds, base + plan.seeds + plan.confirm_seeds - 1
    which = (
        f"Pareto front's {configs} (at most --confirm)" if plan.objectives else f"best {configs}"
    )
    print(
        f"\nConfirming the search's {which} on {plan.confirm_seeds} fresh seeds each "
        f"(seeds {fresh}..{last}; the search used {base}..{fresh - 1})",
        flush=True,
    )


def parent_record(plan: Plan) -> tuple[dict[str, str], dict[str, object]]:
    """The parent run's tags and params: what was asked, where, at which commit."""
    study = plan.study
    tags = {
        "study": study.name,
        "command": shlex.join([sys.executable, "-m", "study.run", *plan.request.to_argv()]),
        "mlflow.source.git.commit": git_commit(),
        "run_dir": str(plan.run_dir),
    }
    if plan.optuna_url:  # where Optuna's tools find the searcher's history
        tags |= {"optuna_storage": plan.optuna_url, "optuna_study": plan.run_dir.name}
    params = {
        "dataset": plan.dataset,
        "configurations": plan.configs,
        "seeds": plan.seeds,
        "confirm": plan.confirm,
        "confirm_seeds": plan.confirm_seeds,
        "search": plan.search,
        "scheduler": plan.request.scheduler,
        "metric": study.metric,
        "mode": study.mode,
        # --objectives, as `fid:min,sample_seconds:min` (the report draws their front)
        **(
            {"objectives": ",".join(f"{m}:{d}" for m, d in plan.objectives)}
            if plan.objectives
            else {}
        ),
        **{f"space.{k}": str(a) for k, a in plan.resolved.axes.items()},
        **{f"fixed.{k}": v for k, v in plan.resolved.fixed.items()},
    }
    return tags, params


def git_commit() -> str:
    """The checkout's commit, or "unknown" outside a git checkout."""
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
