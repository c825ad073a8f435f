"""One seed's child run: its full config as params, per-epoch metrics
(step=epoch) buffered and written in one batch per evaluation, outcome tags,
sample grids and the final metrics as JSON; found again, not duplicated,
when its trial is retried or resumed."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from study.tracking.lineage import PARENT, REPLACED_TRIAL, same_lineage
from study.tracking.store import final_result, find_trial_run, log_params, param_text

_BATCH = 900  # MLflow accepts at most 1000 metrics and 100 params per log_batch


def _same_trial(logged: dict[str, str], params: dict[str, Any]) -> bool:
    """Same configuration and seed; where it runs (device, threads) may change."""
    return all(logged.get(k) == param_text(params.get(k)) for k in ("config_id", "seed"))


def _cloned_over(client: MlflowClient, run: Any, trial_id: str, lineage: dict[str, Any]) -> None:
    """End a run whose trial PBT cloned another member into: stopped there,
    its trial id moved to a tag of its own (the trial's runs are the new ones)."""
    source = lineage.get(PARENT, "its start")
    reason = f"cloned over by PBT: the trial continues from run {source}"
    tags = {"outcome": "stopped", "outcome_reason": reason, REPLACED_TRIAL: trial_id}
    client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.delete_tag(run.info.run_id, "trial_id")
    client.set_terminated(run.info.run_id, "FINISHED")


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
        self._pending_tags: dict[str, str] = {}
        # A reopened run may hold epochs logged after its last checkpoint (the
        # trial died between the two); those steps are kept, not written twice.
        self._logged: dict[str, set[int]] | None = {} if reopened else None

    @classmethod
    def open(
        cls,
        client: MlflowClient,
        *,
        experiment_id: str,
        parent_run_id: str,
        trial_id: str,
        name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        member: str = "",
        lineage: dict[str, Any] | None = None,
    ) -> TrialRun:
        """The trial's run (of its `member`, a seed pack's index), with `tags`
        set: the existing one when the trial is retried or resumed (found by
        its trial id), so no trial is ever logged twice. `lineage`: under
        PBT, the run's lineage params; a run of the trial from before the
        clone they name ends there, and a new one continues (lineage.py)."""
        found = find_trial_run(client, experiment_id, parent_run_id, trial_id, member)
        if found and lineage and not same_lineage(found.data.params, lineage):
            _cloned_over(client, found, trial_id, lineage)
            found = None
        params = params | (lineage or {})
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
        run = client.create_run(experiment_id, run_name=name, tags=tags)
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

    def log_params(self, params: dict[str, Any]) -> None:
        """Params known only after the run opened (logging the same value
        again, as a retry does, is allowed)."""
        log_params(self.client, self.run_id, params)

    def tag(self, tags: dict[str, str]) -> None:
        """Tags to write with the next flush (no request of their own)."""
        self._pending_tags |= tags

    def flush(self, tags: dict[str, str] | None = None) -> None:
        """The pending metrics and tags, and `tags`, in as few requests as
        MLflow takes."""
        tags, self._pending_tags = {**self._pending_tags, **(tags or {})}, {}
        batches = [self._pending[i : i + _BATCH] for i in range(0, len(self._pending), _BATCH)]
        *full, last = batches or [[]]
        for batch in full:
            self.client.log_batch(self.run_id, metrics=batch)
        tag_list = [RunTag(k, v) for k, v in tags.items()]
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

    def finish(
        self, outcome: str, reason: str, status: str = "FINISHED", tags: dict | None = None
    ) -> None:
        self.flush({"outcome": outcome, "outcome_reason": reason, **(tags or {})})
        self.client.set_terminated(self.run_id, status)
