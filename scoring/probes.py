"""Latent-space probes: perceptual path length (Karras et al. 2019, as
torch-fidelity computes it) and a linear probe on frozen codes (logistic
regression from a few labels: how much of the class a code makes linear)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
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


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().cpu().flatten(1).numpy() if x.dim() > 1 else x.detach().cpu().numpy()


__all__ = ["PATH_EPSILON", "linear_probe", "path_lengths", "trimmed_mean"]
