"""From a `StudyRequest` to a validated `Plan`: every mistake a user can make
is found here, before Ray starts or anything is written. This module also
owns resuming: the invocation file a run leaves behind, and reading it back."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

from datasources import DATASETS, Dataset, load_dataset
from models import FAMILIES, does_arithmetic, encodes, generates, has_latent_space, reconstructs
from models.config import ConfigError, mutable_keys
from scoring.features import InceptionError, inception_extractor
from scoring.few_labels import FEW_LABEL_METRICS
from scoring.modes import DYNAMICS
from scoring.registry import (
    DRAW_STATS,
    METRICS,
    SPACE_METRICS,
    across_classifiers,
    direction,
    drawn,
    latent_metric_names,
    metric_names,
    split_sampler_metric,
)
from study.errors import UsageError
from study.internals import mlflow_settings, no_compiler_import
from study.plan import Plan
from study.request import StudyRequest
from study.runner.preflight import (
    check_folder_name,
    check_ray_address,
    check_resources,
    check_storage,
    resource_asks,
    this_machine,
)
from study.studies import STUDIES, Resolved, Study, mutable_axes, resolve, split_settings
from study.studies import defaults as d
from study.studies.spec import config_of
from study.tracking.optuna_store import check_url, default_url, resolve_url
from study.tracking.store import check_tracking_uri, resolve_tracking_uri

INVOCATION_FILE = "invocation.json"  # what --resume needs, beside Tune's own state


def record_invocation(plan: Plan) -> None:
    """Create the run folder (only now, after every check passed) with what
    --resume needs: the request, the store and the parent run."""
    plan.run_dir.mkdir(parents=True)
    info = {
        "study": plan.study.name,
        "parent_run_id": plan.parent_run_id,
        "tracking_uri": plan.tracking_uri,
        "experiment": plan.experiment,
        "request": plan.request.to_json(),
    }
    (plan.run_dir / INVOCATION_FILE).write_text(json.dumps(info, indent=2))


def _positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero) or math.isnan(value)):
        raise UsageError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_numbers(r: StudyRequest) -> None:
    for name in ("num_samples", "seeds", "pack", "epochs", "cpus_per_trial", "max_concurrent"):
        _positive("--" + name.replace("_", "-"), getattr(r, name))
    _positive("--gpus-per-trial", r.gpus_per_trial, allow_zero=True)
    _positive("--confirm", r.confirm, allow_zero=True)
    _positive("--confirm-seeds", r.confirm_seeds)
    if r.search is not None and r.search not in d.SEARCHES:
        raise UsageError(f"unknown search '{r.search}'; choose from: {', '.join(d.SEARCHES)}")
    if r.scheduler not in d.SCHEDULERS:
        raise UsageError(
            f"unknown scheduler '{r.scheduler}'; choose from: {', '.join(d.SCHEDULERS)}"
        )


def _check_pack(r: StudyRequest, study: Study, resolved: Resolved, seeds: int) -> None:
    """A seed pack needs a family that trains in packs, no compiled networks,
    and (so the searcher's mean over a configuration's packs weighs every
    seed alike) a pack size that divides the search's seeds."""
    if r.pack == 1:
        return
    for family in study.families:
        if not FAMILIES[family].packs:
            raise UsageError(
                f"--pack: family {family} (study {study.name}) does not train in seed "
                "packs; run it without --pack"
            )
    if split_settings(study, resolved.fixed)[0].compile or "compile" in resolved.axes:
        raise UsageError("--pack does not combine with compile=true (compile one member alone)")
    k = min(r.pack, seeds)
    if seeds % k:
        raise UsageError(
            f"--pack {r.pack} does not divide the {seeds} seeds of a configuration; pick a "
            f"pack size that does (or one of {seeds} or more)"
        )


def _budget(r: StudyRequest, study: Study, resolved: Resolved, search: str) -> tuple[int, int]:
    """(configurations, seeds). A grid search runs every point of its grid,
    or the number asked for, drawn from it; never more than it has."""
    seeds = r.seeds or (d.SMOKE_SEEDS if r.smoke else study.seeds)
    if not resolved.axes:  # every axis fixed: one configuration, its seeds
        if r.num_samples not in (None, 1):
            raise UsageError(
                f"--num-samples {r.num_samples} but nothing is searched (every axis is fixed), "
                "so there is one configuration; --sweep a setting to compare several"
            )
        return 1, seeds
    if search != "grid":
        return r.num_samples or (d.SMOKE_CONFIGS if r.smoke else study.num_samples), seeds
    points = math.prod(len(a.grid()) for a in resolved.axes.values())
    if r.num_samples and r.num_samples > points:
        raise UsageError(
            f"--num-samples {r.num_samples} but the grid has {points} point"
            f"{'' if points == 1 else 's'}; ask for at most that many, or widen it with --sweep"
        )
    return r.num_samples or (min(points, d.SMOKE_GRID_POINTS) if r.smoke else points), seeds


def _confirm_budget(r: StudyRequest, study: Study, configs: int) -> tuple[int, int]:
    """(configurations confirmed, fresh seeds each). The study's default
    shrinks to what the search tries; --smoke confirms only when asked."""
    if r.confirm is None:
        confirm = 0 if r.smoke else min(study.confirm, configs)
    elif r.confirm > configs:
        raise UsageError(
            f"--confirm {r.confirm} but the search tries {configs} configuration"
            f"{'' if configs == 1 else 's'}; confirm at most that many"
        )
    else:
        confirm = r.confirm
    if r.confirm_seeds is not None and not confirm:
        raise UsageError(
            f"--confirm-seeds {r.confirm_seeds} but nothing is confirmed; add --confirm K"
        )
    return confirm, (r.confirm_seeds or study.confirm_seeds) if confirm else 0


def prepare(request: StudyRequest) -> Plan:
    """The validated plan of a request; a UsageError (or a config, data or
    tracking error) with one line for anything wrong, nothing written."""
    if request.name is not None:
        check_folder_name("--name", request.name)
    r = resumed_request(request) if request.resume else request
    if r.study not in STUDIES:
        given = f"unknown study '{r.study}'" if r.study else "no study given"
        raise UsageError(f"{given}; choose from: {', '.join(STUDIES)}")
    study = STUDIES[r.study]
    _check_numbers(r)
    if r.dataset is not None and r.dataset not in DATASETS:
        raise UsageError(f"unknown dataset '{r.dataset}'; choose from: {', '.join(DATASETS)}")
    sets = dict(r.sets) | ({"epochs": str(r.epochs)} if r.epochs is not None else {})
    resolved = resolve(study, sets, smoke=r.smoke, sweeps=r.sweeps)
    search = r.search or study.search
    configs, seeds = _budget(r, study, resolved, search)
    population = _population(r, study, resolved)
    search = "random" if population else search  # PBT draws its first population itself
    if population:  # every report a checkpoint: a member is cloned from its latest
        resolved = replace(resolved, fixed=resolved.fixed | {"checkpoint_seconds": 0.0})
    # a population's members are schedules of settings: none is confirmed
    confirm, confirm_seeds = (0, 0) if population else _confirm_budget(r, study, configs)
    objectives = _objectives(r)
    _check_pack(r, study, resolved, seeds)
    tracking_uri = resolve_tracking_uri(r.tracking_uri)
    check_tracking_uri(tracking_uri)
    if r.address:
        check_ray_address(r.address)
    elif not os.environ.get("RAY_ADDRESS"):  # Ray starts here: check this machine now
        check_resources(this_machine(), resource_asks(r.cpus_per_trial, r.gpus_per_trial))
    storage = Path(r.storage).expanduser().resolve()
    check_storage(storage, tracking_uri)
    if r.optuna_storage:
        r = replace(r, optuna_storage=resolve_url(r.optuna_storage))
        check_url(r.optuna_storage)
    run_dir, parent = _run_dir(r, study, storage)
    plan = Plan(
        request=r,
        study=study,
        resolved=resolved,
        dataset=r.dataset or study.dataset,
        data_dir=str(Path(r.data_dir).resolve()),
        search=search,
        configs=configs,
        seeds=seeds,
        confirm=confirm,
        confirm_seeds=confirm_seeds,
        tracking_uri=tracking_uri,
        experiment=r.experiment or study.name,
        run_dir=run_dir,
        parent_run_id=parent,
        optuna_url=(r.optuna_storage or default_url(run_dir))
        if resolved.axes and not population
        else None,
        population=population,
        tracking_env=mlflow_settings(),
        objectives=objectives,
    )
    if population:
        _check_population(plan.trials)
    _check_model(plan, r.data_dir)
    return plan


def _population(r: StudyRequest, study: Study, resolved: Resolved) -> tuple[str, ...]:
    """--scheduler pbt or pb2: the searched settings it may change
    mid-training (PB2: the continuous ones, its bandit's bounds); one line
    for what cannot work with it."""
    if r.scheduler not in d.POPULATION_SCHEDULERS:
        return ()
    clash = {
        "--confirm": bool(r.confirm),  # a member's schedule is no configuration to re-run
        "--objectives": bool(r.objectives),  # it clones the best by one metric
        "--search": r.search not in (None, "random"),  # it draws its population at random
        "--set checkpoint_seconds": float(resolved.fixed.get("checkpoint_seconds", 0)) > 0,
        "--max-concurrent": r.max_concurrent is not None,
    }
    for flag, clashes in clash.items():
        if clashes:
            raise UsageError(
                f"--scheduler {r.scheduler} does not combine with {flag}: {_PBT_CLASHES[flag]}"
            )
    mutable = mutable_axes(study, resolved.axes)
    if r.scheduler == "pb2":  # its bandit works within bounds: continuous axes
        mutable = tuple(k for k in mutable if hasattr(resolved.axes[k], "low"))
    if not mutable:
        searched = ", ".join(resolved.axes) or "nothing"
        ranged = " over a range (PB2)" if r.scheduler == "pb2" else ""
        raise UsageError(
            f"--scheduler {r.scheduler}: no searched setting may change mid-training{ranged} "
            f"(searched: {searched}); it perturbs learning rates, beta1 and what a family "
            f"marks mutable: --sweep one of {', '.join(_mutable_settings(study))}"
        )
    return mutable


_PBT_CLASHES = {
    "--confirm": "a member's result comes from a schedule of settings, which re-running "
    "one configuration from scratch does not repeat",
    "--objectives": "it clones the best members by the study's one metric",
    "--search": "it draws its first population at random, then changes it itself",
    "--set checkpoint_seconds": "it checkpoints every member at every evaluation, to clone it",
    "--max-concurrent": "Tune's limit holds members back unmade, while PBT compares the whole "
    "population (its members take the cluster's CPUs in turns)",
}


def _check_population(members: int) -> None:
    if members < 2:
        raise UsageError(
            "--scheduler pbt and pb2 need a population of two members or more (--num-samples x "
            f"seed packs), got {members}"
        )


def _mutable_settings(study: Study) -> list[str]:
    """The settings PBT may perturb in this study's families, as --sweep takes them."""
    return sorted(
        {(f"{f}.{k}" if study.spans else k) for f in study.families
         for k in mutable_keys(config_of(f))}
    )  # fmt: skip


def _objectives(r: StudyRequest) -> tuple[tuple[str, str], ...]:
    """--objectives: two or more registered metrics, each with its direction;
    a search on several objectives has no single metric for ASHA to stop on."""
    if not r.objectives:
        return ()
    names = list(r.objectives)
    if len(names) < 2 or len(set(names)) < len(names):
        raise UsageError(
            f"--objectives needs two different metrics or more, got '{','.join(names)}' (one "
            "objective is the study's own metric)"
        )
    directions = {name: direction(name) for name in names}
    for name, way in directions.items():
        if way is None:
            raise UsageError(
                f"--objectives: '{name}' is not a registered metric with a direction; "
                f"registered: {', '.join(METRICS)}"
            )
    if r.scheduler == "asha":
        raise UsageError(
            "--objectives does not combine with --scheduler asha (it stops on one metric)"
        )
    return tuple((name, str(way)) for name, way in directions.items())


def _run_dir(r: StudyRequest, study: Study, storage: Path) -> tuple[Path, str | None]:
    """The run's folder and, when resuming, its parent run."""
    if r.resume:
        run_dir = storage / (r.name or "")
        return run_dir, json.loads((run_dir / INVOCATION_FILE).read_text())["parent_run_id"]
    run_dir = storage / (r.name or f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if run_dir.exists():
        raise UsageError(f"{run_dir} exists; pick another --name or add --resume")
    return run_dir, None


def _check_model(plan: Plan, data_dir: str) -> None:
    """The dataset loads (cached after), the model builds on it for every
    searched choice, and the study's metrics are ones the family logs."""
    inception = plan.resolved.fixed.get("inception_weights")
    if inception:
        try:
            inception_extractor(inception)
        except InceptionError as e:
            raise UsageError(str(e)) from None
    data = load_dataset(plan.dataset, data_dir).subset(4096)  # DataError if missing
    try:
        _check_builds(plan.study, plan.resolved, data)
    except ConfigError as e:
        raise UsageError(f"study {plan.study.name} on {plan.dataset}: {e}") from None
    check_metric_names(plan.study, data, tuple(m for m, _ in plan.objectives))


def _check_builds(study: Study, resolved: Resolved, data: Dataset) -> None:
    """Build the model once per searched choice on a few samples, so a setting
    that cannot work with this dataset fails here, not in every trial."""
    variants = [{}] + [
        {k: v} for k, a in resolved.axes.items() if hasattr(a, "values") for v in a.values
    ]
    base = {k: a.grid()[0] for k, a in resolved.axes.items()}
    with no_compiler_import():  # nothing here trains: 1.5 s of imports less
        for extra in variants:
            values = {**resolved.fixed, **base, **extra}
            family = study.family_of(values)
            trial, cfg = split_settings(study, values)
            on = anomaly_data(family, trial.anomaly_class, data)
            check_few_labels(family, trial.finetune_labels, on)
            FAMILIES[family](cfg, on.train_x, on.test_x, on.train_y)


def check_few_labels(family: str, n: int, data: Dataset) -> None:
    """finetune_labels=n needs an encoder and n labelled training images."""
    if n and not encodes(FAMILIES[family]):
        those = ", ".join(k for k, f in FAMILIES.items() if encodes(f))
        raise ConfigError(
            f"finetune_labels: family {family} has no encoder to fine-tune ({those} have)"
        )
    if n and (not data.is_image or n > len(data.train_x)):
        raise ConfigError(
            f"finetune_labels={n} needs that many labelled training images; {data.name} "
            + (f"has {len(data.train_x)} here" if data.is_image else "holds points")
        )


def anomaly_data(family: str, k: int, data: Dataset) -> Dataset:
    """The training data with class k left out (k = -1: as it is); refused
    where anomaly detection cannot work."""
    if k < 0:
        return data
    if not reconstructs(FAMILIES[family]):
        those = ", ".join(n for n, f in FAMILIES.items() if reconstructs(f))
        raise ConfigError(
            f"anomaly_class: family {family} does not reconstruct its inputs; "
            f"anomaly detection needs one that does ({those})"
        )
    if not data.is_image or k >= data.n_classes:
        raise ConfigError(
            f"anomaly_class={k} needs a labelled image dataset with that class; {data.name} "
            + (f"has classes 0..{data.n_classes - 1}" if data.is_image else "holds points")
        )
    return data.without_class(k)


def check_metric_names(study: Study, data: Dataset, objectives: tuple[str, ...] = ()) -> None:
    """The study's objective and table columns (and --objectives) must be
    metrics each of its families or the sample-metric registry produce on
    this data: a typo would otherwise give every trial the penalty."""
    for name in study.families:
        family = FAMILIES[name]
        known = logged_metrics(family, data)
        for metric in (study.metric, *study.table_metrics, *objectives):
            split = split_sampler_metric(metric)
            per_sampler = split and split[0] in known and family.is_sampler(split[1])
            other_family = (
                study.spans
                and split
                and any(FAMILIES[f].is_sampler(split[1]) for f in study.families)
            )  # a sampler of one family in a study that spans several: its column
            if metric not in known and not per_sampler and not other_family:
                raise UsageError(
                    f"study {study.name}: metric '{metric}' is not logged by family "
                    f"{name} on {data.name}; it logs: {', '.join(sorted(known))}"
                )


def logged_metrics(family: type, data: Dataset) -> set[str]:
    """What a family's trials log on this data (per-sampler names aside)."""
    known = set(family.train_metrics | family.eval_metrics)
    if generates(family):
        known |= set(metric_names(data.is_image)) | set(DYNAMICS)
        known |= {drawn(m, s) for m in metric_names(data.is_image, clock=False) for s in DRAW_STATS}
        known |= {across_classifiers(m, s) for m in SPACE_METRICS for s in DRAW_STATS}
    if encodes(family):
        known |= set(FEW_LABEL_METRICS)
    latent = (has_latent_space(family), encodes(family), reconstructs(family))
    latent += (does_arithmetic(family),)
    return known | set(latent_metric_names(data.is_image, *latent))


def resumed_request(request: StudyRequest) -> StudyRequest:
    """The original request of the run --name (or the study's latest) under
    --storage: a resumed study keeps its settings, store and searcher."""
    storage = Path(request.storage).expanduser().resolve()
    if request.name:
        run_dir = storage / request.name
    else:
        found = sorted(
            (
                p
                for p in storage.glob(f"*/{INVOCATION_FILE}")
                if json.loads(p.read_text()).get("study") == request.study
            ),
            key=lambda p: p.stat().st_mtime,
        )
        if not found:
            raise UsageError(f"nothing to resume: no {request.study} run under {storage}")
        run_dir = found[-1].parent
    saved = run_dir / INVOCATION_FILE
    if not saved.exists():
        raise UsageError(f"nothing to resume at {run_dir}")
    info = json.loads(saved.read_text())
    if request.study and info["study"] != request.study:
        raise UsageError(f"{run_dir} holds study {info['study']}, not {request.study}")
    if "request" not in info:
        raise UsageError(
            f"{saved} was written by an earlier genstudy (no saved request); "
            "resume it with that version, or start the study afresh"
        )
    original = StudyRequest.from_json(info["request"])
    return replace(
        original,
        resume=True,
        name=run_dir.name,
        storage=str(storage),
        tracking_uri=info["tracking_uri"],
        experiment=info["experiment"],
        # where to run is this invocation's: a study begun on a laptop resumes on a cluster
        address=request.address or original.address,
    )


__all__ = ["INVOCATION_FILE", "Plan", "UsageError", "prepare", "record_invocation"]
