"""MLflow to pandas: `load_runs` gives one row per trial, `load_history` the
per-epoch metrics in long format. Both work from the tracking store alone (a
sqlite file, a folder or a tracking server), with paged and bulk queries, so
thousands of trials cost a handful of requests per metric, not one per run."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from study.tracking import COURSE_TAGS, MODE_SHARE, SHARES_ARTIFACT, resolve_tracking_uri
from study.tracking import RUN_TAGS as TAGS

_PAGE = 1000  # runs per search request
_BULK = 100  # run ids per bulk history request (the REST API's limit)


class AnalysisError(RuntimeError):
    """Nothing to analyse (unknown experiment, no runs); one line for the user."""


def _client(tracking_uri: str | None) -> tuple[MlflowClient, str]:
    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(uri), uri


def _experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise AnalysisError(f"no experiment '{name}' in {uri}; run the study first")
    return exp.experiment_id


def _search(client: MlflowClient, exp_id: str, filter_string: str = "") -> Iterator[Run]:
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string, max_results=_PAGE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _typed(column: pd.Series) -> pd.Series:
    """MLflow params are strings: numbers and booleans back to their types."""
    if (column == "").all():
        return column
    if column.isin(["True", "False"]).all():
        return column == "True"
    try:
        return pd.to_numeric(column)
    except (ValueError, TypeError):
        return column


def load_runs(
    study: str, tracking_uri: str | None = None, experiment: str | None = None
) -> pd.DataFrame:
    """One row per trial of every invocation of `study`: its params (the full
    resolved config, typed), final metrics, outcome tags, `config_id`, `seed`,
    `run_id`, `parent_run_id`, `study_run` (the invocation's name) and
    `phase` ("search", or "confirm" for the fresh-seed re-runs). A metric
    named like a param (the VAE's `kl_weight`) becomes `<name>_final`."""
    client, uri = _client(tracking_uri)
    exp_id = _experiment_id(client, uri, experiment or study)
    parents, rows, param_names = {}, [], set()
    for run in _search(client, exp_id):
        tags = run.data.tags
        if MLFLOW_PARENT_RUN_ID not in tags:
            parents[run.info.run_id] = run.info.run_name
            continue
        params = dict(run.data.params)
        param_names |= set(params)
        metrics = {(f"{k}_final" if k in params else k): v for k, v in run.data.metrics.items()}
        rows.append(
            {
                "run_id": run.info.run_id,
                "parent_run_id": tags[MLFLOW_PARENT_RUN_ID],
                "run_name": run.info.run_name,
                "status": run.info.status,
                "start_time": pd.to_datetime(run.info.start_time, unit="ms"),
                **{k: tags.get(k) for k in TAGS},
                **params,
                **metrics,
            }
        )
    if not rows:
        raise AnalysisError(f"experiment '{experiment or study}' in {uri} has no trial runs")
    df = pd.DataFrame(rows)
    df.insert(2, "study_run", df["parent_run_id"].map(parents))
    fixed = {"run_id", "parent_run_id", "study_run", "run_name", "status", "start_time", *TAGS}
    for col in df.columns.difference(sorted(fixed)):
        if pd.api.types.is_string_dtype(df[col]) or df[col].dtype == object:
            df[col] = _typed(df[col].dropna()).reindex(df.index)
    df = df.reset_index(drop=True)
    _course_types(df)
    df.attrs["params"] = [c for c in df.columns if c in param_names]  # what configures a trial
    df.attrs["study"] = study  # its metric and mode, for the functions that need them
    return df


def _course_types(df: pd.DataFrame) -> None:
    """The course tags typed: collapse_epoch and ended_epoch numbers
    (collapse_epoch NaN: never collapsed; both NaN: not ended), recovered
    and hopping booleans."""
    *epochs, recovered, hopping = COURSE_TAGS
    for tag in epochs:
        df[tag] = pd.to_numeric(df[tag], errors="coerce")
    for tag in (recovered, hopping):
        df[tag] = df[tag].map({"true": True, "false": False})


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    return (items[i : i + size] for i in range(0, len(items), size))


def load_history(
    study: str,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    metrics: Iterable[str] | None = None,
    runs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per-epoch metrics in long format: run_id, trial_id, config_id, seed,
    outcome, metric, epoch, value. `metrics` defaults to every metric the runs
    logged; pass `runs` (from load_runs) to skip loading them again."""
    client, uri = _client(tracking_uri)
    runs = runs if runs is not None else load_runs(study, tracking_uri, experiment)
    ids = runs["run_id"].tolist()
    if metrics is None:
        metrics = _metric_keys(client, _experiment_id(client, uri, experiment or study), ids)
    keys = list(metrics)
    store = client._tracking_client.store  # the bulk query MLflow's UI uses
    frames = []
    for key in keys:
        for chunk in _chunks(ids, _BULK):
            try:
                found = store.get_metric_history_bulk_interval(
                    chunk, key, max_results=2500, start_step=None, end_step=None
                )
                rows = [(m.run_id, m.step, m.value) for m in found]
            except Exception:  # a store without the bulk call: one request per run
                rows = [
                    (rid, m.step, m.value)
                    for rid in chunk
                    for m in client.get_metric_history(rid, key)
                ]
            frames.append(
                pd.DataFrame(rows, columns=["run_id", "epoch", "value"]).assign(metric=key)
            )
    history = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["run_id", "epoch", "value", "metric"])
    )
    meta = runs[["run_id", "trial_id", "config_id", "seed", "outcome"]]
    history = history.merge(meta, on="run_id", how="left")
    cols = ["run_id", "trial_id", "config_id", "seed", "outcome", "metric", "epoch", "value"]
    return history[cols].sort_values(["run_id", "metric", "epoch"]).reset_index(drop=True)


def _metric_keys(client: MlflowClient, exp_id: str, run_ids: list[str]) -> list[str]:
    """Every metric key any of the runs logged (runs of one study log
    different keys: penalty and noise metrics, sampler names). A search
    returns each run's latest metric values, so no history is read."""
    keys: set[str] = set()
    for chunk in _chunks(run_ids, _BULK):
        ids = ", ".join(f"'{rid}'" for rid in chunk)
        for run in _search(client, exp_id, f"attributes.run_id IN ({ids})"):
            keys |= set(run.data.metrics)
    return sorted(keys)


def load_modes(
    study: str,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    runs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The mode histogram of every evaluation of every generating seed, tidy:
    run_id, trial_id, config_id, seed, outcome, epoch, mode, share. From the
    `mode_share_<k>` metrics, or for many modes (stacked MNIST's 1000) each
    run's mode_shares.json artifact."""
    client, _ = _client(tracking_uri)
    runs = runs if runs is not None else load_runs(study, tracking_uri, experiment)
    shares = [c for c in runs.columns if c.startswith(MODE_SHARE)]
    frames = []
    if shares:
        history = load_history(study, tracking_uri, experiment, shares, runs)
        history["mode"] = history.pop("metric").str.removeprefix(MODE_SHARE).astype(int)
        frames.append(history.rename(columns={"value": "share"}))
    else:
        frames += [_artifact_modes(client, run_id) for run_id in runs["run_id"]]
    cols = ["run_id", "epoch", "mode", "share"]
    tidy = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    if "trial_id" not in tidy:
        meta = runs[["run_id", "trial_id", "config_id", "seed", "outcome"]]
        tidy = tidy.merge(meta, on="run_id", how="left")
    order = ["run_id", "trial_id", "config_id", "seed", "outcome", "epoch", "mode", "share"]
    return tidy[order].sort_values(["run_id", "epoch", "mode"]).reset_index(drop=True)


def _artifact_modes(client: MlflowClient, run_id: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as d:
        try:
            saved = json.loads(
                Path(client.download_artifacts(run_id, SHARES_ARTIFACT, d)).read_text()
            )
        except (MlflowException, OSError):
            return pd.DataFrame(columns=["run_id", "epoch", "mode", "share"])
    rows = [
        (run_id, int(epoch), mode, share)
        for epoch, values in saved["epochs"].items()
        for mode, share in enumerate(values)
    ]
    return pd.DataFrame(rows, columns=["run_id", "epoch", "mode", "share"])
