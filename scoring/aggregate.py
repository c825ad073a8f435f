"""Per-configuration statistics over seeds: the one aggregation behind the
end-of-study table and `analysis.config_stats`."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from scoring.outcomes import OUTCOMES


def per_configuration(
    trials: pd.DataFrame,
    knobs: Sequence[str],
    metrics: Sequence[str],
    mode: str = "min",
    sort_by: str | None = None,
) -> pd.DataFrame:
    """One row per `config_id`: its knobs, seed count, mean/std/min/max of
    each metric over the seeds that produced it, and per outcome the count
    and share of seeds ending so; best first by `sort_by`'s mean (default:
    the first metric's). Trials without a config_id (failed before
    reporting) are left out."""
    keyed = trials.dropna(subset=["config_id"])
    if keyed.empty:
        return pd.DataFrame()
    metrics = [m for m in metrics if m in keyed]
    groups = keyed.groupby("config_id", sort=False)
    out = groups[list(knobs)].first() if knobs else pd.DataFrame(index=groups.size().index)
    out["seeds"] = groups.size()
    for m in metrics:
        stats = groups[m].agg(["mean", "std", "min", "max"])
        out[[f"{m}_{s}" for s in stats.columns]] = stats.to_numpy()
    for o in OUTCOMES:
        out[o] = groups["outcome"].apply(lambda s, o=o: int((s == o).sum()))
        out[f"{o}_rate"] = out[o] / out["seeds"]
    key = sort_by if sort_by in metrics else (metrics[0] if metrics else None)
    if key is not None:
        out = out.sort_values(f"{key}_mean", ascending=mode == "min", na_position="last")
    return out.reset_index()
