"""Per-configuration statistics over seeds: the one aggregation behind the
end-of-study table and `analysis.config_stats`."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from scoring.outcomes import OUTCOMES
from scoring.registry import split_sampler_metric


def per_configuration(
    trials: pd.DataFrame,
    knobs: Sequence[str],
    metrics: Sequence[str],
    mode: str = "min",
    sort_by: str | None = None,
) -> pd.DataFrame:
    """One row per `config_id`: its knobs, seed count, mean/std/min/max of
    each metric over the seeds that produced it, per outcome the count and
    share of seeds ending so, and where the trials record their course the
    median epoch of the first collapse over the seeds that collapsed and the
    shares that collapsed at some evaluation and that hopped; best first by
    `sort_by`'s mean (default: the first metric's). Trials without a config_id (failed before
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
    if "collapse_epoch" in keyed:  # the course over time: when, and how often it hopped
        out["collapse_epoch_median"] = groups["collapse_epoch"].median()
        out["collapse_share"] = groups["collapse_epoch"].apply(lambda s: float(s.notna().mean()))
    if "hopping" in keyed:
        out["hopping_share"] = groups["hopping"].apply(lambda s: s.astype(float).mean())
    key = sort_by if sort_by in metrics else (metrics[0] if metrics else None)
    if key is not None:
        out = out.sort_values(f"{key}_mean", ascending=mode == "min", na_position="last")
    return out.reset_index()


def per_sampler(
    trials: pd.DataFrame, knobs: Sequence[str], metrics: Sequence[str], mode: str = "min"
) -> pd.DataFrame:
    """per_configuration with one row per configuration and sampler: a
    trial's unsuffixed metrics are its main sampler's (column `sampler`), and
    its METRIC_SAMPLER columns (`metrics` holds those wanted) become rows of
    that sampler, under the metric's own name, for every configuration that
    scored it; a metric without per-sampler columns (train_seconds) keeps
    the trial's value. Keyed `config_id/sampler`."""
    keyed = trials.dropna(subset=["config_id"])
    base = [m for m in metrics if split_sampler_metric(m) is None and m in keyed]
    extra = sorted({s[1] for m in metrics if (s := split_sampler_metric(m)) and m in keyed})
    keyed = keyed.assign(sampler=keyed["sampler"].fillna("") if "sampler" in keyed else "")
    parts = [keyed]
    for name in extra:
        cols = {f"{m}_{name}": m for m in base if f"{m}_{name}" in keyed}
        if not cols:  # none of `metrics` own names has a column for this sampler
            continue
        scored = keyed.groupby("config_id")[list(cols)].transform("count").sum(axis=1) > 0
        scored &= keyed["sampler"] != name  # the main sampler's row is there already
        part = keyed[scored].drop(columns=list(cols.values())).rename(columns=cols)
        parts.append(part.assign(sampler=name))
    rows = pd.concat(parts, ignore_index=True)
    rows["config_id"] = rows["config_id"].astype(str) + "/" + rows["sampler"]
    return per_configuration(rows, [*knobs, "sampler"], base, mode)


def per_group(
    trials: pd.DataFrame,
    group: str,
    knobs: Sequence[str],
    metric: str,
    mode: str = "min",
    extra: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per value of `group` (a technique), over the rest of the grid
    (the other `knobs`) and the seeds: its trials, the share that ended `ok`,
    the configurations whose every seed ended ok (the stable region's width),
    the best configuration's mean `metric` and the median over scored
    trials, and the mean of each `extra` metric. Sorted widest first, then
    by the best metric."""
    table = per_configuration(trials, [group, *knobs], [metric, *extra], mode)
    keyed = trials.dropna(subset=["config_id"])
    if table.empty or metric not in keyed:
        return pd.DataFrame()
    better = "min" if mode == "min" else "max"
    rows = []
    for value, configs in table.groupby(group, sort=False):
        runs = keyed[keyed[group] == value]
        stable = configs[configs["ok_rate"] == 1.0]
        row = {
            group: value,
            "trials": len(runs),
            "ok_share": float((runs["outcome"] == "ok").mean()),
            "stable_configs": len(stable),
            "configs": len(configs),
            f"best_{metric}": getattr(configs[f"{metric}_mean"], better)(),
            f"median_{metric}": runs[metric].median(),
        }
        if len(knobs) == 1:  # the stable values of the one other axis
            row["stable_values"] = ", ".join(_short(v) for v in sorted(stable[knobs[0]]))
        rows.append(row | {f"{m}_mean": runs[m].mean() for m in extra if m in runs})
    out = pd.DataFrame(rows)
    ascending = [False, mode == "min"]
    return out.sort_values(["ok_share", f"best_{metric}"], ascending=ascending).reset_index(
        drop=True
    )


def _short(v: object) -> str:
    return f"{v:.2g}" if isinstance(v, float) else str(v)
