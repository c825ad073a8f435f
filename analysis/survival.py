"""Collapse as an event in time: Kaplan-Meier curves of the time to a
seed's first collapse, grouped by a setting, with log-rank tests between
the groups.

A seed that never collapsed is censored at the epoch it ended (the last,
or the one it diverged at); a seed collapsed from its first evaluation
counts as an event there. The estimator and the test are scipy's
(`scipy.stats.ecdf` on censored data, `scipy.stats.logrank`), the same
numbers lifelines gives; lifelines itself pins pandas below 3."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.runs import AnalysisError, load_runs

BINS = 4  # a numeric setting with more values than this is cut into quantile bins


def survival(
    study: str,
    by: str,
    tracking_uri: str | None = None,
    *,
    bins: int = BINS,
    runs: pd.DataFrame | None = None,
    experiment: str | None = None,
) -> pd.DataFrame:
    """Kaplan-Meier survival (no collapse yet) over epochs per group of the
    setting `by`: columns `by`, epoch, survival, low, high (95% log-log
    band), at_risk, events. attrs["logrank"]: a log-rank p-value per pair
    of groups."""
    runs = runs if runs is not None else load_runs(study, tracking_uri, experiment)
    return survival_table(runs, by, bins)


def survival_table(runs: pd.DataFrame, by: str, bins: int = BINS) -> pd.DataFrame:
    settings = runs.attrs.get("params", list(runs.columns))
    if by not in settings or by not in runs:
        raise AnalysisError(
            f"setting '{by}' is not one of the study's; it has: {', '.join(sorted(settings))}"
        )
    ended = runs.dropna(subset=["ended_epoch"])
    if ended.empty:
        raise AnalysisError("no ended seed records its course (collapse_epoch, ended_epoch)")
    groups = grouping(ended[by], bins)
    time = ended["collapse_epoch"].fillna(ended["ended_epoch"]).to_numpy(float)
    event = ended["collapse_epoch"].notna().to_numpy()
    curves = [
        kaplan_meier(time[groups == g], event[groups == g]).assign(**{by: g})
        for g in groups.cat.categories
        if (groups == g).any()
    ]
    table = pd.concat(curves, ignore_index=True)[
        [by, "epoch", "survival", "low", "high", "at_risk", "events"]
    ]
    table[by] = pd.Categorical(table[by], categories=groups.cat.categories, ordered=True)
    table.attrs["logrank"] = logrank_pairs(time, event, groups, by)
    table.attrs["by"] = by
    return table


def grouping(values: pd.Series, bins: int) -> pd.Series:
    """The group of each seed: its value, or for a numeric setting with more
    than `bins` values its quantile bin (in log space when the values span
    more than a factor of ten, as learning rates do)."""
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if not numeric or values.nunique() <= bins:
        labels = values.map(_fmt)
        order = [_fmt(v) for v in sorted(values.unique())]
        return pd.Series(pd.Categorical(labels, categories=order, ordered=True), index=values.index)
    logged = bool((values > 0).all() and values.max() > 10 * values.min())
    cut = pd.qcut(np.log10(values) if logged else values, bins, duplicates="drop")
    names = [
        f"{_fmt(10**i.left if logged else i.left)}-{_fmt(10**i.right if logged else i.right)}"
        for i in cut.cat.categories
    ]
    return pd.Series(cut.cat.rename_categories(names), index=values.index)


def _fmt(v: object) -> str:
    return f"{v:.2g}" if isinstance(v, float) else str(v)


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> pd.DataFrame:
    """S(t) = prod over event times t_i <= t of (1 - d_i / n_i), from epoch
    0, with the 95% log-log confidence band (NaN where undefined)."""
    points = np.unique(time)
    at_risk = np.array([(time >= t).sum() for t in points])
    events = np.array([((time == t) & event).sum() for t in points])
    rows = pd.DataFrame({"epoch": points, "at_risk": at_risk, "events": events})
    if events.sum() == 0:
        rows["survival"], rows["low"], rows["high"] = 1.0, np.nan, np.nan
    else:
        data = stats.CensoredData(uncensored=time[event], right=time[~event])
        sf = stats.ecdf(data).sf
        band = sf.confidence_interval(0.95, method="log-log")
        rows["survival"] = sf.evaluate(points)
        rows["low"], rows["high"] = band.low.evaluate(points), band.high.evaluate(points)
    start = pd.DataFrame(
        {"epoch": [0.0], "at_risk": [len(time)], "events": [0], "survival": [1.0],
         "low": [1.0], "high": [1.0]}
    )  # fmt: skip
    return pd.concat([start, rows], ignore_index=True)


def logrank_pairs(time: np.ndarray, event: np.ndarray, groups: pd.Series, by: str) -> pd.DataFrame:
    """The log-rank test's p-value between every two groups that hold seeds."""
    present = [g for g in groups.cat.categories if (groups == g).any()]
    rows = []
    for a, b in combinations(present, 2):
        x, y = (groups == a).to_numpy(), (groups == b).to_numpy()
        p = np.nan
        if event[x | y].any():
            p = stats.logrank(
                stats.CensoredData(uncensored=time[x & event], right=time[x & ~event]),
                stats.CensoredData(uncensored=time[y & event], right=time[y & ~event]),
            ).pvalue
        rows.append({f"{by}_a": a, f"{by}_b": b, "p_value": float(p)})
    return pd.DataFrame(rows, columns=[f"{by}_a", f"{by}_b", "p_value"])
