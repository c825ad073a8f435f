"""The MLflow store: checked and created, the experiment (the study), one
parent run per invocation (opened, reopened on --resume, closed), finding a
parent's child runs and the ends they recorded. A trial's own run is
`trial_run.TrialRun`."""

from __future__ import annotations

import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from study.internals import MLFLOW_ENV
from study.tracking.lineage import REPLACED_TRIAL

FINAL_METRICS = "final_metrics.json"  # the artifact holding a trial's last result
# a generating seed's mode histograms: metrics mode_share_<k> for up to
# MODE_METRICS_MAX modes, else this artifact: {"modes": K, "epochs": {epoch: [share, ...]}}
MODE_SHARE = "mode_share_"
MODE_METRICS_MAX = 100
SHARES_ARTIFACT = "mode_shares.json"
# the tags of a child run a reader may rely on (a seed pack's runs add `pack`,
# its size, and `member`, the seed's place in it)
RUN_TAGS = (
    "outcome", "outcome_reason", "trial_id", "ray_node", "restored_from_epoch", "phase", "pack",
    "member", "collapse_epoch", "recovered", "hopping", "ended_epoch", REPLACED_TRIAL,
)  # fmt: skip
# of those, the course of a seed's evaluations ("none": it never collapsed)
COURSE_TAGS = ("collapse_epoch", "ended_epoch", "recovered", "hopping")
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

    def setting(key: str) -> str:
        return os.environ.get(key, MLFLOW_ENV[key])

    retries = int(setting("MLFLOW_HTTP_REQUEST_MAX_RETRIES"))
    factor = float(setting("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"))
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


def artifact_root(tracking_uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside an sqlite store (its
    folder's `mlartifacts`), not in `./mlruns` of wherever the study was
    started (MLflow's default); None (the store's own default) otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()


def experiment_id(client: MlflowClient, name: str, tracking_uri: str = "") -> str:
    """The study's experiment, created (its artifacts beside an sqlite
    store) or restored, tagged as model training."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root(tracking_uri)
        where = f"{root}/{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}" if root else None
        try:
            return client.create_experiment(
                name, artifact_location=where, tags=dict([EXPERIMENT_KIND])
            )
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


def param_text(value: Any) -> str:
    return str(value)[:6000]  # MLflow's limit on a param value


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, param_text(v)) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
