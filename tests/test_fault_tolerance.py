"""A trial process killed mid-training is retried from its last checkpoint."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from tests.conftest import cli_env


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below pid: the local Ray cluster a
    CLI starts is its own subtree, so this never touches anyone else's."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                cmd = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            out.append((child, cmd.decode(errors="replace")))
            todo.append(child)
    return out


def _steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_killed_trial_resumes_from_its_checkpoint_without_duplicate_epochs(tmp_path):
    uri = f"sqlite:///{tmp_path}/store.db"
    args = [
        "gan_stability",
        "--smoke",
        "--num-samples",
        "1",
        "--seeds",
        "1",
        "--tracking-uri",
        uri,
        "--set",
        "arch=mlp",
        "--set",
        "epochs=40",
        "--set",
        "eval_every=2",
        "--set",
        "eval_samples=100",
    ]
    cli = subprocess.Popen(
        [sys.executable, "-m", "study.run", *args],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = MlflowClient(uri)
        deadline, run_id = time.monotonic() + 180, None
        while time.monotonic() < deadline:  # wait for the first checkpoint's epochs in MLflow
            exp = (
                client.get_experiment_by_name("gan_stability")
                if Path(f"{tmp_path}/store.db").exists()
                else None
            )
            runs = (
                [
                    r
                    for r in client.search_runs([exp.experiment_id])
                    if "mlflow.parentRunId" in r.data.tags
                ]
                if exp
                else []
            )
            checkpoints = list((tmp_path / "runs").glob("*/train_*/checkpoint_*"))
            if runs and checkpoints and _steps(client, runs[0].info.run_id, "fid"):
                run_id = runs[0].info.run_id
                break
            time.sleep(0.5)
        assert run_id, "the trial never reported a checkpoint"
        workers = [p for p, cmd in _descendants(cli.pid) if "ImplicitFunc" in cmd]
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        stdout, stderr = cli.communicate(timeout=300)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, stderr[-3000:]
    runs = [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]
    assert [r.info.run_id for r in runs] == [run_id]  # the retry re-opened the same run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] in ("ok", "collapsed")
    # every epoch exactly once, across the kill
    assert _steps(client, run_id, "d_loss") == list(range(1, 41))
    assert _steps(client, run_id, "fid") == list(range(2, 41, 2))
    assert "Outcomes: 1 trials" in stdout
    # it continued from a checkpoint: a restart from scratch would not say so
    restored = int(run.data.tags["restored_from_epoch"])
    assert restored % 2 == 0 and 2 <= restored < 40
