"""A throwaway PostgreSQL server on loopback: the database behind the
tracking-load benchmark's `--backend postgresql` and the tests' tracking
server, and a quick way to try the scaling page's recipe.

    python benchmarks/postgres_server.py [--max-connections 300]

prints the SQLAlchemy URI of an empty database (`mlflow`) for `mlflow
server --backend-store-uri`, and removes the server and its files on Ctrl-C.
It needs Debian's `postgresql` package (its initdb and pg_ctl) and psycopg
(`pip install -e '.[postgres]'`). Run as root, the server runs as Debian's
`postgres` user: PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

MISSING = "PostgreSQL is not installed: apt-get install postgresql (Debian's package)"
USER = "genstudy"  # the server's superuser, trusted on loopback
DATABASE = "mlflow"


def pg_bin(name: str) -> Path | None:
    """A PostgreSQL program: on PATH, or in Debian's versioned folder (the
    package puts only the client programs on PATH)."""
    if found := shutil.which(name):
        return Path(found)
    versions = Path("/usr/lib/postgresql").glob(f"*/bin/{name}")
    ranked = sorted(versions, key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return ranked[-1] if ranked else None


def available() -> bool:
    return all(pg_bin(name) for name in ("initdb", "pg_ctl"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server(max_connections: int = 300) -> Iterator[str]:
    """A new cluster in a temporary folder, listening on 127.0.0.1 only;
    yields the URI of its empty `mlflow` database, and stops and removes it
    after. max_connections must cover every tracking-server worker's pool
    (PostgreSQL's default, 100, is less than 4 workers x (32 + 32))."""
    if not available():
        raise RuntimeError(MISSING)
    import psycopg  # the driver MLflow's SQLAlchemy store uses (postgresql+psycopg)

    root = Path(tempfile.mkdtemp(prefix="genstudy-pg-"))  # short: the socket path must fit
    owner: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        owner = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections={max_connections}"
    )
    ctl = [*owner, str(pg_bin("pg_ctl")), "-D", str(data), "-w"]

    def run(argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{Path(argv[len(owner)]).name} failed: {done.stderr.strip()}")

    try:
        run([*owner, str(pg_bin("initdb")), "-D", str(data), "-U", USER, "--auth=trust",
             "-E", "UTF8", "--no-sync"])  # fmt: skip
        run([*ctl, "-l", str(root / "server.log"), "-o", options, "start"])
        with psycopg.connect(
            host="127.0.0.1", port=port, user=USER, dbname="postgres", autocommit=True
        ) as db:
            db.execute(f"CREATE DATABASE {DATABASE}")
        yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/{DATABASE}"
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def create_database(uri: str, name: str) -> str:
    """Another empty database on the server behind uri; returns its URI."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    with psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname="postgres", autocommit=True
    ) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-connections", type=int, default=300)
    args = p.parse_args(argv)
    if not available():
        print(MISSING, file=sys.stderr)
        return 2
    with postgres_server(args.max_connections) as uri:
        print(uri, flush=True)
        with suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
