"""Running a plan's trials on Ray Tune: starting or joining Ray, the searcher
(Optuna behind Tune's Repeater, one suggestion per configuration, its seeds
repeated), the scheduler, and the Tuner, new or restored."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoring.aggregate import per_configuration
from scoring.outcomes import RUNNING, seed_results
from scoring.pareto import on_front
from study.errors import UsageError
from study.internals import autoscaler_ceiling, keep_latest_checkpoints, upload_whole
from study.plan import Plan
from study.runner.lean_start import lean_children
from study.runner.population import pb2, pbt
from study.runner.preflight import check_resources, resource_asks, trials_at_once
from study.runner.summary import trial_rows
from study.studies import defaults as d
from study.tracking import optuna_store
from study.tracking.store import recorded_ends
from study.trial.trainable import tracking_client, train


def quiet_libraries() -> None:
    """Ray, Optuna and MLflow talk a lot; the user wants our progress lines."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's JSON and CSV result files are kept (ExperimentAnalysis reads them),
    # added explicitly in `fit`: its automatic set would add TensorBoard files too
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TUNE_WARN_SLOW_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1e9")
    warnings.filterwarnings("ignore")
    for name in ("ray", "optuna", "mlflow", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # a failed trial is a progress line pointing at its error file; Tune's
    # traceback and its "Trials did not complete" would repeat it
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)


@contextmanager
def ray_cluster(plan: Plan) -> Iterator[int]:
    """Ray started (or joined) for the plan; yields how many trials run at
    once. A Ray this function started is shut down after; one already
    running in this process (a notebook's) is left as it was."""
    import ray

    r = plan.request
    started = not ray.is_initialized()
    if started:
        start_ray(r.address, ray.init, ray.shutdown)
    try:
        asks = resource_asks(r.cpus_per_trial, r.gpus_per_trial)
        for warning in check_resources(ray.nodes(), asks, autoscaler_ceiling()):
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        resources = ray.cluster_resources()
        yield r.max_concurrent or trials_at_once(resources, r.cpus_per_trial, r.gpus_per_trial)
    finally:
        if started:
            ray.shutdown()


# Ray waits a fixed 30 s for a starting node's raylet to register; on a
# loaded machine (several studies starting at once) it can miss that
RAY_START_TIMEOUT = "timed out during startup"


def start_ray(address: str | None, init: Callable[..., Any], shutdown: Callable[[], None]) -> None:
    """ray.init, started or joined; one more try when a local start times
    out, then a UsageError (nothing has started or been written yet)."""
    where = address or "local"
    for attempt in (1, 2):
        try:
            with lean_children():
                init(
                    address=address,
                    include_dashboard=False,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                    configure_logging=True,
                )
            return
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UsageError(f"cannot start or join Ray at {where}: {first}") from None
        except Exception as e:
            if RAY_START_TIMEOUT not in str(e):
                raise
            shutdown()  # what did start of this node goes, before the next try
            if attempt == 2:
                raise UsageError(
                    f"cannot start or join Ray at {where}: its node did not come up in "
                    "30 s, twice (is the machine overloaded?)"
                ) from None
            print(
                "warning: Ray's node did not come up in 30 s; trying once more",
                file=sys.stderr,
                flush=True,
            )


def _searcher(plan: Plan) -> Any:
    import optuna

    from study.runner.seed_search import SeedRepeater, SpreadOptunaSearch

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
    many = bool(plan.objectives)  # a Pareto search: a value per objective, each its direction
    searcher = SpreadOptunaSearch(
        space,
        metric=list(plan.objective_keys) if many else "objective",
        mode=[mode for _, mode in plan.objectives] if many else plan.study.mode,
        sampler=samplers[plan.search](),
        study_name=plan.run_dir.name,
        storage=optuna_store.storage(plan.optuna_url),
    )
    # a configuration's trials: one per seed, or per seed pack
    return SeedRepeater(searcher, repeat=plan.phase("search").packs, set_index=True)


def _space(plan: Plan) -> tuple[dict[str, Any], Any]:
    """(param_space, searcher): the searcher draws the configurations; with
    nothing to search, the one configuration's seeds are a grid instead.
    Population-based training draws its population itself (Tune's own
    random draws: its scheduler changes configurations no searcher made)."""
    from ray import tune
    from ray.tune.search.repeater import TRIAL_INDEX

    packs = {TRIAL_INDEX: tune.grid_search(list(range(plan.phase("search").packs)))}
    if plan.population:  # each configuration's packs drawn apart, from the study's seed
        from ray.tune.search import BasicVariantGenerator

        seed = int(plan.resolved.fixed.get("seed", 0))
        space = {k: a.tune() for k, a in plan.resolved.axes.items()} | packs
        return space, BasicVariantGenerator(random_state=seed)
    if plan.searched:
        return {}, _searcher(plan)
    return packs, None


def _asha(plan: Plan) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    epochs = max(c.epochs for c in plan.trial_configs)
    return ASHAScheduler(
        time_attr="epoch",
        metric="objective",
        mode=plan.study.mode,
        max_t=epochs,
        grace_period=max(1, epochs // 4),
    )


SCHEDULERS: dict[str, Callable[[Plan], Any]] = {
    "none": lambda plan: None,
    "asha": _asha,
    "pbt": pbt,
    "pb2": pb2,
}


def fit(plan: Plan, shipped: dict[str, bytes], callbacks: list, concurrent: int) -> Any | None:
    """Run (or continue) the plan's search; its trials' results, or None
    when interrupted (Ctrl-C: Tune stops its trials and returns early)."""
    space, search = _space(plan)
    config = {
        "search_alg": search,
        "scheduler": SCHEDULERS[plan.request.scheduler](plan),
        # a population: each of the configurations' samples expands to its packs
        "num_samples": plan.configs if plan.population else (plan.trials if search else 1),
    }
    tuner = Tuned(plan, "search", shipped, callbacks, concurrent)
    return tuner.fit(plan.run_dir, space, config, plan.trials)


def fit_confirm(
    plan: Plan, shipped: dict[str, bytes], callbacks: list, concurrent: int, points: list[dict]
) -> Any | None:
    """Run (or continue) the confirmation trials, one per point (a
    configuration's searched values and its fresh seed index), to the end."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    # Tune takes preset points only for keys of the space; each trial is one point
    space = {k: tune.choice([p[k] for p in points]) for k in points[0]}
    config = {"search_alg": BasicVariantGenerator(points_to_evaluate=points)}
    config["num_samples"] = len(points)
    tuner = Tuned(plan, "confirm", shipped, callbacks, concurrent)
    return tuner.fit(plan.confirm_dir, space, config, len(points))


def confirm_points(plan: Plan, results: Any) -> list[dict]:
    """The confirmation trials: the search's best `plan.confirm`
    configurations by mean metric (ones with no value on any seed left out;
    with --objectives, the Pareto front's, best on the first objective first),
    each on `plan.confirm_seeds` seed indices after the search's, so no seed
    repeats (the trial context's seed_base); seed (or seed pack) by seed, so
    an interrupted phase leaves them even."""
    from ray.tune.search.repeater import TRIAL_INDEX

    study = plan.study
    goals = plan.objectives or ((study.metric, study.mode),)  # --objectives: the front's
    names = tuple(m for m, _ in goals)
    table = per_configuration(trial_rows(results, (), names), (), names, goals[0][1])
    table = table.dropna(subset=[f"{m}_mean" for m in names])
    if plan.objectives:
        table = table[on_front(table, plan.objectives)]
    best = table["config_id"].head(plan.confirm)
    values: dict[str, dict] = {}
    for r in results:  # the searched values as Tune drew them, not as a table holds them
        cid = (r.metrics or {}).get("config_id")
        if cid is not None:
            values.setdefault(cid, {k: (r.config or {})[k] for k in plan.searched})
    return [
        {**values[cid], TRIAL_INDEX: j} for j in range(plan.phase("confirm").packs) for cid in best
    ]


@dataclass(frozen=True)
class Tuned:
    """A phase's Tuner: the plan's trainable with its resources, the
    callbacks and how many trials run at once."""

    plan: Plan
    phase: str
    shipped: dict[str, bytes]  # cache files every trial installs
    callbacks: list
    concurrent: int

    def fit(
        self, where: Path, space: dict[str, Any], config: dict[str, Any], trials: int
    ) -> Any | None:
        """Run a Tuner whose state is the folder `where`: restored when
        resuming with state there, else new; its results (`settled`), or None
        when interrupted."""
        from ray import tune

        upload_whole()
        keep_latest_checkpoints()
        try:
            if self.plan.request.resume and tune.Tuner.can_restore(str(where)):
                tuner = tune.Tuner.restore(
                    str(where), self.trainable(), resume_unfinished=True, resume_errored=True
                )
            else:
                tuner = self.new_tuner(where, space, config)
            results = tuner.fit()
        except KeyboardInterrupt:
            return None
        if results.num_terminated + results.num_errors < trials:
            return None
        return settled(results, self.plan)

    def trainable(self) -> Any:
        from ray import tune

        r = self.plan.request
        trainable = tune.with_parameters(
            train, plan=self.plan, phase=self.phase, cache_files=self.shipped
        )
        return tune.with_resources(trainable, {"cpu": r.cpus_per_trial, "gpu": r.gpus_per_trial})

    def new_tuner(self, where: Path, space: dict[str, Any], config: dict[str, Any]) -> Any:
        from ray import tune
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

        run_config = tune.RunConfig(
            name=where.name,
            storage_path=str(where.parent),
            callbacks=[*self.callbacks, JsonLoggerCallback(), CSVLoggerCallback()],
            verbose=0,
            # every checkpoint kept by Tune; all but each trial's latest deleted
            # after each save of its state (keep_latest_checkpoints)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=d.MAX_FAILURES),
        )
        tune_config = tune.TuneConfig(
            **config,
            # PBT compares its whole population: Tune's limit would hold members
            # back unmade; they take the CPUs in turns instead (paused at each sync)
            max_concurrent_trials=None if self.plan.population else self.concurrent,
            # a trial process stays for the next trial: torch, the datasets,
            # the feature classifier and the MLflow client stay loaded
            reuse_actors=True,
        )
        return tune.Tuner(
            self.trainable(), param_space=space, run_config=run_config, tune_config=tune_config
        )


def settled(results: Any, plan: Plan) -> list[Any]:
    """Tune's results, with the end each trial recorded in MLflow in place of
    a result of Tune's that is no end (a trial still `running`, or failed):
    after a driver died, Tune can hold a trial's older result while the trial
    had ended and recorded it (MLflow is written first, then Tune)."""
    from dataclasses import replace

    results = list(results)

    def no_end(r: Any) -> bool:
        ends = [s.get("outcome") not in (None, RUNNING) for s in seed_results(r.metrics)]
        return r.error is not None or not all(ends)

    unsettled = {(r.metrics or {}).get("trial_id") for r in results if no_end(r)} - {None}
    if not unsettled:
        return results
    client = tracking_client(plan.tracking_uri)
    recorded = recorded_ends(client, plan.experiment_id, plan.parent_run_id, unsettled)
    out = []
    for r in results:
        ends = recorded.get((r.metrics or {}).get("trial_id"))  # only unsettled ones
        if ends is None:
            out.append(r)
        else:
            ended = {"members": ends} if len(ends) > 1 else ends[0]
            out.append(replace(r, metrics=r.metrics | ended, error=None))
    return out
