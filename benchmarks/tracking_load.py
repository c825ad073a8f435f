"""Load on an MLflow tracking server from N trials logging at once.

    python benchmarks/tracking_load.py [--loggers 8 32 64] [--epochs 10] [--workers 4] [--pool P]
        [--backend sqlite|postgresql]

For each N, a fresh `mlflow server` on a fresh store (sqlite, or a database
on a throwaway PostgreSQL server: postgres_server.py; artifacts served by
the server, as the scaling-out recipe runs it) takes N concurrent
loggers shaped like trials: a run with ~30 params, a batch of 10 metrics per
epoch, a PNG sample grid every other epoch, the final metrics as JSON and the
run's end. Each logger is a thread with its own connection (trials are
separate processes; here the server is what is measured). Afterwards every
run is read back: a point or file that was acknowledged and is missing is
"lost"; a request that failed after the client's retries is an "error".

Prints one line per N: requests, errors, lost points and files, latency
percentiles, and p95 relative to the smallest N (a ratio, comparable across
machines that are busy in different ways).
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from postgres_server import MISSING as PG_MISSING  # noqa: E402
from postgres_server import available as pg_available  # noqa: E402
from postgres_server import free_port, postgres_server  # noqa: E402

from study.tracking.store import FINAL_METRICS  # noqa: E402  (sets the retry settings)

BACKENDS = ("sqlite", "postgresql")

KEYS = [f"metric_{i}" for i in range(10)]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, fn, *args, **kwargs) -> bool:
        t0 = time.perf_counter()
        try:
            fn(*args, **kwargs)
        except Exception as e:  # what the benchmark counts, whatever it is
            with self.lock:
                self.errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
            return False
        with self.lock:
            self.latencies.append(time.perf_counter() - t0)
        return True


def png_bytes(seed: int) -> bytes:
    """A 28x28-tile sample grid as a trial logs it (about 10 KB)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (rng.random((8 * 28, 8 * 28)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def one_logger(url: str, exp_id: str, index: int, epochs: int, tally: Tally, tmp: Path) -> dict:
    """One trial's writes; returns what the server acknowledged."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(url)
    created = []
    if not tally.call(lambda: created.append(client.create_run(exp_id, run_name=f"l{index}"))):
        return {"run": None, "points": 0, "files": []}
    rid = created[0].info.run_id
    params = [Param(f"param_{i}", str(i)) for i in range(30)]
    tally.call(client.log_batch, rid, params=params)
    points, files = 0, []
    folder = tmp / rid
    folder.mkdir()
    for epoch in range(1, epochs + 1):
        ts = int(time.time() * 1000)
        batch = [Metric(k, float(epoch + i), ts, epoch) for i, k in enumerate(KEYS)]
        if tally.call(client.log_batch, rid, metrics=batch):
            points += len(batch)
        if epoch % 2 == 0:
            png = folder / f"samples_epoch_{epoch:04d}.png"
            png.write_bytes(png_bytes(index * 1000 + epoch))
            if tally.call(client.log_artifact, rid, str(png), "samples"):
                files.append(f"samples/{png.name}")
    final = folder / FINAL_METRICS
    final.write_text('{"metric_0": 1.0}')
    if tally.call(client.log_artifact, rid, str(final)):
        files.append(FINAL_METRICS)
    tally.call(client.set_terminated, rid, "FINISHED")
    return {"run": rid, "points": points, "files": files}


def lost(url: str, acked: list[dict]) -> tuple[int, int]:
    """(points, files) acknowledged by the server but not read back."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    points = files = 0
    for a in acked:
        if a["run"] is None:
            continue
        stored = sum(len(client.get_metric_history(a["run"], k)) for k in KEYS)
        points += max(0, a["points"] - stored)
        names = {f.path for f in client.list_artifacts(a["run"])}
        names |= {f.path for f in client.list_artifacts(a["run"], "samples")}
        files += sum(f not in names for f in a["files"])
    return points, files


@contextmanager
def backend_store(root: Path, backend: str) -> Iterator[str]:
    """A fresh, empty store: root/server.db, or a database on a new
    PostgreSQL server; yields its URI."""
    if backend == "sqlite":
        yield f"sqlite:///{root}/server.db"
        return
    with postgres_server() as uri:
        yield uri


@contextmanager
def mlflow_server(root: Path, workers: int, store: str | None = None) -> Iterator[str]:
    """`mlflow server` on store (default: root/server.db), serving artifacts
    from root; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers),
         "--backend-store-uri", store or f"sqlite:///{root}/server.db",
         "--artifacts-destination", str(root / "artifacts")],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        # as the scaling page's recipe: no GenAI job runner (eight processes a study never uses)
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"mlflow server did not start on {url}") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def load(n: int, epochs: int, workers: int, backend: str = "sqlite") -> dict:
    """One fresh store and server, n loggers at once; the figures for one line."""
    with (
        tempfile.TemporaryDirectory() as d,
        backend_store(Path(d), backend) as store,
        mlflow_server(Path(d), workers, store) as url,
    ):
        return measure(url, Path(d), n, epochs)


def measure(url: str, root: Path, n: int, epochs: int) -> dict:
    """n loggers at once on the server at url (files written under root),
    then every run read back."""
    from mlflow import MlflowClient

    os.environ["MLFLOW_HTTP_POOL_MAXSIZE"] = str(max(10, n))  # a connection per logger
    exp_id = MlflowClient(url).create_experiment(f"load-{n}-{time.time_ns()}")
    tally, start = Tally(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(one_logger, url, exp_id, i, epochs, tally, root) for i in range(n)]
        acked = [f.result() for f in futures]
    wall = time.perf_counter() - start
    lost_points, lost_files = lost(url, acked)
    lat = sorted(tally.latencies) or [float("nan")]
    pct = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return {
        "loggers": n,
        "requests": len(tally.latencies) + len(tally.errors),
        "errors": len(tally.errors),
        "lost_points": lost_points,
        "lost_files": lost_files,
        "p50_ms": 1000 * pct[49],
        "p95_ms": 1000 * pct[94],
        "max_ms": 1000 * lat[-1],
        "wall_s": wall,
        "first_error": tally.errors[0] if tally.errors else "",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loggers", type=int, nargs="+", default=[8, 32, 64])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--workers", type=int, default=4, help="the server's worker processes")
    p.add_argument(
        "--pool",
        type=int,
        help="the server's database connections per worker (pool size, and as many "
        "overflow); default: SQLAlchemy's 5 + 10",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="sqlite",
        help="the server's store: an sqlite file, or a database on a throwaway PostgreSQL "
        "server (needs Debian's postgresql package)",
    )
    args = p.parse_args(argv)
    if args.backend == "postgresql" and not pg_available():
        p.exit(2, f"tracking_load.py: {PG_MISSING}\n")
    if args.pool:  # the server inherits them
        os.environ["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"] = str(args.pool)
        os.environ["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"] = str(args.pool)
    rows = []
    for n in args.loggers:
        print(f"{n} loggers ...", file=sys.stderr, flush=True)
        rows.append(load(n, args.epochs, args.workers, args.backend))
    base = rows[0]["p95_ms"]
    for r in rows:
        print(
            f"backend={args.backend} loggers={r['loggers']} requests={r['requests']} "
            f"errors={r['errors']} "
            f"lost_points={r['lost_points']} lost_files={r['lost_files']} "
            f"p50_ms={r['p50_ms']:.0f} p95_ms={r['p95_ms']:.0f} max_ms={r['max_ms']:.0f} "
            f"p95_vs_first={r['p95_ms'] / base:.1f} wall_s={r['wall_s']:.1f}"
            + (f" first_error={r['first_error']!r}" if r["first_error"] else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
