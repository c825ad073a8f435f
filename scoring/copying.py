"""The data-copying test of Meehan et al. (2020), C_T, in a feature space.

Each sample's distance to its nearest training point is compared with the
held-out split's, cell by cell: cells are k-means clusters of the training
features, so a generator that copies some regions and underfits others
cannot average the two away. Per cell the Mann-Whitney U of the samples'
distances against the held-out ones is z-scored under the null (both drawn
alike); C_T is those z-scores averaged with the held-out split's cell
weights, over the cells holding at least MIN_SAMPLES samples.

Negative: samples sit closer to the training set than held-out data do
(copying). Near 0: they sit as near as fresh data would. Positive: farther
(underfitting). The arithmetic follows the authors' reference code
(github.com/casey-meehan/data-copying), continuity correction included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

CELLS = 10  # k-means cells: a held-out split of 1,000 gives each about 100
MIN_SAMPLES = 20  # the paper's tau = 20 / m: cells with fewer samples are left out


@dataclass(frozen=True)
class Cells:
    """The training features split into k-means cells, and the held-out
    split's nearest-training distances and cells (both fixed per dataset).
    Saved whole to a file (`save`, `load`): a trial process reads them from
    the on-disk cache instead of building them again."""

    centres: Tensor  # (k, d) float64, k-means' cluster centres
    train: list[Tensor]  # the training features of each cell
    heldout_cells: np.ndarray
    heldout_dist: np.ndarray

    def assign(self, features: Tensor) -> np.ndarray:
        """Each point's cell: its nearest centre, as KMeans.predict does (exact
        float64 distances, the first centre on a tie)."""
        x = features.double()
        centres = self.centres.to(x.device)
        dist = torch.cdist(x, centres, compute_mode="donot_use_mm_for_euclid_dist")
        return dist.argmin(1).cpu().numpy()

    def save(self, path: Path) -> None:
        torch.save(
            {"centres": self.centres, "train": [t.cpu() for t in self.train],
             "heldout_cells": torch.from_numpy(self.heldout_cells),
             "heldout_dist": torch.from_numpy(self.heldout_dist)},
            path,
        )  # fmt: skip

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> Cells:
        blob = torch.load(path, map_location=device, weights_only=True)
        held = blob["heldout_cells"].cpu().numpy(), blob["heldout_dist"].cpu().numpy()
        return cls(blob["centres"], list(blob["train"]), *held)

    def nearest_train(self, features: Tensor, cells: np.ndarray) -> np.ndarray:
        return _nearest_train(self.train, features, cells)


def _nearest_train(train: list[Tensor], features: Tensor, cells: np.ndarray) -> np.ndarray:
    """Each point's distance to the nearest training point of its own cell."""
    out = np.empty(len(features))
    for c in np.unique(cells):
        mine = torch.as_tensor(cells == c, device=features.device)
        dist = torch.cdist(features[mine].double(), train[c].to(features.device))
        out[cells == c] = dist.min(dim=1).values.cpu().numpy()
    return out


def build_cells(train: Tensor, heldout: Tensor, k: int = CELLS, seed: int = 0) -> Cells:
    """k-means (k cells, fixed seed) on the training features; the held-out
    split's distances are computed once here."""
    from sklearn.cluster import KMeans  # scikit-learn only where it is used: a second of a start

    x = train.double().cpu().numpy()
    kmeans = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x)
    per_cell = [train[torch.as_tensor(kmeans.labels_ == c)].double() for c in range(k)]
    centres = torch.from_numpy(kmeans.cluster_centers_).double()
    held_cells = kmeans.predict(heldout.double().cpu().numpy())
    return Cells(centres, per_cell, held_cells, _nearest_train(per_cell, heldout, held_cells))


def z_u(sample_dist: np.ndarray, heldout_dist: np.ndarray) -> float:
    """Mann-Whitney U of the samples' distances against the held-out ones
    (pairs where the sample is farther, ties half), z-scored under the null:
    mean mn/2 - 1/2, variance mn(m + n + 1)/12.

    U is counted by binary search in the sorted held-out distances: the
    number scipy's `mannwhitneyu` gives (its statistic for the samples; the
    tests check both), without importing scipy.stats, half a second of every
    trial process's first evaluation."""
    m, n = len(sample_dist), len(heldout_dist)
    held = np.sort(heldout_dist)
    below = np.searchsorted(held, sample_dist, side="left")  # held-out points nearer
    u = 0.5 * float((below + np.searchsorted(held, sample_dist, side="right")).sum())
    return float((u - (m * n / 2 - 0.5)) / np.sqrt(m * n * (m + n + 1) / 12))


def ct_score(cells: Cells, samples: Tensor, min_samples: int = MIN_SAMPLES) -> float:
    """C_T of the samples' features; nan when no cell holds min_samples."""
    sample_cells = cells.assign(samples)
    sample_dist = cells.nearest_train(samples, sample_cells)
    weights, scores = [], []
    for c in range(len(cells.train)):
        mine, held = sample_cells == c, cells.heldout_cells == c
        if mine.sum() < min_samples or not held.any():
            continue
        weights.append(held.mean())
        scores.append(z_u(sample_dist[mine], cells.heldout_dist[held]))
    if not weights:
        return float("nan")
    return float(np.average(scores, weights=weights))
