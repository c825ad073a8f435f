"""Sample-quality and mode-collapse metrics, one code path for trials and notebooks.

`evaluate_samples(samples, dataset)` scores generated data against the
dataset's held-out split: images in the features and predictions of the
dataset's own classifier, 2-D mixtures by distance to the mixture's modes
(PacGAN protocol, REFERENCES.md).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch
from torch import Tensor

from analysis.extractors import extractor_for
from study.data import Dataset, load_dataset

HQ_THRESHOLD = 3.0  # a 2-D sample is high quality within 3 standard deviations of a mode


def feature_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased) covariance in float64."""
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    Tr((S1 S2)^(1/2)) equals Tr((S1^(1/2) S2 S1^(1/2))^(1/2)); the inner matrix
    is symmetric PSD, so eigvalsh gives the trace exactly and stably, with no
    complex parts to discard as scipy.linalg.sqrtm needs.
    """
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    vals, vecs = torch.linalg.eigh(cov1)
    root1 = (vecs * vals.clamp(min=0).sqrt()) @ vecs.T
    inner = root1 @ cov2 @ root1
    tr_root = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + cov1.trace() + cov2.trace() - 2 * tr_root)


def class_coverage(pred: Tensor, n_classes: int) -> dict[str, float]:
    """modes_covered: classes receiving at least 1/(4K) of the samples, so the
    classifier's stray errors do not count as coverage; mode_kl: KL of the
    predicted-class histogram to uniform (0 for a perfectly balanced sampler)."""
    counts = torch.bincount(pred.flatten().long(), minlength=n_classes).double()
    p = counts / counts.sum()
    nz = p > 0
    return {
        "modes_covered": float((counts >= len(pred) / (4 * n_classes)).sum()),
        "mode_kl": float((p[nz] * (p[nz] * n_classes).log()).sum()),
    }


def mixture_quality(points: Tensor, modes: Tensor, std: float) -> dict[str, float]:
    """PacGAN protocol: a sample is high quality when its distance to the
    nearest mode is under 3 std; modes_captured counts modes with at least one
    high-quality sample; reverse_kl is KL(histogram of high-quality samples over
    modes || uniform), log K (a single mode's value) when none is high quality."""
    dist = torch.cdist(points.double(), modes.double()) / std
    nearest_d, nearest = dist.min(dim=1)
    hq = nearest_d < HQ_THRESHOLD
    k = len(modes)
    counts = torch.bincount(nearest[hq], minlength=k).double()
    if counts.sum() > 0:
        p = counts / counts.sum()
        nz = p > 0
        rkl = float((p[nz] * (p[nz] * k).log()).sum())
    else:
        rkl = math.log(k)
    return {
        "modes_captured": float((counts > 0).sum()),
        "hq_fraction": float(hq.double().mean()),
        "reverse_kl": rkl,
    }


@cache
def _reference(dataset: str, device: str) -> tuple[Dataset, Tensor | None, Tensor | None]:
    """The held-out split on `device`, with its feature statistics (images)."""
    data = load_dataset(dataset).to(device)
    if not data.is_image:
        return data, None, None
    mu, cov = feature_stats(extractor_for(dataset, device).features(data.test_x))
    return data, mu, cov


def _as_tensor(samples: Tensor | np.ndarray, device: str | None) -> Tensor:
    x = torch.as_tensor(np.asarray(samples) if not isinstance(samples, Tensor) else samples)
    return x.float().to(device or x.device)


def evaluate_samples(
    samples: Tensor | np.ndarray, dataset: str = "mnist5k", device: str | None = None
) -> dict[str, float]:
    """Score generated samples against `dataset`'s held-out split.

    Images: (N, C, H, W) in [0, 1] -> fid, modes_covered, mode_kl.
    2-D mixtures: (N, 2) -> modes_captured, hq_fraction, reverse_kl.
    """
    x = _as_tensor(samples, device)
    dev = str(x.device)
    data, mu, cov = _reference(dataset, dev)
    expected = tuple(data.test_x.shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"samples of shape {tuple(x.shape)} do not match {dataset} samples (N, "
            f"{', '.join(map(str, expected))})"
        )
    if not data.is_image:
        return mixture_quality(x, data.modes, data.mode_std)
    ext = extractor_for(dataset, dev)
    mu_g, cov_g = feature_stats(ext.features(x))
    return {
        "fid": frechet_distance(mu, cov, mu_g, cov_g),
        **class_coverage(ext.predict(x), data.n_classes),
    }


def provenance(dataset: str, device: str = "cpu") -> dict[str, str]:
    """What a run records beside its scores: which extractor, which weights,
    which reference set, so numbers from different runs are known comparable."""
    data, _, _ = _reference(dataset, device)
    out = {"fid_reference": f"{dataset}:test", "fid_n_real": str(len(data.test_x))}
    if data.is_image:
        ext = extractor_for(dataset, device)
        out |= {
            "fid_extractor": ext.name,
            "fid_weights_sha256": ext.weights_sha256,
            "classifier_test_accuracy": f"{ext.accuracy:.4f}",
        }
    return out


def is_collapsed(metrics: dict[str, float], n_modes: int) -> bool:
    """Collapse: the final samples cover less than half of the classes/modes."""
    covered = metrics.get("modes_covered", metrics.get("modes_captured"))
    return covered is not None and covered < n_modes / 2
