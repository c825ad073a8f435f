"""Aggregates that survive few runs (Agarwal et al. 2021, "Deep RL at the
edge of the statistical precipice", the rliable library): the interquartile
mean, the probability that one configuration beats another, performance
profiles, each with a percentile bootstrap over seeds; and how many seeds
would tell two configurations apart (a power analysis).

The definitions are rliable's: `aggregate_iqm` is scipy's 25% trimmed mean,
`probability_of_improvement` the Mann-Whitney U statistic over nx * ny (ties
count half). rliable itself is not a dependency: its interval code imports
`arch`, which does not import under pandas 3, and with one task (a study's
dataset) its stratified bootstrap is the plain bootstrap over each
configuration's seeds done here. `rliable.metrics` gives the same numbers
(tests/test_few_runs.py checks against hand computations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

RESAMPLES = 2000
POWER, ALPHA = 0.8, 0.05  # the seeds-needed question: 80% power, two-sided 5% test
MAX_SEEDS = 10_000


def iqm(values: Sequence[float]) -> float:
    """The mean of the middle half of the values (25% cut from each end)."""
    return float(stats.trim_mean(np.asarray(values, dtype=float), 0.25))


def resample(x: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """(resamples, len(x)): the values drawn again with replacement, each row a resample."""
    return x[rng.integers(0, len(x), (resamples, len(x)))]


def iqm_interval(
    values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the IQM over the seeds."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    boot = stats.trim_mean(resample(x, np.random.default_rng(seed), resamples), 0.25, axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    return float(low), float(high)


def _better_pairs(x: np.ndarray, y: np.ndarray, mode: str) -> np.ndarray:
    """P(a run of x beats a run of y) along the last axis: the share of
    pairs in which x is better (lower under "min"), ties half."""
    a, b = x[..., :, None], y[..., None, :]
    better = a < b if mode == "min" else a > b
    return (better + 0.5 * (a == b)).mean(axis=(-2, -1))


def probability_of_improvement(x: Sequence[float], y: Sequence[float], mode: str) -> float:
    """P(X > Y): the probability that a seed of configuration x scores
    better than a seed of configuration y."""
    return float(_better_pairs(np.asarray(x, float), np.asarray(y, float), mode))


def improvement_interval(
    x: Sequence[float], y: Sequence[float], mode: str, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of P(X > Y), each configuration's
    seeds resampled independently."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if min(len(xa), len(ya)) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    boot = _better_pairs(resample(xa, rng, resamples), resample(ya, rng, resamples), mode)
    low, high = np.quantile(boot, [0.025, 0.975])
    return float(low), float(high)


def profile(
    values: Sequence[float],
    thresholds: Sequence[float],
    mode: str,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A performance profile: at each threshold the share of seeds at or
    better than it (fid <= threshold under "min"), with a 95% bootstrap band."""  # fmt: skip
    x, t = np.asarray(values, float), np.asarray(thresholds, float)

    def share(v: np.ndarray) -> np.ndarray:
        hit = v[..., :, None] <= t if mode == "min" else v[..., :, None] >= t
        return hit.mean(axis=-2)

    boot = share(resample(x, np.random.default_rng(seed), resamples))
    return share(x), np.quantile(boot, 0.025, axis=0), np.quantile(boot, 0.975, axis=0)


def seeds_needed(
    x: Sequence[float], y: Sequence[float], power: float = POWER, alpha: float = ALPHA
) -> int | None:
    """Seeds per configuration for a two-sided Welch t-test at level alpha
    to tell x's mean from y's with the given power, taking the measured
    means and standard deviations as the truth (exact, by the noncentral t
    distribution). None: the means are equal, or no number up to MAX_SEEDS
    does it; 2 at least."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    gap = abs(xa.mean() - ya.mean())
    v1, v2 = xa.var(ddof=1), ya.var(ddof=1)
    if gap == 0 or not math.isfinite(v1 + v2):
        return None
    if v1 + v2 == 0:
        return 2
    if _power(gap, v1, v2, MAX_SEEDS, alpha) < power:
        return None
    low, high = 1, MAX_SEEDS  # power grows with n: the least n that reaches it
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if _power(gap, v1, v2, mid, alpha) >= power else (mid, high)
    return max(high, 2)


def _power(gap: float, v1: float, v2: float, n: int, alpha: float) -> float:
    se = math.sqrt((v1 + v2) / n)
    df = (v1 + v2) ** 2 / ((v1**2 + v2**2) / (n - 1))  # Welch-Satterthwaite, n each
    crit = stats.t.ppf(1 - alpha / 2, df)
    ncp = gap / se
    exact = float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))
    if math.isfinite(exact):
        return exact
    # scipy's noncentral t fails far out in the tail: the normal limit there
    return float(stats.norm.sf(crit - ncp) + stats.norm.cdf(-crit - ncp))
