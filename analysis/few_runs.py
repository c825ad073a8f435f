"""rliable's aggregates over a study's runs (rows of `load_runs`): the
interquartile mean of each configuration, the probability that one
configuration's seed beats another's, and performance profiles, each with a
95% bootstrap interval over seeds. The statistics are scoring.few_runs',
the same as the end-of-study confirmation table's."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.confirm import metric_mode, rank_confidence
from analysis.runs import AnalysisError
from scoring import few_runs

PROFILE_POINTS = 50  # thresholds of a profile, spanning every seed's value


def iqm(runs: pd.DataFrame, metric: str | None = None, mode: str | None = None) -> pd.DataFrame:
    """One row per configuration, best IQM first: config_id, seeds, the
    interquartile mean of `metric` (default: the study's) over its seeds with
    its 95% stratified-bootstrap interval (iqm_low, iqm_high), and the mean."""
    metric, mode = metric_mode(runs, metric, mode)
    ranked = rank_confidence(runs, metric, mode, by=[])
    out = ranked[["config_id", "seeds", f"{metric}_iqm", f"{metric}_iqm_low",
                  f"{metric}_iqm_high", f"{metric}_mean"]]  # fmt: skip
    out.columns = ["config_id", "seeds", "iqm", "iqm_low", "iqm_high", "mean"]
    return out.sort_values("iqm", ascending=mode == "min").reset_index(drop=True)


def _values(runs: pd.DataFrame, config_id: str, metric: str) -> np.ndarray:
    values = runs.loc[runs["config_id"] == config_id, metric].dropna().to_numpy(float)
    if not len(values):
        raise AnalysisError(f"configuration '{config_id}' has no run with a value of {metric}")
    return values


def probability_of_improvement(
    runs: pd.DataFrame, x: str, y: str, metric: str | None = None, mode: str | None = None
) -> pd.Series:
    """P(X > Y): the probability that a seed of configuration `x` (a
    config_id) scores better than a seed of `y`, with its 95% interval
    (each one's seeds resampled independently): p, low, high, seeds_x, seeds_y."""
    metric, mode = metric_mode(runs, metric, mode)
    a, b = _values(runs, x, metric), _values(runs, y, metric)
    low, high = few_runs.improvement_interval(a, b, mode)
    p = few_runs.probability_of_improvement(a, b, mode)
    return pd.Series({"p": p, "low": low, "high": high, "seeds_x": len(a), "seeds_y": len(b)})


def performance_profiles(
    runs: pd.DataFrame,
    metric: str | None = None,
    mode: str | None = None,
    thresholds: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Per configuration and threshold the share of its seeds at or better
    than the threshold (fid <= t), with a 95% bootstrap band: config_id,
    threshold, share, low, high. Thresholds default to PROFILE_POINTS
    spanning every seed's value."""
    metric, mode = metric_mode(runs, metric, mode)
    scored = runs.dropna(subset=[metric])
    if scored.empty:
        raise AnalysisError(f"no run has a value of {metric}")
    if thresholds is None:
        lo, hi = scored[metric].min(), scored[metric].max()
        thresholds = np.linspace(lo, hi, PROFILE_POINTS)
    frames = []
    for cid, group in scored.groupby("config_id", sort=False):
        share, low, high = few_runs.profile(group[metric].to_numpy(float), thresholds, mode)
        frames.append(pd.DataFrame({"config_id": cid, "threshold": thresholds, "share": share,
                                    "low": low, "high": high}))  # fmt: skip
    return pd.concat(frames, ignore_index=True)
