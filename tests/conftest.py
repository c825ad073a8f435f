"""Shared fixtures. Tests use the real on-disk cache (GENSTUDY_CACHE or
~/.cache/genstudy), so the feature classifier is trained once per machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


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
