"""Scale-out as a user sets it up: a Ray cluster of two raylets on loopback
(`ray start`), an `mlflow server`, and the CLI joining both with --address and
--tracking-uri. Trials must run on both nodes and everything reach the server."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from datasources.cache import cache_dir
from scoring.registry import prepare_reference
from tests.conftest import (
    free_port,
    http_server,
    mlflow_server_argv,
    ray_nodes,
    ray_token_env,
    steps,
    study_runs,
)


@pytest.fixture
def ray_env(tmp_path) -> dict[str, str]:
    return ray_token_env(tmp_path)


@pytest.fixture
def ray_cluster(ray_env, tmp_path) -> Iterator[str]:
    """A head and one worker raylet, one CPU each, each with its own empty
    genstudy cache (tmp_path/cache-head, cache-worker), as separate machines
    would have; yields the head's address."""
    envs = [{**ray_env, "GENSTUDY_CACHE": str(tmp_path / f"cache-{n}")} for n in ("head", "worker")]
    with ray_nodes(envs, cpus=1) as address:
        yield address


@pytest.fixture
def mlflow_server(tmp_path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with http_server(mlflow_server_argv(port, tmp_path), url, "/health", cwd=tmp_path):
        yield url, tmp_path / "server_artifacts"


def _other_classifier(driver_file: Path, node_cache: Path) -> None:
    """The worker node's cache holds a classifier of other weights, as one
    trained on other hardware could (same name, other bytes)."""
    blob = torch.load(driver_file, weights_only=True)
    blob["state"] = {k: v + 0.01 for k, v in blob["state"].items()}
    node_cache.mkdir()
    torch.save(blob, node_cache / driver_file.name)


def _node_processes(marker: bytes) -> list[int]:
    """Every process whose environment holds marker: a node's raylet, its
    agents and the trial workers it started."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes():
                pids.append(int(environ.parent.name))
        except OSError:
            continue
    return pids


def _results_seen(run_dir: Path, trial_id: str) -> int:
    """How many of a trial's reports the driver has processed: its result
    logger appends one line to the trial's result.json for each."""
    files = list(run_dir.glob(f"train_{trial_id}_*/result.json"))
    return len(files[0].read_text().splitlines()) if files else 0


EPOCHS = 12  # evaluated every 2: the node is lost after the first of six


def _kill_worker_node_mid_study(cli: subprocess.Popen, uri: str, tmp_path: Path) -> None:
    """Once a trial runs on each node and the driver has processed two
    checkpointed reports of each, the worker node dies (raylet, agents and
    trial process at once): the driver knows a checkpoint to continue from,
    on the surviving node."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        _, children = study_runs(uri)
        running = [r for r in children if r.info.status == "RUNNING"]
        seen = {
            r.data.tags["ray_node"]: _results_seen(tmp_path / "runs" / "nodeloss",
                                                   r.data.tags["trial_id"])
            for r in running
        }  # fmt: skip
        if len(seen) == 2 and min(seen.values()) >= 2:  # the trials ran on both raylets
            break
        assert cli.poll() is None, cli.stdout.read()[-3000:]
        time.sleep(0.5)
    else:
        raise AssertionError("no trial ran on each node in time")
    lost = _node_processes(f"GENSTUDY_CACHE={tmp_path / 'cache-worker'}".encode())
    assert lost
    for pid in lost:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_two_node_study_logs_everything_to_the_server_and_survives_losing_a_node(
    tmp_path, ray_env, ray_cluster, mlflow_server
):
    """One study as a user scales out: two raylets, an `mlflow server`, the
    CLI joining both; its worker node is lost mid-study. (One study for both:
    a cluster and a server cost a minute of the suite's two cores.)"""
    uri, artifacts = mlflow_server
    # the classifier the driver finds in (or trains into) this machine's cache
    shipped = prepare_reference("mnist5k")  # what the driver ships (this process may
    name = next(n for n in shipped if "mnist5k" in n)  # have built other classifiers)
    driver_file = cache_dir() / name
    _other_classifier(driver_file, tmp_path / "cache-worker")
    args = [
        "gan_stability", "--smoke", "--num-samples", "2", "--seeds", "2", "--address",
        ray_cluster, "--tracking-uri", uri, "--name", "nodeloss", "--set", "arch=mlp",
        "--set", f"epochs={EPOCHS}", "--set", "eval_every=2", "--set", "train_size=2000",
        "--set", "eval_samples=100", "--set", "checkpoint_seconds=0",
    ]  # fmt: skip
    cli = subprocess.Popen(
        [sys.executable, "-m", "study.run", *args],
        cwd=tmp_path, env=ray_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _kill_worker_node_mid_study(cli, uri, tmp_path)
        out, _ = cli.communicate(timeout=300)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, out[-3000:]
    assert "2 at once" in out  # the cluster's two CPUs, one per node
    assert "Outcomes: 4 trials" in out  # the table is complete
    # the output is the harness's own: no MLflow client's "View run ... at" lines
    assert "View run" not in out and "View experiment" not in out
    client = MlflowClient(uri)
    parents, children = study_runs(uri)
    assert len(parents) == 1 and len(children) == 4
    evaluated = list(range(2, EPOCHS + 1, 2))
    for run in children:  # every epoch once, the lost node's trial too
        assert run.info.status == "FINISHED"
        assert steps(client, run.info.run_id, "d_loss") == list(range(1, EPOCHS + 1))
        assert steps(client, run.info.run_id, "fid") == evaluated
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"final_metrics.json", "samples"} <= names
        pngs = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
        assert pngs == {f"samples/samples_epoch{e:04d}.png" for e in evaluated}
    # the lost node's trial continued from its checkpoint on the surviving node
    restored = [int(r.data.tags["restored_from_epoch"]) for r in children
                if "restored_from_epoch" in r.data.tags]  # fmt: skip
    assert restored and min(restored) >= 4, restored
    # all scoring with the driver's classifier: each node's cache now holds
    # exactly its bytes, the worker's own replaced
    sha = hashlib.sha256(driver_file.read_bytes()).hexdigest()
    assert {r.data.params["fid_weights_sha256"] for r in children} == {sha}
    for node in ("head", "worker"):
        installed = tmp_path / f"cache-{node}" / driver_file.name
        assert installed.read_bytes() == driver_file.read_bytes()
    summary = {a.path for a in client.list_artifacts(parents[0].info.run_id, "summary")}
    assert summary == {"summary/configurations.csv", "summary/trials.csv"}
    # uploaded through the server into its own store, not written beside the trials
    assert len(list(artifacts.rglob("samples_epoch0002.png"))) == 4
    assert not (tmp_path / "mlruns").exists()
