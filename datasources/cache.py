"""An on-disk cache for things built once and shared by every trial (prepared
datasets, feature classifiers). Trials start concurrently, so building happens
under a file lock and lands by atomic rename: nobody reads a half-written file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def cache_dir() -> Path:
    """GENSTUDY_CACHE, else ~/.cache/genstudy."""
    root = os.environ.get("GENSTUDY_CACHE") or Path.home() / ".cache" / "genstudy"
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_file(name: str, build: Callable[[Path], None]) -> Path:
    """Path of cache entry `name`, calling build(tmp_path) first if it is missing."""
    path = cache_dir() / name
    if path.exists():
        return path
    with FileLock(str(path) + ".lock"):
        if not path.exists():  # another process may have built it while we waited
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
            try:
                build(tmp)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
    return path


def install(name: str, blob: bytes) -> Path:
    """Make cache entry `name` hold exactly `blob` (what a study's driver
    built, shipped to a node whose own cache may hold other bytes or none)."""
    path = cache_dir() / name
    if path.exists() and path.read_bytes() == blob:
        return path
    with FileLock(str(path) + ".lock"):
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        try:
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path
