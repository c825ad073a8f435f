"""Stability statistics over a study's trials (rows of `load_runs`): per
configuration over seeds, the budget curve of Lucic et al. and the
stability map over two knobs (knob importance: analysis/importance.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from scoring.aggregate import per_configuration
from study.studies.spec import SEED_SOURCES
from study.tracking import FROM_EPOCH, GENERATION, PARENT, REPLACED_TRIAL

# columns of load_runs that describe a trial rather than configure it (the
# family does configure a study that spans families: there it varies)
NOT_KNOBS = {
    "run_id", "parent_run_id", "study_run", "run_name", "status", "outcome", "outcome_reason",
    "trial_id", "ray_node", "restored_from_epoch", "seed", "config_id", "device", "threads",
    "train_samples", "start_time", "phase", "pack", "member", "param_count", "sampler",
    "dataset", *SEED_SOURCES, PARENT, GENERATION, FROM_EPOCH, REPLACED_TRIAL,
}  # fmt: skip


def knobs(runs: pd.DataFrame, metrics: Sequence[str] = ()) -> list[str]:
    """The params that vary between the configurations of these runs (the
    searched axes, whatever the invocation searched), in column order."""
    params = runs.attrs.get("params") or [c for c in runs.columns if c not in metrics]
    first = runs.drop_duplicates("config_id")
    return [
        c for c in params if c in runs and c not in NOT_KNOBS and first[c].nunique(dropna=True) > 1
    ]


def config_stats(
    runs: pd.DataFrame, metrics: Sequence[str], mode: str = "min", by: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per configuration: its knobs, seeds, mean/std/min/max of each
    metric over seeds, and the count (`ok`) and share (`ok_rate`) of seeds
    ending in each outcome; sorted best first by the first metric's mean.
    The same aggregation as the end-of-study table."""
    by = list(by) if by is not None else knobs(runs, metrics)
    return per_configuration(runs, by, metrics, mode)


def budget_curve(
    runs: pd.DataFrame,
    metric: str,
    mode: str = "min",
    max_k: int | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Lucic et al. (2018): the best `metric` expected after trying k
    configurations, for k = 1..K. Each bootstrap replicate draws k
    configurations with replacement and one of its seeds' results at random
    (so seed luck counts, as it does for a researcher), and keeps the best;
    the curve is the mean over replicates with a `level` percentile band.
    Diverged or failed trials count as the worst possible result."""
    worst = np.inf if mode == "min" else -np.inf
    scored = runs.assign(
        _v=np.where(runs["outcome"].isin(["diverged", "failed"]), worst, runs[metric])
    )
    scored["_v"] = scored["_v"].fillna(worst)
    per_config = [g.to_numpy() for _, g in scored.groupby("config_id")["_v"]]
    n = len(per_config)
    max_k = max_k or n
    rng = np.random.default_rng(seed)
    widths = np.array([len(v) for v in per_config])
    padded = np.full((n, widths.max()), np.nan)
    for i, v in enumerate(per_config):
        padded[i, : len(v)] = v
    rows = []
    for k in range(1, max_k + 1):
        picks = rng.integers(0, n, size=(n_boot, k))
        seeds = (rng.random((n_boot, k)) * widths[picks]).astype(int)
        values = padded[picks, seeds]
        best = values.min(1) if mode == "min" else values.max(1)
        finite = best[np.isfinite(best)]
        lo, hi = (
            np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
            if len(finite)
            else (np.nan,) * 2
        )
        rows.append(
            {
                "k": k,
                "best_mean": float(finite.mean()) if len(finite) else np.nan,
                "low": float(lo),
                "high": float(hi),
                "no_usable_result": float(1 - len(finite) / n_boot),
            }
        )
    return pd.DataFrame(rows)


def bin_values(values: pd.Series, n: int) -> pd.Series:
    """Equal-width bins, on a log scale where the knob spans a decade or more."""
    v = values.astype(float)
    if (v > 0).all() and v.max() / v.min() >= 10:
        edges = np.geomspace(v.min(), v.max() * 1.000001, n + 1)
    else:
        edges = np.linspace(v.min(), v.max() + 1e-12, n + 1)
    labels = [f"{a:.2g}-{b:.2g}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return pd.cut(v, edges, labels=labels, include_lowest=True)


def stability_map(
    runs: pd.DataFrame, x: str, y: str, bins: int = 4, outcome: str = "ok"
) -> pd.DataFrame:
    """Share of trials ending `outcome` over binned x by binned y (numeric
    knobs binned, categorical ones as they are); NaN where nothing was tried."""

    def axis(col: str) -> pd.Series:
        if not pd.api.types.is_numeric_dtype(runs[col]) or runs[col].dtype == bool:
            return runs[col].astype(str)
        return bin_values(runs[col], bins) if runs[col].nunique() > bins else runs[col]

    share = (runs["outcome"] == outcome).astype(float)
    table = share.groupby([axis(y).rename(y), axis(x).rename(x)], observed=False).mean()
    return table.unstack(x).sort_index(ascending=False)
