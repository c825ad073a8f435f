"""Training speed of seed packs on one device: a study's configuration
trained unpacked (one seed at a time, as unpacked trials follow each other on
one GPU) and as fused packs of K seeds, in seed-epochs a second.

    python benchmarks/pack_speed.py STUDY [--device cuda] [--packs 1,2,4,8,16]
        [--epochs E] [--set KEY=VALUE ...]

Needs torch, the study registry and the datasets, not Ray or MLflow, so it
runs on a GPU machine that has little else. The configuration is the study's
fixed settings with the family's defaults for what the study searches
(--set changes any). Each size trains one warm-up epoch, then E timed epochs
(synchronised with the device); the table gives seconds an epoch, seed-epochs
a second, that over the unpacked rate, and the device memory at its peak.
A trial's fixed costs (process start, CUDA's start, data, MLflow) come on top
of training and a pack pays them once for its K seeds; `cuda_start` is the
first one measured here: this process's first touch of the device.
"""

from __future__ import annotations

import argparse
import time

import torch

from datasources import load_dataset
from models import FAMILIES
from models.pack import Pack, fuse
from study.studies import STUDIES
from study.studies.spec import resolve, split_settings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _epochs(pack: Pack, epochs: int, device: torch.device) -> float:
    """Seconds an epoch over `epochs` timed epochs, after one warm-up epoch."""
    pack.train_epoch()
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        pack.train_epoch()
    _sync(device)
    return (time.perf_counter() - start) / epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", choices=sorted(STUDIES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--packs", default="1,2,4,8,16")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir", default="data")
    a = p.parse_args()
    device = torch.device(a.device)
    t0 = time.perf_counter()
    torch.zeros(1, device=device)
    _sync(device)
    cuda_start = time.perf_counter() - t0
    study = STUDIES[a.study]
    sets = dict(s.split("=", 1) for s in a.set)
    fixed = resolve(study, sets).fixed
    trial_cfg, cfg = split_settings(study, fixed)
    data = load_dataset(study.dataset, a.data_dir)
    if trial_cfg.train_size:
        data = data.subset(trial_cfg.train_size)
    data = data.to(device)

    def make(seed: int):
        torch.manual_seed(seed)
        return FAMILIES[study.family](cfg, data.train_x, data.test_x, data.train_y)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{a.study} on {device} ({name}), torch {torch.__version__}")
    print(f"cuda_start={cuda_start:.1f} s")
    print("settings: " + " ".join(f"{k}={v}" for k, v in sorted(fixed.items())))
    print(
        f"{'pack':>4}  {'s/epoch':>8}  {'seed-epochs/s':>13}  {'x unpacked':>10}  {'peak MiB':>8}"
    )
    base = None
    for k in (int(v) for v in a.packs.split(",")):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        members = [make(0)] if k == 1 else fuse(make, range(k), device)
        seconds = _epochs(Pack(members), a.epochs, device)
        rate = k / seconds
        base = base or rate  # the first size given is the reference (1: unpacked)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
        print(f"{k:>4}  {seconds:8.3f}  {rate:13.2f}  {rate / base:10.2f}  {peak:8.0f}", flush=True)


if __name__ == "__main__":
    main()
