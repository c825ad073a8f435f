"""Latent-space probes: perceptual path length (Karras et al. 2019, as
torch-fidelity computes it), a linear probe on frozen codes (logistic
regression from a few labels: how much of the class a code makes linear) and
latent arithmetic (attribute vectors between class means, added to codes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

PATH_EPSILON = 1e-4  # torch-fidelity's and StyleGAN's step along a path


def path_lengths(
    features: Callable[[Tensor], Tensor], at_t: Tensor, at_t_eps: Tensor, eps: float
) -> Tensor:
    """Per path, the squared feature distance between the images at t and at
    t + eps over eps^2."""
    diff = features(at_t).double() - features(at_t_eps).double()
    return diff.pow(2).sum(1) / eps**2


def trimmed_mean(values: Tensor) -> float:
    """Mean of the values between the 1st and the 99th percentile, inclusive
    (torch-fidelity's PPL reduction: the rare paths across a discontinuity
    would otherwise decide the mean)."""
    v = values.cpu().numpy()
    lo = np.percentile(v, 1, method="lower")
    hi = np.percentile(v, 99, method="higher")
    return float(v[(v >= lo) & (v <= hi)].mean())


def linear_probe(
    train_codes: Tensor, train_labels: Tensor, test_codes: Tensor, test_labels: Tensor
) -> float:
    """Held-out accuracy of a logistic regression on standardised codes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    # one BLAS thread: on these small matrices OpenBLAS's threads cost 10-20x
    # the work (measured: 1.8 s against 0.1 s for 500 codes of 128), and a
    # trial shares its cores with the others
    with threadpool_limits(limits=1, user_api="blas"):
        probe.fit(_numpy(train_codes), _numpy(train_labels))
        return float(probe.score(_numpy(test_codes), _numpy(test_labels)))


# latent arithmetic's pairs: class c to class c + 1 (mod K), for the first
# ARITHMETIC_CLASSES classes: every digit once as source and once as target
ARITHMETIC_CLASSES = 10


def class_pairs(n_classes: int) -> list[tuple[int, int]]:
    """The (source, target) class pairs latent arithmetic is scored on."""
    return [(c, (c + 1) % n_classes) for c in range(min(n_classes, ARITHMETIC_CLASSES))]


@dataclass(frozen=True)
class Shifts:
    """Held-out codes moved along attribute vectors, for decoding and scoring."""

    codes: Tensor  # (M, ...) each row a held-out code of a pair's source class plus the vector
    originals: Tensor  # (M, ...) the same codes as they were
    pair: Tensor  # (M,) the pair each row belongs to
    targets: Tensor  # (M,) the class each row aims at: its pair's target
    means: Tensor  # (P, 2, ...) each pair's source and target class mean (zeros where none)
    n_pairs: int  # the pairs scored: those whose source class has held-out codes


def attribute_shifts(
    fit: Tensor,
    fit_y: Tensor,
    held: Tensor,
    held_y: Tensor,
    pairs: list[tuple[int, int]],
    per_pair: int,
) -> Shifts:
    """For each pair (a, b), the attribute vector: the mean of the `fit` codes
    of class b minus that of class a, added to the first `per_pair` `held`
    codes of class a (the chapter's arithmetic, with class means for its
    group means). A pair whose source has no held code is not scored; one
    whose source or target has no fit code has no vector and scores 0 (it
    counts in n_pairs with no rows)."""
    rows: list[tuple[int, Tensor, Tensor]] = []
    means = torch.zeros(len(pairs), 2, *fit.shape[1:], dtype=fit.dtype, device=fit.device)
    n_pairs = 0
    for p, (a, b) in enumerate(pairs):
        sources = held[held_y == a][:per_pair]
        if not len(sources):
            continue
        n_pairs += 1
        in_a, in_b = fit[fit_y == a], fit[fit_y == b]
        if len(in_a) and len(in_b):
            means[p, 0], means[p, 1] = in_a.mean(0), in_b.mean(0)
            rows.append((p, sources, means[p, 1] - means[p, 0]))
    like = held[:0]
    originals = torch.cat([s for _, s, _ in rows]) if rows else like
    pair = torch.cat([torch.full((len(s),), p) for p, s, _ in rows]) if rows else torch.zeros(0)
    pair = pair.long().to(held.device)
    shifted = torch.cat([s + v for _, s, v in rows]) if rows else like
    targets = torch.tensor([b for _, b in pairs], device=held.device)[pair]
    return Shifts(shifted, originals, pair, targets, means, n_pairs)


def shift_success(predicted: Tensor, targets: Tensor, pair: Tensor, n_pairs: int) -> float:
    """The share of shifted codes decoded to their target class, averaged
    over the n_pairs pairs (a pair with no rows counts 0); NaN with none."""
    if n_pairs == 0:
        return float("nan")
    hit = (predicted.to(targets.device) == targets).double()
    total = sum(float(hit[pair == p].mean()) for p in pair.unique())
    return total / n_pairs


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().cpu().flatten(1).numpy() if x.dim() > 1 else x.detach().cpu().numpy()


__all__ = [
    "ARITHMETIC_CLASSES",
    "PATH_EPSILON",
    "Shifts",
    "attribute_shifts",
    "class_pairs",
    "linear_probe",
    "path_lengths",
    "shift_success",
    "trimmed_mean",
]
