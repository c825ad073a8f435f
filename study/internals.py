"""Every place the harness leans on a library's internals or changes the
process environment for one, in one module, checked at start-up.

- `upload_whole` (Ray Tune, private class): Tune writes its saved state to a
  staging folder and copies it to the storage path in a background thread;
  the next save can overwrite the staging files while that copy still runs.
  A driver killed then leaves the searcher's state of one moment beside the
  trials of another, and `--resume` ends short of its trials. Each save here
  waits for its own copy (milliseconds on a local or shared disk).
- `keep_latest_checkpoints` (Ray Tune, private fields): a trial's older
  checkpoints are deleted right after a save of Tune's state, which names its
  latest, so a retry or `--resume` always finds the one it restores from.
  Tune's own `num_to_keep` deletes them at once, and so forces a save of the
  whole state (every trial's) after every trial checkpoint: n trials cost
  n x n. Here Tune saves on its own clock (every 10 s, or 19 times the last
  save's time), and a trial keeps at most the checkpoints it wrote since.
- `autoscaler_ceiling` (Ray, `ray._private`): the largest node an
  autoscaler could add, so a trial too big for today's nodes waits with a
  warning instead of being refused.
- `mlflow_environment` (MLflow, environment variables): the client's HTTP
  retries, which carry a trial across a tracking-server outage, and no
  "View run at" line per finished run. Set when a driver or a trial starts,
  never at import; the driver's environment, where it sets them, wins, and
  each trial takes its driver's settings (`mlflow_settings`, in the plan),
  whatever its node's environment holds.
- `NO_PRESTART` (Ray, an internal config flag): a local node starts no idle
  workers for the driver's tasks (a study runs none; `runner.lean_start`).
- `no_compiler_import` (torch, a private cache attribute): building an
  optimiser imports torch's compiler (`torch._dynamo`, 1.5 s of CPU) only to
  mark `add_param_group` as not to be compiled. The driver builds each model
  once to check the settings and never trains or compiles, so inside this
  block the mark is skipped; after it, torch's own path is back. If torch
  moves the attribute, the block does nothing and the check is 1.5 s slower.
- `SeedRepeater` and `SpreadOptunaSearch` (Ray Tune, private fields;
  `runner.seed_search`): a configuration's spread over its seeds reaches its
  Optuna trial as user attributes. Repeater keeps a configuration's trials in
  `_trial_id_to_group`, OptunaSearch its Optuna trials in `_ot_trials`, and
  an Optuna trial takes attributes only until OptunaSearch tells it its value.
  With several objectives SeedRepeater averages each over a group's trials
  itself, through the group's `report`, `finished_reporting` and `scores`
  (Ray's private `_TrialGroup`).

- `MeetingPBT`, `MeetingPB2` (Ray Tune, private fields; `runner.population`):
  synchronous PBT holds a meeting once every live member has arrived; a
  member that ends first (diverged, or failed) never arrives and the rest
  would wait for ever. When one ends it is marked arrived, unscored
  (`_trial_state[t].last_train_time`, `.last_score`), and the meeting is
  replayed from a waiting member's `.last_result` once all are there
  (`_next_perturbation_sync`).

`check_internals()` runs before Ray starts: a Ray or Optuna whose internals
moved ends the study with one line naming the workaround, not a traceback
somewhere else.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from study.errors import UsageError

PINNED = {"ray": "2.60.0", "optuna": "5.0.0", "mlflow": "3.17.2"}  # as pyproject.toml pins

# MLflow client retries: 7 retries, backoff factor 2 (urllib3 caps one wait
# at 120 s) keep a request trying for 0+4+8+16+32+64+120 = 244 s
RETRIES, BACKOFF = 7, 2
MLFLOW_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(RETRIES),
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(BACKOFF),
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
NO_PRESTART = ("RAY_prestart_worker_first_driver", "0")  # unless the user set it


def mlflow_settings() -> tuple[tuple[str, str], ...]:
    """The MLflow client's settings in force in this process (its
    environment's, else ours): a driver ships them to its trials."""
    return tuple((key, os.environ.get(key, value)) for key, value in MLFLOW_ENV.items())


def mlflow_environment(driver: tuple[tuple[str, str], ...] = ()) -> None:
    """The MLflow client's settings for this process and the Ray processes it
    starts (a driver), or for itself (a trial): a trial takes its driver's
    (`driver`, from `mlflow_settings`), so that on any node it retries as
    long as its driver's outage message says (a node started with other
    settings, or none, would otherwise decide)."""
    os.environ.update(dict(driver))
    for key, value in MLFLOW_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no schema-migration chatter


_NO_COMPILE_MARK = "__dynamo_disable"  # where torch._compile caches the disabled function


@contextmanager
def no_compiler_import() -> Iterator[None]:
    """Optimisers built inside do not import torch._dynamo (see above)."""
    from torch.optim import Optimizer

    fn = getattr(Optimizer.add_param_group, "__wrapped__", None)
    skip = fn is not None and not hasattr(fn, _NO_COMPILE_MARK)
    if skip:
        setattr(fn, _NO_COMPILE_MARK, fn)  # "already disabled": call it as it is
    try:
        yield
    finally:
        if skip:
            delattr(fn, _NO_COMPILE_MARK)


def _checkpoint_manager() -> Any:
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    return _ExperimentCheckpointManager


def upload_whole() -> None:
    """Make every later Tune state save in this process synchronous (once)."""
    manager = _checkpoint_manager()
    save = manager.sync_up_experiment_state
    if getattr(save, "uploads_whole", False):
        return

    @functools.wraps(save)
    def whole(self: Any, save_fn: Callable[[], None], force: bool = False, wait: bool = False):
        return save(self, save_fn, force=force, wait=True)

    whole.uploads_whole = True  # type: ignore[attr-defined]
    manager.sync_up_experiment_state = whole


def _controller() -> Any:
    from ray.tune.execution.tune_controller import TuneController

    return TuneController


def keep_latest_checkpoints() -> None:
    """After each save of Tune's state in this process, delete every trial's
    checkpoints older than its latest, the one that state names, unless it
    is another trial's latest: under PBT a clone restarts from its donor's
    checkpoint, which the donor may have moved past meanwhile (once)."""
    controller = _controller()
    checkpoint = controller.checkpoint
    if getattr(checkpoint, "keeps_latest", False):
        return

    @functools.wraps(checkpoint)
    def pruning(self: Any, force: bool = False, wait: bool = False) -> None:
        manager = self._checkpoint_manager
        before = manager._last_save_time
        checkpoint(self, force=force, wait=wait)
        if manager._last_save_time != before:  # saved, not throttled
            needed = {path for trial in self._trials if (path := _latest_path(trial))}
            for trial in self._trials:
                drop_older_checkpoints(trial, needed)

    pruning.keeps_latest = True  # type: ignore[attr-defined]
    controller.checkpoint = pruning


def _latest_path(trial: Any) -> str | None:
    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result if manager else None
    return latest.checkpoint.path if latest and latest.checkpoint else None


def drop_older_checkpoints(trial: Any, needed: AbstractSet[str] = frozenset()) -> None:
    """Delete the trial's checkpoints older than its latest, and forget them;
    one that is `needed` (another trial's latest) stays, to go later."""
    from ray.train._internal.storage import _delete_fs_path

    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result if manager else None
    if latest is None:
        return
    keep = needed | {latest.checkpoint.path}
    older = [r for r in manager._checkpoint_results if r.checkpoint.path not in keep]
    if older:
        manager._checkpoint_results = [
            r for r in manager._checkpoint_results if r.checkpoint.path in keep
        ]
        trial.run_metadata.invalidate_cache()
        for result in older:
            # a state saved before an earlier deletion still lists it (--resume)
            with contextlib.suppress(FileNotFoundError):
                _delete_fs_path(fs=result.checkpoint.filesystem, fs_path=result.checkpoint.path)


def _cluster_state() -> Any:
    from ray._private.state import state

    return state


def autoscaler_ceiling() -> dict[str, float] | None:
    """The most of each resource one node can have on a cluster that an
    autoscaler can grow (its node types, from the cluster config it publishes
    in Ray's GCS); None on a fixed cluster."""
    try:
        config = _cluster_state().get_cluster_config()
    except Exception:  # checked at start-up; a cluster without a config is fixed
        return None
    if config is None:
        return None
    ceiling: dict[str, float] = {}
    for group in config.node_group_configs:
        if group.max_count != 0:
            for key, value in group.resources.items():
                ceiling[key] = max(ceiling.get(key, 0.0), float(value))
    return ceiling or None


@dataclass(frozen=True)
class Workaround:
    name: str
    library: str
    needs: str  # what it uses, as a reader would look it up
    present: Callable[[], bool]


def _has_upload_hook() -> bool:
    save = _checkpoint_manager().sync_up_experiment_state
    return {"save_fn", "force", "wait"} <= set(inspect.signature(save).parameters)


def _has_pruning_hooks() -> bool:
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.storage import _delete_fs_path  # noqa: F401

    parameters = set(inspect.signature(_controller().checkpoint).parameters)
    sources = (
        (_controller().__init__, "self._trials: "),
        (_checkpoint_manager().__init__, "self._last_save_time = "),
        (_CheckpointManager.__init__, "self._checkpoint_results: "),
    )
    found = all(text in inspect.getsource(fn) for fn, text in sources)
    return {"force", "wait"} <= parameters and found


def _has_cluster_config() -> bool:
    return callable(getattr(_cluster_state(), "get_cluster_config", None))


def _has_repeater_groups() -> bool:
    from ray.tune.search import repeater

    group = getattr(repeater, "_TrialGroup", None)  # what a multi-objective mean reads
    methods = ("report", "finished_reporting", "scores", "primary_trial_id")
    found = group is not None and all(m in inspect.getsource(group) for m in methods)
    return found and "self._trial_id_to_group = " in inspect.getsource(repeater.Repeater.__init__)


def _has_optuna_trials() -> bool:
    from ray.tune.search.optuna import OptunaSearch

    source = inspect.getsource(OptunaSearch)
    return "self._ot_trials = " in source and "self._completed_trials = " in source


def _has_pbt_meetings() -> bool:
    from ray.tune.schedulers import pbt

    fields = ("self.last_score", "self.last_train_time", "self.last_result")
    state = inspect.getsource(pbt._PBTTrialState.__init__)
    source = inspect.getsource(pbt.PopulationBasedTraining)
    names = ("self._trial_state", "self._next_perturbation_sync")
    return all(f in state for f in fields) and all(name in source for name in names)


WORKAROUNDS = (
    Workaround(
        "upload_whole",
        "ray",
        "ray.tune.execution.experiment_state._ExperimentCheckpointManager"
        ".sync_up_experiment_state(save_fn, force, wait)",
        _has_upload_hook,
    ),
    Workaround(
        "keep_latest_checkpoints",
        "ray",
        "ray.tune.execution.tune_controller.TuneController.checkpoint(force, wait), ._trials;"
        " _ExperimentCheckpointManager._last_save_time; _CheckpointManager._checkpoint_results",
        _has_pruning_hooks,
    ),
    Workaround(
        "autoscaler_ceiling",
        "ray",
        "ray._private.state.state.get_cluster_config()",
        _has_cluster_config,
    ),
    Workaround(
        "SeedRepeater",
        "ray",
        "ray.tune.search.repeater.Repeater._trial_id_to_group, _TrialGroup.report/.scores",
        _has_repeater_groups,
    ),
    Workaround(
        "MeetingPBT",
        "ray",
        "ray.tune.schedulers.pbt.PopulationBasedTraining._trial_state, "
        "._next_perturbation_sync; _PBTTrialState.last_score/.last_train_time/.last_result",
        _has_pbt_meetings,
    ),
    Workaround(
        "SpreadOptunaSearch",
        "ray",
        "ray.tune.search.optuna.OptunaSearch._ot_trials, ._completed_trials",
        _has_optuna_trials,
    ),
)


def check_internals(workarounds: tuple[Workaround, ...] = WORKAROUNDS) -> None:
    """Every workaround finds what it needs; else a UsageError naming it,
    the library's version and the pinned one."""
    for w in workarounds:
        try:
            ok = w.present()
        except (ImportError, AttributeError, TypeError, ValueError):
            ok = False
        if not ok:
            raise UsageError(
                f"{w.library} {version(w.library)} no longer has what genstudy's workaround "
                f"'{w.name}' needs ({w.needs}); install {w.library}=={PINNED[w.library]}, "
                "the version it is tested with"
            )


__all__ = [
    "NO_PRESTART",
    "WORKAROUNDS",
    "autoscaler_ceiling",
    "check_internals",
    "drop_older_checkpoints",
    "keep_latest_checkpoints",
    "mlflow_environment",
    "mlflow_settings",
    "upload_whole",
]
