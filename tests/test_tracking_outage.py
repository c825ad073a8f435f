"""The MLflow tracking server goes away mid-study. Within the client's retry
window the trials wait and go on (nothing lost, nothing twice); past it the
study ends with exit code 3 and the resume hint, and --resume, once the
server is back, continues every trial from its checkpoint in its own run."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from mlflow import MlflowClient

from study.tracking.store import retry_window
from tests.conftest import (
    RayHead,
    free_port,
    http_server,
    mlflow_server_argv,
    start_cli,
    steps,
    study_runs,
)

EVAL_EVERY = 2
OUTAGE_S = 10  # a longer outage only waits longer for the retry that finds the server
# short retry settings: a window of a second or two, so the outage is past it
SHORT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def _study(name: str, url: str, epochs: int) -> list[str]:
    return [
        "gan_stability", "--smoke", "--num-samples", "1", "--seeds", "1",
        "--tracking-uri", url, "--experiment", name, "--name", name,
        "--set", "arch=mlp", "--set", f"epochs={epochs}", "--set", f"eval_every={EVAL_EVERY}",
        "--set", "train_size=1500", "--set", "width=256", "--set", "checkpoint_seconds=0",
    ]  # fmt: skip


def _start(args: list[str], cwd: Path, ray: RayHead, env: dict[str, str] | None = None):
    """The study on the tests' shared Ray, its command's environment
    changed by `env`: its trials take its MLflow settings, not their node's."""
    cwd.mkdir()
    args, env = [*args, "--address", ray.address], {**ray.env, **(env or {})}
    cli = start_cli(args, cwd, stderr=subprocess.STDOUT, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(cli.stdout), daemon=True).start()
    return cli, lines


def _evaluating(url: str, name: str, cli: subprocess.Popen, lines: list[str]) -> bool:
    """Whether the trial of study `name` has logged an evaluation."""
    assert cli.poll() is None, "".join(lines)[-3000:]
    _, children = study_runs(url, name)
    client = MlflowClient(url)
    return len(children) == 1 and bool(steps(client, children[0].info.run_id, "fid"))


def _every_epoch_once(url: str, name: str, epochs: int) -> list:
    parents, children = study_runs(url, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    client = MlflowClient(url)
    for run in children:
        assert steps(client, run.info.run_id, "d_loss") == list(range(1, epochs + 1))
        assert steps(client, run.info.run_id, "fid") == list(range(EVAL_EVERY, epochs + 1, 2))
    return children


def test_an_outage_within_the_retry_window_is_ridden_out_and_one_past_it_resumes(
    tmp_path, shared_ray
):
    """Two studies on one server, stopped once both are training: `within`
    (the default retries) waits the outage out; `past` (short retries) gives
    up with exit code 3 and the resume hint. The server stays down until it
    has, then comes back: `within` finishes, `past` is resumed."""
    port = free_port()
    url, argv = f"http://127.0.0.1:{port}", mlflow_server_argv(port, tmp_path)
    with http_server(argv, url, "/health", cwd=tmp_path):
        within, within_out = _start(_study("within", url, 16), tmp_path / "within", shared_ray)
        # on the same Ray: its trial gets the short retries from its driver
        past, past_out = _start(_study("past", url, 8), tmp_path / "past", shared_ray, SHORT)
        deadline = time.monotonic() + 240
        while not (_evaluating(url, "within", within, within_out)
                   and _evaluating(url, "past", past, past_out)):  # fmt: skip
            assert time.monotonic() < deadline, "".join(within_out + past_out)[-3000:]
            time.sleep(0.5)
    stopped = time.monotonic()
    assert past.wait(timeout=300) == 3, "".join(past_out)[-3000:]
    out = "".join(past_out)
    assert "Traceback" not in out, out[-3000:]
    assert out.strip().splitlines()[-1] == (
        f"error: the tracking store {url} stopped answering mid-study; "
        "once it is back, continue with --resume --name past"
    )
    # at least OUTAGE_S: several of `within`'s retries fail (at 4 and 12 s
    # after its first failed request), and the next one finds the server back
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
    with http_server(argv, url, "/health", cwd=tmp_path):
        outage, back = time.monotonic() - stopped, time.time() * 1000
        # `past` resumes while `within` still waits for its next retry
        resume = ["gan_stability", "--resume", "--name", "past"]  # the address is saved
        resumed = start_cli(resume, tmp_path / "past", env=shared_ray.env)
        assert within.wait(timeout=400) == 0, "".join(within_out)[-3000:]
        assert "Outcomes: 1 trial:" in "".join(within_out)
        client = MlflowClient(url)
        for run in _every_epoch_once(url, "within", 16):
            # it was mid-study: it logged evaluations after the outage, no attempt failed
            fid = client.get_metric_history(run.info.run_id, "fid")
            assert max(m.timestamp for m in fid) > back
            assert "restored_from_epoch" not in run.data.tags

        stdout, stderr = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, stderr[-3000:]
        assert "Outcomes: 1 trial:" in stdout
        # it continued from its checkpoint in its own run, not from scratch
        for run in _every_epoch_once(url, "past", 8):
            assert int(run.data.tags["restored_from_epoch"]) >= EVAL_EVERY
    assert OUTAGE_S <= outage < retry_window()
