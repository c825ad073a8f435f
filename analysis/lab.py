"""`python -m analysis.lab [--store URI] [JUPYTER-LAB-ARGS...]` (or `make
notebooks`): JupyterLab on `analysis/notebooks/`, its kernels this project's
Python, pointed at a study store through MLFLOW_TRACKING_URI (default: as
`study.run`, MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the current folder).
Needs the `notebooks` extra: `pip install -e '.[notebooks]'`. Arguments it
does not know go to `jupyter lab` (`--port 8890`, `--no-browser`)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from study.tracking import TrackingError, check_tracking_uri, resolve_tracking_uri

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "analysis" / "notebooks"


def lab_command(store: str, folder: Path, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the JupyterLab server: the kernels it starts
    inherit the store and import this checkout."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    argv = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={folder}", *extra]
    if os.geteuid() == 0:  # a container's root user (CI's): JupyterLab refuses otherwise
        argv.append("--allow-root")
    return argv, env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.lab", description=__doc__.split("\n")[0])
    p.add_argument("--store", help="MLflow tracking URI the notebooks read")
    p.add_argument(
        "--notebooks",
        type=Path,
        default=NOTEBOOKS,
        help="folder to serve (default: analysis/notebooks; a copy keeps the originals clean)",
    )
    args, extra = p.parse_known_args(argv)
    if importlib.util.find_spec("jupyterlab") is None:
        print("error: JupyterLab is not installed; pip install -e '.[notebooks]'", file=sys.stderr)
        return 2
    try:
        store = resolve_tracking_uri(args.store)
        check_tracking_uri(store)
    except TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.notebooks.is_dir():
        print(f"error: --notebooks {args.notebooks} is not a folder", file=sys.stderr)
        return 2
    print(f"notebooks: {args.notebooks}\nstore: {store}", flush=True)
    cmd, env = lab_command(store, args.notebooks.resolve(), extra)
    os.execvpe(cmd[0], cmd, env)  # the server in this process: Ctrl-C stops it


if __name__ == "__main__":
    sys.exit(main())
