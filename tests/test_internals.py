"""Every workaround for a library's internals lives in study/internals.py and
is checked at start-up: a library whose internals moved ends a study with
one line naming the workaround, not a traceback elsewhere. Nothing of ours
changes the environment when imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from study.errors import UsageError
from study.internals import (
    BACKOFF,
    WORKAROUNDS,
    Workaround,
    check_internals,
    mlflow_environment,
    mlflow_settings,
)
from tests.conftest import ROOT, cli_env, run_cli


def test_the_pinned_libraries_have_what_every_workaround_needs():
    check_internals()  # raises on a moved internal
    names = {w.name for w in WORKAROUNDS}
    assert names == {
        "upload_whole", "keep_latest_checkpoints", "autoscaler_ceiling", "SeedRepeater",
        "SpreadOptunaSearch", "MeetingPBT",
    }  # fmt: skip


def test_a_moved_internal_is_one_line_naming_the_workaround(monkeypatch):
    from ray.tune.execution import experiment_state

    manager = experiment_state._ExperimentCheckpointManager
    monkeypatch.delattr(manager, "sync_up_experiment_state")
    with pytest.raises(UsageError) as e:
        check_internals()
    message = str(e.value)
    assert "\n" not in message and "'upload_whole'" in message and "ray==2.60.0" in message
    renamed = Workaround("renamed", "optuna", "optuna.some.private", lambda: False)
    with pytest.raises(UsageError, match="'renamed'.*optuna==5.0.0"):
        check_internals((renamed,))


def test_the_cli_refuses_a_ray_whose_internals_moved_with_one_line_and_nothing_written(tmp_path):
    """As a newer Ray would: the private method upload_whole patches is gone."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "from ray.tune.execution import experiment_state as s\n"
        "del s._ExperimentCheckpointManager.sync_up_experiment_state\n"
    )
    env = {"PYTHONPATH": f"{site}:{ROOT}"}
    out = run_cli(["sparse_ae", "--smoke", "--tracking-uri", f"sqlite:///{tmp_path}/x.db"],
                  tmp_path, env=env)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "upload_whole" in out.stderr, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no store, no run folder


def test_a_trial_retries_mlflow_as_its_driver_does_whatever_its_node_says(monkeypatch):
    """The driver's outage message promises its own retry window; a trial on
    a node started with other settings takes the driver's (shipped in the
    plan), and our defaults fill what neither set."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", raising=False)
    driver = dict(mlflow_settings())
    assert driver["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert driver["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == str(BACKOFF)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "9")  # the trial's node
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "5")
    mlflow_environment(tuple(driver.items()))
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == str(BACKOFF)


def test_importing_our_modules_changes_no_environment_variable():
    libraries = "import mlflow, optuna, ray, ray.tune, torch"
    ours = (
        "import analysis.report, analysis.runs, study.runner.api, study.runner.cli, "
        "study.runner.tune_run, study.tracking.store, study.trial.trainable"
    )
    code = (
        f"import os; {libraries}; before = dict(os.environ); {ours}; "
        "print(sorted(k for k in set(before) | set(os.environ) "
        "if before.get(k) != os.environ.get(k)))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_drivers_model_check_builds_optimisers_without_importing_the_compiler(tmp_path):
    """prepare() builds every searched model, optimisers too, and leaves
    torch._dynamo unimported (1.5 s of CPU a driver); torch's own path is
    back afterwards: the next optimiser built imports it as usual."""
    code = (
        "import sys, torch\n"
        "from study.request import StudyRequest\n"
        "from study.runner.prepare import prepare\n"
        f"prepare(StudyRequest('gan_stability', storage='{tmp_path}/runs', smoke=True,\n"
        f"        tracking_uri='sqlite:///{tmp_path}/s.db'))\n"
        "print('torch._dynamo' in sys.modules)\n"
        "torch.optim.Adam(torch.nn.Linear(2, 2).parameters())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["False", "True"]


def test_tune_keeps_each_trials_latest_checkpoint_without_a_save_per_checkpoint(
    tmp_path, shared_ray, monkeypatch
):
    """A trial checkpointing at each of 8 evaluations: Tune saves its state on
    its own clock, not after each checkpoint (which costs n x n over a study
    of n trials), and the older checkpoints are gone after the saves, the
    latest (which the saved state names) kept."""
    from ray.tune.execution.tune_controller import TuneController

    saves = []
    save = TuneController.save_to_dir
    monkeypatch.setattr(TuneController, "save_to_dir", lambda self: saves.append(save(self)))
    settings = {"arch": "mlp", "epochs": 8, "eval_every": 1, "checkpoint_seconds": 0,
                "train_size": 256, "eval_samples": 100}  # fmt: skip
    args = ["gan_stability", "--smoke", "--num-samples", "1", "--seeds", "1", "--name", "kept"]
    args += [f"--set={k}={v}" for k, v in settings.items()]
    out = shared_ray.run_study([*args, "--tracking-uri", f"sqlite:///{tmp_path}/s.db"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (trial,) = (tmp_path / "runs" / "kept").glob("train_*")
    reports = (trial / "result.json").read_text().splitlines()
    assert len(reports) == 8  # eight checkpoints
    assert [p.name for p in trial.glob("checkpoint_*")] == ["checkpoint_000007"]
    assert 1 <= len(saves) < 8, len(saves)


def test_a_trials_older_checkpoints_go_even_where_a_resumed_state_lists_deleted_ones(tmp_path):
    """After --resume, Tune's restored state can list a checkpoint deleted
    after an earlier save: it is passed over; the others older than the
    latest are deleted, the latest kept and alone in Tune's list."""
    from ray.train import Checkpoint, CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    from study.internals import drop_older_checkpoints

    metadata = _TrainingRunMetadata()
    metadata.checkpoint_manager = _CheckpointManager(CheckpointConfig())
    folders = [tmp_path / f"checkpoint_00000{i}" for i in range(3)]
    for folder in folders[1:]:  # checkpoint_000000: deleted after an earlier save
        folder.mkdir()
    for folder in folders:
        result = _TrainingResult(Checkpoint(str(folder)), {})
        metadata.checkpoint_manager.register_checkpoint(result)
    drop_older_checkpoints(SimpleNamespace(run_metadata=metadata))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000002"]
    kept = metadata.checkpoint_manager.best_checkpoint_results
    assert [Path(r.checkpoint.path).name for r in kept] == ["checkpoint_000002"]


def test_a_checkpoint_another_trial_restarts_from_is_kept_until_it_moves_on(tmp_path):
    """Under PBT a clone's latest checkpoint is its donor's: the donor's
    pruning keeps it while the clone needs it (`needed`), stays listed, and
    goes at the first pruning after."""
    from ray.train import Checkpoint, CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    from study.internals import drop_older_checkpoints

    metadata = _TrainingRunMetadata()
    metadata.checkpoint_manager = _CheckpointManager(CheckpointConfig())
    folders = [tmp_path / f"checkpoint_00000{i}" for i in range(3)]
    for folder in folders:
        folder.mkdir()
        metadata.checkpoint_manager.register_checkpoint(
            _TrainingResult(Checkpoint(str(folder)), {})
        )
    donor = SimpleNamespace(run_metadata=metadata)
    drop_older_checkpoints(donor, {str(folders[0])})  # a clone restarts from the first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000000", "checkpoint_000002"]
    drop_older_checkpoints(donor)  # the clone has checkpointed on its own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000002"]
