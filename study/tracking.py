"""Everything MLflow: the store (checked, created), the experiment (the
study), one parent run per invocation (opened, reopened on --resume, closed),
one child run per trial with its full config, per-epoch metrics (step=epoch),
outcome tags, sample grids and the final metrics as JSON; and the driver-side
callback that closes the runs of trials that could not close their own."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

logging.getLogger("mlflow").setLevel(logging.WARNING)  # no schema-migration chatter
# no "View run ... at" lines from a tracking server's client, in the driver or
# a trial (each would also cost a request per finished run)
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# The client's retries are what carry a trial across a tracking-server outage.
# Set here, deliberately, for the driver and every trial: 7 retries, backoff
# factor 2 (urllib3 caps one wait at 120 s) keep a request trying for
# 0+4+8+16+32+64+120 = 244 s. An environment that sets them wins.
RETRIES, BACKOFF = 7, 2
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(RETRIES))
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(BACKOFF))

FINAL_METRICS = "final_metrics.json"  # the artifact holding a trial's last result
_BATCH = 900  # MLflow accepts at most 1000 metrics and 100 params per log_batch


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message is one line for the user."""


def resolve_tracking_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else MLflow's default; local
    paths made absolute, because Ray runs trials in other working directories."""
    import mlflow

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri:  # a bare folder means MLflow's file store
        return Path(uri).resolve().as_uri()
    return uri


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any trial starts, when the store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                r.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"tracking server {uri} does not answer ({reason})") from None
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.exists():  # checked without creating it: a failed command writes nothing
            if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
                raise TrackingError(f"cannot create the MLflow database in {path.parent}")
            return
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # any store error is a tracking problem for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(f"cannot use tracking URI {uri}: {first}") from None


def import_store(uri: str) -> None:
    """Import MLflow's SQL store (a second and a half of imports) without
    touching the store: run in a thread while Ray starts, it is ready when the
    driver opens the store. Creating a new store waits for the checks that
    need Ray: a refused study writes nothing."""
    if uri.startswith(("sqlite:", "postgresql", "mysql", "mssql")):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


def init_store(uri: str) -> None:
    """Create a new sqlite store's tables under a file lock: two studies
    started at once on a fresh store otherwise both run MLflow's schema
    migrations and one of them fails (seen in the tests)."""
    if uri.startswith("sqlite:///"):
        from filelock import FileLock

        with FileLock(uri[len("sqlite:///") :] + ".lock"):
            MlflowClient(uri).search_experiments(max_results=1)


# What the study's experiments are, for MLflow's clients and UI. (The 3.17 UI
# reads the kind from a per-browser switch instead, GenAI unless the address
# says otherwise: hence `ui_url`.)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves


def retry_window() -> float:
    """Seconds one MLflow request keeps retrying a server that does not
    answer, with the retry settings in force (urllib3's backoff, jitter left
    out): the longest outage a trial rides out without failing."""
    retries = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    factor = float(os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    return sum(min(120.0, factor * 2 ** (n - 1)) for n in range(2, retries + 1))


def answers(uri: str) -> bool:
    """Whether the tracking store can be reached now."""
    try:
        check_tracking_uri(uri)
    except TrackingError:
        return False
    return True


def ui_url(tracking_uri: str, exp_id: str) -> str:
    """The experiment's runs table in the MLflow UI: `workflowType` makes the
    3.17 UI open on the runs (and remember it), not on its GenAI overview."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else UI_DEFAULT
    return f"{base}/#/experiments/{exp_id}?workflowType=machine_learning"


def experiment_id(client: MlflowClient, name: str) -> str:
    """The study's experiment, created or restored, tagged as model training."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags=dict([EXPERIMENT_KIND]))
        except MlflowException:  # another study created it a moment ago
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    key, kind = EXPERIMENT_KIND
    if exp.tags.get(key) != kind:  # an experiment made before, or by hand
        client.set_experiment_tag(exp.experiment_id, key, kind)
    return exp.experiment_id


def start_parent(
    client: MlflowClient, exp_id: str, name: str, tags: dict[str, str], params: dict[str, Any]
) -> str:
    run = client.create_run(exp_id, run_name=name, tags=tags)
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def open_parent(
    client: MlflowClient,
    exp_id: str,
    parent_run_id: str | None,
    name: str,
    tags: dict[str, str],
    params: dict[str, Any],
) -> str:
    """The invocation's parent run: created with its tags and params, or the
    existing one set running again on --resume."""
    if parent_run_id is None:
        return start_parent(client, exp_id, name, tags, params)
    client.update_run(parent_run_id, status="RUNNING")
    return parent_run_id


def close_parent(
    client: MlflowClient, run_id: str, summary: Path | None, status: str = "FINISHED"
) -> None:
    """Attach the summary tables (if any) and end the parent run."""
    if summary is not None:
        client.log_artifacts(run_id, str(summary), "summary")
    client.set_terminated(run_id, status)


def children(client: MlflowClient, exp_id: str, parent_run_id: str, where: str = "") -> list[Any]:
    """The child runs of a parent, optionally filtered further (`where`)."""
    query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'" + (
        f" and {where}" if where else ""
    )
    return client.search_runs([exp_id], query, max_results=50_000)


def trial_runs(client: MlflowClient, exp_id: str, parent_run_id: str, trial_id: str) -> list:
    """The child runs of a Tune trial: one, or a seed pack's one per member."""
    return children(client, exp_id, parent_run_id, f"tags.trial_id = '{trial_id}'")


def find_trial_run(
    client: MlflowClient, exp_id: str, parent_run_id: str, trial_id: str, member: str = ""
) -> Any:
    """The child run of a Tune trial (of its `member`, in a seed pack), or None."""
    found = [
        r
        for r in trial_runs(client, exp_id, parent_run_id, trial_id)
        if r.data.tags.get("member", "") == member
    ]
    return found[0] if found else None


def final_result(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """The last result a run recorded as its end, or None (it has none)."""
    with tempfile.TemporaryDirectory() as d:
        try:
            path = client.download_artifacts(run_id, FINAL_METRICS, d)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(path).read_text())


def recorded_ends(
    client: MlflowClient, exp_id: str, parent_run_id: str, trial_ids: set[str]
) -> dict[str, list[dict[str, Any]]]:
    """By trial id, the final results the runs of these trials recorded (a
    seed pack's in member order), for the trials every run of which ended
    with one; one search for them all."""
    runs: dict[str, list[Any]] = {}
    for run in children(client, exp_id, parent_run_id):
        if run.data.tags.get("trial_id") in trial_ids:
            runs.setdefault(run.data.tags["trial_id"], []).append(run)
    out = {}
    for trial_id, found in runs.items():
        # a run stopped early (closed by the driver) has no final result
        stopped = [r.data.tags.get("outcome") == "stopped" for r in found]
        if any(r.info.status != "FINISHED" for r in found) or any(stopped):
            continue
        found.sort(key=lambda r: int(r.data.tags.get("member") or 0))
        results = [final_result(client, r.info.run_id) for r in found]
        ended = [r for r in results if r is not None]
        if len(ended) == len(found):
            out[trial_id] = ended
    return out


def close_run(client: MlflowClient, run_id: str, outcome: str, reason: str, status: str) -> None:
    client.log_batch(run_id, tags=[RunTag("outcome", outcome), RunTag("outcome_reason", reason)])
    client.set_terminated(run_id, status)


def kill_running_children(client: MlflowClient, exp_id: str, parent_run_id: str) -> None:
    """Mark the runs of trials stopped by an interrupt KILLED; --resume re-opens them."""
    for run in children(client, exp_id, parent_run_id, "attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, "KILLED")


def _param_text(value: Any) -> str:
    return str(value)[:6000]  # MLflow's limit on a param value


def _same_trial(logged: dict[str, str], params: dict[str, Any]) -> bool:
    """Same configuration and seed; where it runs (device, threads) may change."""
    return all(logged.get(k) == _param_text(params.get(k)) for k in ("config_id", "seed"))


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, _param_text(v)) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


class TrialRun:
    """One trial's child run. Metrics are buffered and written in one batch at
    each evaluation. A retry continues from its last checkpoint, which may be
    older than what MLflow holds: a reopened run skips the steps it has, so
    every epoch is written once."""

    def __init__(
        self, client: MlflowClient, run_id: str, reopened: bool = False, ended: str | None = None
    ) -> None:
        self.client = client
        self.run_id = run_id
        self._ended = ended  # the outcome reason of a reopened run that had ended
        self._pending: list[Metric] = []
        # A reopened run may hold epochs logged after its last checkpoint (the
        # trial died between the two); those steps are kept, not written twice.
        self._logged: dict[str, set[int]] | None = {} if reopened else None

    @classmethod
    def open(
        cls,
        client: MlflowClient,
        exp_id: str,
        parent_run_id: str,
        trial_id: str,
        name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        member: str = "",
    ) -> TrialRun:
        """The trial's run (of its `member`, a seed pack's index), with `tags`
        set: the existing one when the trial is retried or resumed (found by
        its trial id), so no trial is ever logged twice."""
        found = find_trial_run(client, exp_id, parent_run_id, trial_id, member)
        if found and _same_trial(found.data.params, params):
            tags_found = found.data.tags
            ended = found.info.status == "FINISHED" and "outcome" in tags_found
            reason = tags_found.get("outcome_reason", "") if ended else None
            run = cls(client, found.info.run_id, reopened=True, ended=reason)
            # a run that ended stays ended (its end is reported again, see
            # recorded_end); any other is running again
            if not ended:
                client.update_run(found.info.run_id, status="RUNNING")
            run.set_tags(tags)
            return run
        if found:
            # a trial id reused for another config: the driver died before Tune
            # saved the trial it first named so; that attempt is void
            client.delete_run(found.info.run_id)
        tags = {
            MLFLOW_PARENT_RUN_ID: parent_run_id,
            "trial_id": trial_id,
            MLFLOW_RUN_NAME: name,
            **({"member": member} if member else {}),
            **tags,
        }
        run = client.create_run(exp_id, run_name=name, tags=tags)
        log_params(client, run.info.run_id, params)
        return cls(client, run.info.run_id)

    def recorded_end(self) -> tuple[dict[str, Any], str] | None:
        """(final result, reason) when this run had already ended: the driver
        died after the trial finished and before Tune saved that, so Tune
        retries it from an older checkpoint. None for any other run."""
        if self._ended is None:
            return None
        result = final_result(self.client, self.run_id)
        # None: it ended without a final result (stopped early): train
        return None if result is None else (result, self._ended)

    def add(self, step: int, metrics: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        self._pending += [
            Metric(k, float(v), ts, step)
            for k, v in metrics.items()
            if not self._already_logged(k, step)
        ]

    def _already_logged(self, key: str, step: int) -> bool:
        if self._logged is None:
            return False
        if key not in self._logged:
            history = self.client.get_metric_history(self.run_id, key)
            self._logged[key] = {m.step for m in history}
        return step in self._logged[key]

    def flush(self, tags: dict[str, str] | None = None) -> None:
        """The pending metrics, and `tags`, in as few requests as MLflow takes."""
        batches = [self._pending[i : i + _BATCH] for i in range(0, len(self._pending), _BATCH)]
        *full, last = batches or [[]]
        for batch in full:
            self.client.log_batch(self.run_id, metrics=batch)
        tag_list = [RunTag(k, v) for k, v in (tags or {}).items()]
        if last or tag_list:
            self.client.log_batch(self.run_id, metrics=last, tags=tag_list)
        self._pending = []

    def log_file(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def log_json(self, obj: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / name
            path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
            self.log_file(path)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def finish(self, outcome: str, reason: str, status: str = "FINISHED") -> None:
        self.flush({"outcome": outcome, "outcome_reason": reason})
        self.client.set_terminated(self.run_id, status)
