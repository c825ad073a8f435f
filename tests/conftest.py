"""Shared fixtures. Tests use the real on-disk cache (GENSTUDY_CACHE or
~/.cache/genstudy), so the feature classifier is trained once per machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's console scripts: ray, mlflow, ...


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def cli_env() -> dict[str, str]:
    """The environment a CLI test runs in: this checkout, no inherited store."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_cli(
    args: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m study.run ...` as a user runs it, in its own working directory."""
    return subprocess.run(
        [sys.executable, "-m", "study.run", *args],
        cwd=cwd,
        env={**cli_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(
    args: list[str], cwd: Path, stderr: int = subprocess.PIPE, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """The CLI started in the background, output piped, for tests that act on
    it while it runs (kill it, interrupt it, look at its processes)."""
    return subprocess.Popen(
        [sys.executable, "-m", "study.run", *args],
        cwd=cwd,
        env={**cli_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def wait_http(url: str, process: subprocess.Popen, seconds: float = 90) -> None:
    """Until url answers; fails if the server process dies or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            assert process.poll() is None, f"the server behind {url} exited"
            assert time.monotonic() < deadline, f"{url} did not answer in {seconds:g} s"
            time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_server_argv(port: int, root: Path) -> list[str]:
    """A local `mlflow server` on root/server.db that stores artifacts itself
    (proxied uploads) under root/server_artifacts."""
    return [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/server.db",
        "--artifacts-destination", str(root / "server_artifacts"),
    ]  # fmt: skip


@contextmanager
def http_server(
    argv: list[str], url: str, health: str, cwd: Path | None = None, env: dict | None = None
) -> Iterator[str]:
    """A server (its own process group) started with argv; yields url once
    url + health answers, and kills the server and its children after."""
    server = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env or cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(url + health, server)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


# one smoke run of each study into one store, shared by every test that reads
# a finished study (the CLI's output, MLflow's contents, reports, notebooks)
SMOKE_STUDIES = (
    "gan_stability",
    "sparse_ae",
    "denoising_ae",
    "vae_kl",
    "dvae_temperature",
    "diffusion_schedule",
)


@dataclass
class SmokeStore:
    uri: str
    root: Path
    outputs: dict[str, subprocess.CompletedProcess]


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory) -> SmokeStore:
    root = tmp_path_factory.mktemp("smoke_store")
    uri = f"sqlite:///{root}/store.db"

    def smoke(study: str) -> subprocess.CompletedProcess:
        # 2 configurations x 2 seeds each (a grid study: 2 of its points)
        args = [study, "--smoke", "--num-samples", "2", "--tracking-uri", uri]
        return run_cli([*args, "--name", f"smoke-{study}"], root)

    # two studies at a time: each spends seconds starting Ray, mostly waiting
    with ThreadPoolExecutor(max_workers=2) as pool:
        outputs = dict(zip(SMOKE_STUDIES, pool.map(smoke, SMOKE_STUDIES), strict=True))
    for study, out in outputs.items():
        assert out.returncode == 0, f"{study}: {out.stderr[-3000:]}"
    return SmokeStore(uri, root, outputs)


def steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


def study_runs(uri: str, experiment: str = "gan_stability"):
    """(parent runs, child runs) of an experiment, deleted runs left out."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]
