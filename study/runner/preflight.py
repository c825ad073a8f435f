"""Checks of the world outside the request, made before anything starts: the
storage folder, free disk, a Ray head to join, and what the cluster can give
a trial. Each failure is a `UsageError` with one line for the user."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from study.errors import UsageError
from study.studies import defaults as d


def check_ray_address(address: str, timeout: float = d.TIMEOUT_SECONDS) -> None:
    """Ray retries an unreachable head for minutes; answer in seconds instead."""
    if address == "auto" or "://" in address:  # Ray finds the local one itself, fast
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address expects HOST:PORT or 'auto', got '{address}'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UsageError(f"cannot join Ray at {address}: {e.strerror or e}") from None


def check_free_space(folder: Path, what: str) -> None:
    """A study that fills the disk dies half-way; refuse to start instead."""
    need = float(os.environ.get("GENSTUDY_MIN_FREE_MB", d.MIN_FREE_MB))
    free = shutil.disk_usage(folder).free / 2**20
    if free < need:
        raise UsageError(
            f"{what} ({folder}) has {free:.0f} MB free, under the {need:.0f} MB a study "
            "needs; free some space (or lower GENSTUDY_MIN_FREE_MB)"
        )


def check_storage(storage: Path, tracking_uri: str) -> None:
    existing = next(p for p in (storage, *storage.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UsageError(f"--storage {storage} cannot be created or written ({existing})")
    check_free_space(existing, "--storage")
    if tracking_uri.startswith("sqlite:///"):
        check_free_space(Path(tracking_uri[len("sqlite:///") :]).parent, "the MLflow store")


def trials_at_once(
    resources: dict[str, float], cpus_per_trial: float, gpus_per_trial: float
) -> int:
    """How many trials fit on the cluster at once: its CPUs, and its GPUs when
    trials take some (Optuna should not suggest trials that can only wait)."""
    fits = resources.get("CPU", 1) / cpus_per_trial
    if gpus_per_trial:
        fits = min(fits, resources.get("GPU", 0) / gpus_per_trial)
    return max(1, int(fits + 1e-9))  # 0.7 / 0.1 is 6.999... in floating point


def check_folder_name(flag: str, name: str) -> None:
    """A value that becomes one folder under --storage must stay inside it."""
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise UsageError(
            f"{flag} must be one plain folder name (no '/', '\\', '..' or empty name), got '{name}'"
        )


def resource_asks(cpus_per_trial: float, gpus_per_trial: float) -> dict[str, tuple[str, float]]:
    """What one trial asks of a node: Ray resource -> (its flag, the amount)."""
    return {
        "CPU": ("--cpus-per-trial", cpus_per_trial),
        "GPU": ("--gpus-per-trial", gpus_per_trial),
    }


def this_machine() -> list[dict]:
    """This machine as the one node of a local Ray, with the resources Ray
    would see at most (its CPU count before any container quota; the GPUs
    CUDA shows): checked before starting Ray, a request no local node could
    fit fails in seconds. Ray's own count is checked again once it is up."""
    import multiprocessing

    import torch

    cpus, gpus = multiprocessing.cpu_count(), torch.cuda.device_count()
    return [{"Alive": True, "Resources": {"CPU": float(cpus), "GPU": float(gpus)}}]


def _largest_node(nodes: list[dict], resource: str) -> float:
    return max((n["Resources"].get(resource, 0.0) for n in nodes if n.get("Alive")), default=0.0)


def check_resources(
    nodes: list[dict],
    asks: dict[str, tuple[str, float]],
    ceiling: dict[str, float] | None = None,
) -> list[str]:
    """A trial runs on one node: one asking for more of a resource than the
    largest node has would wait forever, so that is a UsageError. On a cluster
    an autoscaler can grow (`ceiling`: the most of each resource its node
    types give one node), a request the ceiling fits is a warning instead.
    `asks` maps a Ray resource to (its flag, the amount). Returns the warnings."""
    warnings = []
    for resource, (flag, want) in asks.items():
        have = _largest_node(nodes, resource)
        if not want or want <= have + 1e-9:
            continue
        unit = resource if have == 1 else resource + "s"
        problem = f"{flag} {want:g} but the largest node of the Ray cluster has {have:g} {unit}"
        if ceiling is not None and ceiling.get(resource, 0) >= want:
            warnings.append(f"{problem}; trials wait until the autoscaler adds a node")
        else:
            raise UsageError(problem + ", so no trial could start")
    return warnings
