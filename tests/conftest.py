"""Shared fixtures. Tests use the real on-disk cache (GENSTUDY_CACHE or
~/.cache/genstudy), so the feature classifier is trained once per machine."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from study.runner.lean_start import lean_changes

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's console scripts: ray, mlflow, ...


def workers() -> int:
    """pytest-xdist's worker processes in this run (1 without xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    # the cores shared out among xdist's workers, each at least one thread
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // workers()))


def cli_env() -> dict[str, str]:
    """The environment a CLI test runs in: this checkout, no inherited store."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("MLFLOW_TRACKING_URI", *RAY_AUTH):  # nor the shared Ray's token
        env.pop(key, None)
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


def in_process(
    main: Callable[[list[str]], int], args: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess:
    """A command's main(args) in this process, in `cwd` with `env` added: its
    code path without an interpreter's start (3-4 s of imports each), for
    tests of how it refuses; one real command line of each stays in the suite."""
    out, err = io.StringIO(), io.StringIO()
    old_env, old_cwd = dict(os.environ), os.getcwd()
    os.environ.update(env)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # as cli_env: no inherited store
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as e:  # argparse's errors
                code = e.code
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


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


def mlflow_server_argv(port: int, root: Path, store: str | None = None) -> list[str]:
    """A local `mlflow server` on store (default: root/server.db) that stores
    artifacts itself (proxied uploads) under root/server_artifacts; without
    MLflow's GenAI job runner, eight more processes a study never uses."""
    return [
        "env", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false",
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", store or f"sqlite:///{root}/server.db",
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


def started(pid: int) -> str | None:
    """When pid started (ticks since boot), or None once it has exited (a
    zombie has: only its parent has not reaped it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


@dataclass
class Stragglers:
    """Processes a test expects to exit by themselves within some seconds,
    checked when the worker's session ends rather than waited for in the
    test (Ray's idle agents notice their node's end a minute later: a
    test waiting for them held a core's worth of the run idle)."""

    expected: list[tuple[int, str, float, str]]

    def expect_gone(self, pids: list[int], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        for pid in pids:
            if (start := started(pid)) is not None:
                self.expected.append((pid, start, deadline, what))

    def still_running(self) -> list[str]:
        """What outlived its deadline (waits for each deadline first); a pid
        reused by a later process does not count."""
        late = []
        for pid, start, deadline, what in self.expected:
            while started(pid) == start and time.monotonic() < deadline:
                time.sleep(0.5)
            if started(pid) == start:
                late.append(f"{what}: pid {pid}")
        return late


@pytest.fixture(scope="session")
def stragglers() -> Iterator[Stragglers]:
    found = Stragglers([])
    yield found
    late = found.still_running()
    assert not late, f"still running past their time: {late}"


def benchmark_module(name: str):
    """A script of benchmarks/ imported as a module (its siblings importable,
    as when it runs as `python benchmarks/NAME.py`)."""
    import importlib.util

    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.append(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


# set by .ci/run, where the server is installed: there a missing PostgreSQL
# fails the tests that need it instead of skipping them
REQUIRE_POSTGRES = "GENSTUDY_REQUIRE_POSTGRES"


@pytest.fixture(scope="session")
def postgres_installed():
    """benchmarks/postgres_server.py, where Debian's PostgreSQL is installed:
    else the test is skipped, naming the package (failed under CI)."""
    pg = benchmark_module("postgres_server")
    if not pg.available():
        (pytest.fail if os.environ.get(REQUIRE_POSTGRES) else pytest.skip)(pg.MISSING)
    return pg


@pytest.fixture(scope="session")
def postgres(postgres_installed) -> Iterator[Callable[[str], str]]:
    """A PostgreSQL server for the session; yields a maker of fresh
    databases: name -> SQLAlchemy URI."""
    pg = postgres_installed
    with pg.postgres_server(max_connections=100) as uri:
        yield lambda name: pg.create_database(uri, name)


def kill_matching(marker: str) -> None:
    """SIGKILL every process whose command line holds marker, and its children
    (Ray's agents): `ray stop` would stop every Ray on the machine."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    for pid in pids:
        subprocess.run(["pkill", "-KILL", "-P", str(pid)], check=False)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def ray_token_env(folder: Path) -> dict[str, str]:
    """The CLI's environment with Ray's token authentication, as the scaling
    recipe sets it on every node and driver (a token file in folder)."""
    token = folder / "ray_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    return {**cli_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


@dataclass
class RayNodes:
    """Raylets started with `ray start` on loopback, sharing one temp folder."""

    address: str
    temp: str
    cpus: int | None

    def join(self, env: dict[str, str]) -> None:
        """Start a worker node in env (a node stopped earlier, started again)."""
        self.start([f"--address={self.address}"], env)

    def start(self, where: list[str], env: dict[str, str]) -> None:
        common = ["--disable-usage-stats", f"--temp-dir={self.temp}"]
        common += [f"--num-cpus={self.cpus}"] if self.cpus else []
        subprocess.run(
            [str(BIN / "ray"), "start", *where, *common],
            env={**env, **lean_changes(env)},  # as the CLI starts its own node
            check=True,
            capture_output=True,
            timeout=120,
        )


@contextmanager
def ray_nodes(envs: list[dict[str, str]], cpus: int | None = None) -> Iterator[RayNodes]:
    """Ray started with `ray start` on loopback: a head, then a worker node
    for each further environment (each node starts in its own); yields them
    and kills every process of these nodes after."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit
    port = free_port()
    nodes = RayNodes(f"127.0.0.1:{port}", temp, cpus)
    try:
        nodes.start(["--head", f"--port={port}", "--include-dashboard=false"], envs[0])
        for env in envs[1:]:
            nodes.join(env)
        yield nodes
    finally:
        kill_matching(temp)
        shutil.rmtree(temp, ignore_errors=True)


@dataclass
class RayHead:
    """A running Ray a CLI joins with --address (and its token)."""

    address: str
    env: dict[str, str]

    def run_cli(self, args: list[str], cwd: Path, timeout: float = 300):
        return run_cli([*args, "--address", self.address], cwd, timeout, self.env)

    def run_study(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
        """The CLI's main() on this Ray from this process, as a notebook runs
        studies one after another in one kernel: the same code path as the
        command line without a driver's start (8-9 s of CPU: the imports of
        torch, Ray, MLflow and Optuna). For tests of what a study does, not
        of its process (kills, signals and exit codes run real commands)."""
        from study.runner.cli import main

        return in_process(main, [*args, "--address", self.address], cwd, self.env)


SHARED_RAY = "GENSTUDY_TEST_RAY"  # address|token file of the run's one shared Ray
SHARED_CPUS = 3  # logical: one study of each worker's, and the outage test's second


RAY_AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")


def pytest_configure(config: pytest.Config) -> None:
    """The shared Ray's token goes into this process's environment before
    anything imports Ray: Ray reads its authentication settings once, when
    it is imported, and `RayHead.run_study` joins from this process
    (`cli_env` keeps them out of the commands a test runs). Under xdist the
    controller also starts that Ray (a Ray a worker, each idling beside the
    other, costs a start and its daemons' CPU twice), and its workers inherit
    where it is and its token. It offers three CPUs, and each study a test
    runs on it takes one (`--max-concurrent 1`, or one trial): the outage
    test's two studies and the other worker's never wait for each other's
    CPUs, which a test timed against another study cannot afford."""
    if SHARED_RAY in os.environ:  # an xdist worker: the controller's Ray and token
        return
    folder = Path(tempfile.mkdtemp(prefix="genstudy-shared-ray-"))
    env = ray_token_env(folder)
    os.environ.update({k: env[k] for k in RAY_AUTH[:2]})
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    address = ""  # without xdist: started by the first test that asks (`shared_ray`)
    if getattr(config.option, "numprocesses", None):
        nodes = ray_nodes([env], cpus=SHARED_CPUS)
        address = nodes.__enter__().address
        config.add_cleanup(lambda: nodes.__exit__(None, None, None))
    os.environ[SHARED_RAY] = f"{address}|{env['RAY_AUTH_TOKEN_PATH']}"


@pytest.fixture(scope="session")
def shared_ray() -> Iterator[RayHead]:
    """One Ray for the tests that only run a study and read what it wrote:
    joining it costs a CLI about 4 s, starting its own Ray 12 s of two
    cores. Tests that kill, watch or configure Ray's processes start theirs.
    Under xdist every worker joins the controller's (`pytest_configure`)."""
    address, token = os.environ[SHARED_RAY].split("|")
    env = {**cli_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token}
    if address:
        yield RayHead(address, env)
        return
    with ray_nodes([env], cpus=SHARED_CPUS) as nodes:
        yield RayHead(nodes.address, env)


# one smoke run of each study into one store, shared by every test that reads
# a finished study (the CLI's output, MLflow's contents, reports, notebooks)
SMOKE_STUDIES = (
    "gan_stability",
    "sparse_ae",
    "denoising_ae",
    "vae_kl",
    "dvae_temperature",
    "diffusion_schedule",
    "vq_codebook",
    "diffusion_guidance",
    "latent_diffusion",
)


@dataclass
class SmokeStore:
    uri: str
    root: Path
    outputs: dict[str, subprocess.CompletedProcess]


# the longest tests (much of it waiting: kills, an outage, Ray's agents
# exiting), started right after the smoke store's readers so that under xdist
# none of them is the run's tail
LONG = (
    "test_killed_driver_resumes", "test_an_outage_within", "test_confirm_reruns_the_best",
    "test_chaos_random_kills", "test_the_tracking_load_benchmark",
    "test_sqlite_store_holds_up", "test_gan_stabilisers_trains", "test_prdc_self_test",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that read the smoke store first: under xdist the first
    worker to need it builds it, and then both go through the readers; then
    the longest; then the rest in their order. xdist starts each worker on
    two consecutive tests (the first worker on items 0 and 1), so the two
    longest of all (each spends much of its time waiting: kills, an
    outage, Ray's agents exiting) go third and fourth: the second worker
    runs them while the first builds the store, instead of waiting for it
    (the build trains one trial at a time: a core's work). Measured on fresh
    clones: with one long test second, the second worker's first reader
    waited the whole build; with this order no worker waits."""

    def order(item: pytest.Item) -> tuple[bool, int]:
        long = next((i for i, n in enumerate(LONG) if item.name.startswith(n)), len(LONG))
        return "smoke_store" not in getattr(item, "fixturenames", ()), long

    items.sort(key=order)
    for place, name in ((2, LONG[0]), (3, LONG[1])):
        found = next((i for i, t in enumerate(items) if t.name.startswith(name)), None)
        if found is not None and len(items) > place:
            items.insert(place, items.pop(found))


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory, shared_ray) -> SmokeStore:
    """Built once per run: under xdist by the first worker that asks, in the
    run's common temporary folder, and read by the others from there."""
    from filelock import FileLock

    common = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        common = common.parent  # shared by the workers of this run
    root, record = common / "smoke_store", common / "smoke_store.json"
    with FileLock(str(record) + ".lock"):
        if not record.exists():
            root.mkdir()
            outputs = build_smoke_store(root, shared_ray)
            saved = {s: [o.args, o.returncode, o.stdout, o.stderr] for s, o in outputs.items()}
            record.write_text(json.dumps(saved))
    saved = json.loads(record.read_text())
    outputs = {s: subprocess.CompletedProcess(*v) for s, v in saved.items()}
    for study, out in outputs.items():
        assert out.returncode == 0, f"{study}: {out.stderr[-3000:]}"
    return SmokeStore(f"sqlite:///{root}/store.db", root, outputs)


def build_smoke_store(root: Path, ray: RayHead) -> dict[str, subprocess.CompletedProcess]:
    uri = f"sqlite:///{root}/store.db"

    def smoke(study: str) -> subprocess.CompletedProcess:
        # 2 configurations x 2 seeds each (a grid study: 2 of its points), one
        # trial at a time: one trial process a study (each boots Ray's worker
        # and imports torch and MLflow, seconds of CPU), its trials reusing it
        args = [study, "--smoke", "--num-samples", "2", "--max-concurrent", "1"]
        return ray.run_study([*args, "--tracking-uri", uri, "--name", f"smoke-{study}"], root)

    # one after another in this process: a driver's start each (9 x 8 s of
    # CPU) cost more than the other worker's tests gain from the cores
    return {study: smoke(study) for study in SMOKE_STUDIES}


def local_plan(
    study: str, tmp_path: Path, uri: str, exp: str, parent: str, settings: dict, *,
    searched: bool = False, seeds: int = 1, pack: int = 1, dataset: str = "digits",
):  # fmt: skip
    """The plan of an in-process trial (`run_trial` with a `LocalSession`):
    the study's smoke settings on `dataset`, one thread, logging under
    `parent`; its axes searched only when `searched` (else run names hold
    the seed alone)."""
    from dataclasses import replace

    from study.plan import Plan
    from study.request import StudyRequest
    from study.studies import STUDIES, resolve

    spec = STUDIES[study]
    resolved = resolve(spec, settings, smoke=True)
    return Plan(
        request=StudyRequest(study, pack=pack, smoke=True),
        study=spec,
        resolved=resolved if searched else replace(resolved, axes={}),
        dataset=dataset,
        data_dir=str(tmp_path),
        search="optuna",
        configs=1,
        seeds=seeds,
        tracking_uri=uri,
        experiment=study,
        run_dir=tmp_path / "run",
        parent_run_id=parent,
        experiment_id=exp,
    )


def steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


def study_runs(uri: str, experiment: str = "gan_stability"):
    """(parent runs, child runs) of an experiment, deleted runs left out."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]
