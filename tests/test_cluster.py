"""Scale-out as a user sets it up: a Ray cluster of two raylets on loopback
(`ray start`), an `mlflow server`, and the CLI joining both with --address and
--tracking-uri; with faults throughout the study (the chaos test). Trials must
run on both nodes and everything reach the server, once."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from datasources.cache import cache_dir
from scoring.outcomes import RUNNING, SCORED
from scoring.registry import prepare_reference
from study.runner.summary import outcome_line
from study.studies import defaults as d
from tests.conftest import (
    RayNodes,
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
def ray_cluster(ray_env, tmp_path) -> Iterator[RayNodes]:
    """A head and one worker raylet, one CPU each, each with its own empty
    genstudy cache (tmp_path/cache-head, cache-worker), as separate machines
    would have."""
    envs = [{**ray_env, "GENSTUDY_CACHE": str(tmp_path / f"cache-{n}")} for n in ("head", "worker")]
    with ray_nodes(envs, cpus=1) as nodes:
        yield nodes


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


EPOCHS, EVERY = 16, 2  # evaluated (and checkpointed) every 2 epochs
KILLS = 5  # trial processes killed at random times, besides the stopped node's
GAP_S = (1.0, 3.0)  # seconds between kills, drawn uniformly
# a trial reported past this may have ended since (its reports reach the
# storage folder up to a second late), its process idle for the next trial:
# no kill there, lest it count against another trial
LATE = EPOCHS - 2 * EVERY


def _last_report(runs: Path, trial: str) -> dict:
    """The trial's last report as the driver logged it ({} before its first):
    its result logger appends each to the trial's result.json, which Tune
    copies to the storage folder at each save of its state."""
    files = list(runs.glob(f"train_{trial}_*/result.json"))
    lines = files[0].read_text().splitlines() if files else []
    try:
        return json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:  # a line being written
        return {"outcome": RUNNING, "epoch": "?"}


def _training(runs: Path, ray_temp: str) -> dict[int, tuple[str, int]]:
    """pid -> (trial id, epoch reported) of each of this cluster's trial
    processes whose trial is still training, from its first moment: Tune
    runs a trial in its own working directory (train_<id>_...), in the Ray
    session's folder, and moves a reused process to the next trial's."""
    out = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"ImplicitFunc" not in cmdline.read_bytes():
                continue
            cwd = (cmdline.parent / "cwd").readlink()
        except OSError:
            continue
        if not (str(cwd).startswith(ray_temp) and cwd.name.startswith("train_")):
            continue
        trial = cwd.name.split("_")[1]
        last = _last_report(runs, trial)
        if last.get("outcome", RUNNING) == RUNNING:
            out[int(cmdline.parent.name)] = (trial, last.get("epoch", 0))
    return out


def _reported(epoch: int | str) -> int:
    return epoch if isinstance(epoch, int) else 0  # "?": a line being written


def _checkpointed(epoch: int | str) -> bool:
    """Tune has registered a checkpoint of the trial's: the driver logs a
    report before it asks the trial for the report's checkpoint, and the
    trial trains on to its next report only after that: so two reports."""
    return _reported(epoch) >= 2 * EVERY


@dataclass
class Chaos:
    """Faults throughout one study: KILLS trial processes SIGKILLed at random
    times, and the worker node (raylet, agents, trial process) stopped and
    started again. No trial is hit more often than Tune retries it
    (MAX_FAILURES), so every one must still end."""

    cli: subprocess.Popen
    runs: Path
    nodes: RayNodes
    worker_env: dict[str, str]
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    hits: Counter = field(default_factory=Counter)  # trial id -> faults
    checkpointed: set[str] = field(default_factory=set)  # hit after a checkpoint
    log: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)
    kills: int = 0
    restarted: bool = False
    ran_after_restart: bool = False

    @property
    def marker(self) -> bytes:
        return f"GENSTUDY_CACHE={self.worker_env['GENSTUDY_CACHE']}".encode()

    def note(self, what: str) -> None:
        self.log.append(f"{time.monotonic() - self.began:6.1f} s  {what}")

    def kill(self, pid: int, trial: str, epoch: int) -> None:
        where = "worker" if pid in _node_processes(self.marker) else "head"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self.hit(trial, epoch)
        self.kills += 1
        self.note(f"kill {self.kills}: trial {trial} at epoch {epoch} on the {where} node")

    def hit(self, trial: str, epoch: int | str) -> None:
        self.hits[trial] += 1
        if _checkpointed(epoch):
            self.checkpointed.add(trial)

    def stop_and_start_worker(self, lost: dict[str, int]) -> None:
        """Every process of the worker node at once, then the node again."""
        for pid in _node_processes(self.marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for trial, epoch in lost.items():
            self.hit(trial, epoch)
        self.note(f"worker node stopped, with trials {', '.join(lost)}")
        self.nodes.join(self.worker_env)
        self.restarted = True
        self.note("worker node started again")

    def step(self, next_kill: float) -> float:
        """One look at the study: after the first kill, stop the worker node
        once both nodes train; kill a trial when its time has come. Returns
        when the next kill is due."""
        running = _training(self.runs, self.nodes.temp)
        # the first kill lands in a trial's start (it restarts from scratch),
        # the later ones mid-training (it continues from its checkpoint)
        spare = {
            p: (t, epoch)
            for p, (t, epoch) in running.items()
            if self.hits[t] < d.MAX_FAILURES
            and (self.kills == 0 or _checkpointed(epoch))
            and _reported(epoch) <= LATE
        }
        on_worker = _node_processes(self.marker)
        worker = dict(t for p, t in running.items() if p in on_worker)
        if self.restarted:
            self.ran_after_restart |= bool(worker)
        elif (
            self.kills >= 1
            and 0 < len(worker) < len(running)  # both nodes train
            and all(self.hits[t] < d.MAX_FAILURES for t in worker)
        ):
            self.stop_and_start_worker(worker)
            return next_kill
        if time.monotonic() >= next_kill and spare and self.kills < KILLS:
            pid = self.rng.choice(sorted(spare))
            self.kill(pid, *spare[pid])
            return time.monotonic() + self.rng.uniform(*GAP_S)
        return next_kill

    def unleash(self) -> None:
        next_kill = time.monotonic() + self.rng.uniform(*GAP_S)
        deadline = time.monotonic() + 300
        while self.kills < KILLS or not self.ran_after_restart:
            told = "\n".join(self.log)
            assert self.cli.poll() is None, f"the study ended before the chaos did:\n{told}"
            assert time.monotonic() < deadline, f"the chaos took too long:\n{told}"
            next_kill = self.step(next_kill)
            time.sleep(0.2)
        print("\n".join(self.log))  # the reliability page's record (pytest -s)


def _end_table_matches_mlflow(out: str, folder: Path, children: list) -> None:
    """The tables the study printed and saved are what MLflow holds: each
    seed's outcome and fid, each configuration's mean, the outcome counts."""
    trials = pd.read_csv(folder / "trials.csv", dtype={"config_id": str})
    logged = {(r.data.params["config_id"], int(r.data.params["seed"])): r for r in children}
    assert len(trials) == len(logged)
    for row in trials.itertuples():
        run = logged[(row.config_id, int(row.seed))]
        assert run.data.tags["outcome"] == row.outcome
        assert run.data.metrics["fid"] == pytest.approx(row.fid, rel=1e-9)
    configs = pd.read_csv(folder / "configurations.csv", dtype={"config_id": str})
    for row in configs.itertuples():
        fids = [r.data.metrics["fid"] for (c, _), r in logged.items() if c == row.config_id]
        assert row.fid_mean == pytest.approx(sum(fids) / len(fids), rel=1e-9)
    outcomes = pd.DataFrame({"outcome": [r.data.tags["outcome"] for r in children]})
    assert f"Outcomes: {outcome_line(outcomes)}" in out


def test_chaos_random_kills_and_a_node_stopped_and_started_lose_and_duplicate_nothing(
    tmp_path, ray_env, ray_cluster, mlflow_server
):
    """One study as a user scales out (two raylets, an `mlflow server`, the
    CLI joining both), with faults throughout: five trial processes killed
    at random times and the worker node stopped and started again. Seed packs
    of two, so each retry reopens several runs. Every seed ends, every epoch
    is in MLflow once, and the end tables match MLflow. (One study for all:
    a cluster and a server cost a minute of the suite's two cores.)"""
    uri, artifacts = mlflow_server
    # the classifier the driver finds in (or trains into) this machine's cache
    shipped = prepare_reference("mnist5k")  # what the driver ships (this process may
    name = next(n for n in shipped if "mnist5k" in n)  # have built other classifiers)
    driver_file = cache_dir() / name
    _other_classifier(driver_file, tmp_path / "cache-worker")
    args = [
        "gan_stability", "--smoke", "--num-samples", "2", "--seeds", "4", "--pack", "2",
        "--address", ray_cluster.address, "--tracking-uri", uri, "--name", "chaos",
        "--set", "arch=mlp", "--set", f"epochs={EPOCHS}", "--set", f"eval_every={EVERY}",
        "--set", "train_size=2000", "--set", "eval_samples=100",
        "--set", "checkpoint_seconds=0",  # a checkpoint at every evaluation
    ]  # fmt: skip
    # Tune copies each trial's result.json to the storage folder when it saves
    # its state: here every second (Tune's own setting; by default every 10 s
    # or more), so the chaos follows the trials' reports nearly live
    # a crash in Ray's C++ core prints where Python was (faulthandler)
    env = {**ray_env, "TUNE_GLOBAL_CHECKPOINT_S": "1", "PYTHONFAULTHANDLER": "1"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "study.run", *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    worker_env = {**ray_env, "GENSTUDY_CACHE": str(tmp_path / "cache-worker")}
    chaos = Chaos(cli, tmp_path / "runs" / "chaos", ray_cluster, worker_env)
    try:
        chaos.unleash()
        out, _ = cli.communicate(timeout=300)
    finally:
        if cli.poll() is None:
            cli.kill()
    told = "\n".join(chaos.log)
    assert cli.returncode == 0, out[-3000:] + told
    assert "2 at once" in out  # the cluster's two CPUs, one per node
    assert "Outcomes: 8 trials" in out  # the table is complete
    # the output is the harness's own: no MLflow client's "View run ... at" lines
    assert "View run" not in out and "View experiment" not in out
    client = MlflowClient(uri)
    parents, children = study_runs(uri)
    assert len(parents) == 1 and len(children) == 8, told
    # retries reopened their trial's runs: two per trial, none added
    assert Counter(r.data.tags["trial_id"] for r in children) == dict.fromkeys(
        {r.data.tags["trial_id"] for r in children}, 2
    )
    evaluated = list(range(EVERY, EPOCHS + 1, EVERY))
    for run in children:  # every configuration's seeds ended, every epoch once
        assert run.info.status == "FINISHED" and run.data.tags["outcome"] in SCORED, told
        assert steps(client, run.info.run_id, "d_loss") == list(range(1, EPOCHS + 1)), told
        assert steps(client, run.info.run_id, "fid") == evaluated, told
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"final_metrics.json", "samples"} <= names
        pngs = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
        assert pngs == {f"samples/samples_epoch{e:04d}.png" for e in evaluated}
    # each trial hit after a checkpoint continued from one, not from scratch
    assert chaos.checkpointed, told
    for run in children:
        if run.data.tags["trial_id"] in chaos.checkpointed:
            restored = int(run.data.tags["restored_from_epoch"])
            # an evaluation's checkpoint, before the last (no kill came that late)
            assert EVERY <= restored < EPOCHS and restored % EVERY == 0, told
    _end_table_matches_mlflow(out, tmp_path / "runs" / "chaos" / "summary", children)
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
    assert len(list(artifacts.rglob("samples_epoch0002.png"))) == 8
    assert not (tmp_path / "mlruns").exists()
