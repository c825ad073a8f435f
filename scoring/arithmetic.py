"""The arithmetic of the sample metrics, on tensors: Frechet distance, KID,
precision/recall, density/coverage, class coverage and the PacGAN mixture
protocol. Which metric runs on which data is the registry's business
(scoring/registry.py); these functions know nothing of datasets.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

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


# fid_inf's sample sizes: FID_INF_POINTS sizes evenly spaced from a
# FID_INF_SPAN-th of the samples to all of them (Chong and Forsyth 2020 use 15
# sizes from 5,000 to 50,000, a span of 10; ours has a fifth of the scored
# samples at the low end, so a 1000-sample evaluation fits 200 .. 1000)
FID_INF_POINTS = 8
FID_INF_SPAN = 5


def fid_inf_sizes(n: int) -> list[int]:
    """The subset sizes fid_inf fits for n samples (empty when n is too few)."""
    low = n // FID_INF_SPAN
    if low < 2:
        return []
    step = (n - low) / (FID_INF_POINTS - 1)
    return sorted({round(low + i * step) for i in range(FID_INF_POINTS)})


def intercept_in_inverse_n(sizes: list[int], values: list[float]) -> float:
    """The least-squares line of values against 1/N, read at 1/N = 0."""
    slope, intercept = np.polyfit(1.0 / np.asarray(sizes, dtype=float), values, 1)
    return float(intercept)


def fid_infinity(mu: Tensor, cov: Tensor, fake: Tensor, seed: int = 0) -> float:
    """FID_inf (Chong and Forsyth 2020): fid of fid_inf_sizes(len(fake)) random
    subsets of the fake features against the fixed reference statistics,
    extrapolated linearly in 1/N to N -> infinity. The bias of fid at N
    samples is, to first order, proportional to 1/N and depends on the model;
    the intercept removes it. Subsets come from a fixed seed (the largest is
    every sample), so the value is a function of the features."""
    sizes = fid_inf_sizes(len(fake))
    if len(sizes) < 2:
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    values = []
    for n in sizes:
        pick = torch.randperm(len(fake), generator=gen)[:n].to(fake.device)
        values.append(frechet_distance(mu, cov, *feature_stats(fake[pick])))
    return intercept_in_inverse_n(sizes, values)


def vendi_score(features: Tensor) -> float:
    """The Vendi score (Friedman and Dieng 2022) with the cosine kernel: the
    exponential of the Shannon entropy of the eigenvalues of K/n, K the
    cosine similarities of the samples; the effective number of distinct
    samples (1 when all are alike, n when all are orthogonal). The package's
    dual form: the same nonzero eigenvalues from the d x d matrix X^T X / n.

    The vendi-score package's `score_dual`, step for step (the tests check
    it gives the package's number): the package imports scikit-learn for its
    row normalisation, 0.5-1.2 s of every trial process's first evaluation
    where nothing else there needs scikit-learn."""
    from scipy.linalg import eigvalsh

    x = features.double().cpu().numpy()
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # scikit-learn's row_norms
    x = x / np.where(norms < 10 * np.finfo(x.dtype).eps, 1.0, norms)[:, None]  # zero stays zero
    w = eigvalsh(x.T @ x / len(x))
    w = w[w > 0]
    return float(np.exp(-(w * np.log(w)).sum()))


def kid(
    real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> float:
    """Kernel inception distance: unbiased MMD^2 with the kernel (x.y/d + 1)^3,
    averaged over random subsets (fewer samples than subset_size: one subset
    size of the smaller set). Subsets are drawn from a fixed seed, so the
    value is a deterministic function of the two feature sets."""
    m = min(subset_size, len(real), len(fake))
    if m == len(real) == len(fake):
        subsets = 1  # every subset would be the whole of both sets: the same value
    gen = torch.Generator().manual_seed(seed)
    r, f = real.double(), fake.double()
    d = r.shape[1]
    total = 0.0
    for _ in range(subsets):
        x = r[torch.randperm(len(r), generator=gen)[:m].to(r.device)]
        y = f[torch.randperm(len(f), generator=gen)[:m].to(f.device)]
        total += _poly_mmd2(x, y, d)
    return total / subsets


def _poly_mmd2(x: Tensor, y: Tensor, d: int) -> float:
    m = len(x)
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(off - 2 * kxy.mean())


def _kth_neighbour_radii(x: Tensor, ks: tuple[int, ...], chunk: int = 2048) -> dict[int, Tensor]:
    """Distance from each point to its k-th nearest other point, for each k,
    from one pass over the pairwise distances."""
    out: dict[int, list[Tensor]] = {k: [] for k in set(ks)}
    for c in x.split(chunk):
        near = torch.cdist(c, x).topk(max(ks) + 1, dim=1, largest=False).values
        for k, found in out.items():
            found.append(near[:, k])  # [:, 0] is the point itself
    return {k: torch.cat(v) for k, v in out.items()}


def prdc(
    real: Tensor, fake: Tensor, k_pr: int = 3, k_dc: int = 5, chunk: int = 2048
) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, k = k_pr) and
    density and coverage (Naeem et al. 2020, k = k_dc), strict '<':
    precision: the share of fake samples inside the real manifold (the union
    of balls reaching each real point's k-th neighbour); recall: the share of
    real samples inside the fake one;
    density = 1/(kM) sum_j sum_i 1[y_j in B(x_i, NND_k(x_i))];
    coverage = 1/N sum_i 1[exists j: y_j in B(x_i, NND_k(x_i))].
    Three passes over distances (real-real, fake-fake, fake-real), shared by
    all four; float64, so ball boundaries are exact."""
    r, f = real.double(), fake.double()
    real_radii = _kth_neighbour_radii(r, (k_pr, k_dc), chunk)
    # k or fewer fakes define no k-th neighbour: no fake balls, recall 0
    few = len(f) <= k_pr
    fake_radii = (
        torch.zeros(len(f), dtype=f.dtype, device=f.device)
        if few
        else (_kth_neighbour_radii(f, (k_pr,), chunk)[k_pr])
    )
    in_real = torch.zeros(len(f), dtype=torch.bool, device=r.device)
    density = torch.zeros((), dtype=r.dtype, device=r.device)
    recalled = torch.zeros(len(r), dtype=torch.bool, device=r.device)
    nearest_fake = torch.full((len(r),), float("inf"), device=r.device, dtype=r.dtype)
    for start in range(0, len(f), chunk):
        dist = torch.cdist(f[start : start + chunk], r)  # (fakes of the chunk, reals)
        in_real[start : start + chunk] = (dist < real_radii[k_pr][None, :]).any(dim=1)
        density += (dist < real_radii[k_dc][None, :]).sum()
        recalled |= (dist < fake_radii[start : start + chunk, None]).any(dim=0)
        nearest_fake = torch.minimum(nearest_fake, dist.min(dim=0).values)
    return {
        "precision": float(in_real.double().mean()),
        "recall": float(recalled.double().mean()),
        "density": float(density / (k_dc * len(f))),
        "coverage": float((nearest_fake < real_radii[k_dc]).double().mean()),
    }


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall with k (see prdc)."""
    got = prdc(real, fake, k_pr=k, k_dc=k)
    return {"precision": got["precision"], "recall": got["recall"]}


def density_coverage(real: Tensor, fake: Tensor, k: int = 5) -> dict[str, float]:
    """Density and coverage with k (see prdc)."""
    got = prdc(real, fake, k_pr=k, k_dc=k)
    return {"density": got["density"], "coverage": got["coverage"]}


def class_min_count(n: int, n_classes: int, min_count: float | None = None) -> float:
    """The samples a class needs to count as covered: `min_count`, by default
    1/(4K) of the n samples."""
    return n / (4 * n_classes) if min_count is None else min_count


def class_coverage(
    pred: Tensor, n_classes: int, min_count: float | None = None
) -> dict[str, float]:
    """modes_covered: classes receiving at least min_count samples, by default
    1/(4K) of them, so the classifier's stray errors do not count as coverage;
    mode_kl: KL of the predicted-class histogram to uniform (0 when balanced)."""
    counts = torch.bincount(pred.flatten().long(), minlength=n_classes).double()
    min_count = class_min_count(len(pred), n_classes, min_count)
    p = counts / counts.sum()
    nz = p > 0
    return {
        "modes_covered": float((counts >= min_count).sum()),
        "mode_kl": float((p[nz] * (p[nz] * n_classes).log()).sum()),
    }


def nearest_modes(points: Tensor, modes: Tensor, std: float) -> Tensor:
    """Each point's nearest mode when it is a high-quality sample (within
    HQ_THRESHOLD std of it, PacGAN's rule), else -1."""
    dist = torch.cdist(points.double(), modes.double()) / std
    nearest_d, nearest = dist.min(dim=1)
    return torch.where(nearest_d < HQ_THRESHOLD, nearest, -1)


def mixture_quality(points: Tensor, modes: Tensor, std: float) -> dict[str, float]:
    """PacGAN protocol: a sample is high quality when its distance to the
    nearest mode is under 3 std; modes_captured counts modes with at least one
    high-quality sample; reverse_kl is KL(histogram of high-quality samples over
    modes || uniform), log K (a single mode's value) when none is high quality."""
    labels = nearest_modes(points, modes, std)
    hq = labels >= 0
    nearest = labels[hq]
    k = len(modes)
    counts = torch.bincount(nearest, minlength=k).double()
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
