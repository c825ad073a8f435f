"""How sure a ranking of configurations is, from their seeds: a 95% interval
of each mean, and bootstrap resamples of the seeds (each configuration's
seeds drawn again with replacement, independently) for the probability that
a configuration is the best and that it beats the next one. Shared by the
end-of-study confirmation table and `analysis.rank_confidence`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import pandas as pd
from scipy import stats

from scoring.aggregate import per_configuration
from scoring.few_runs import (
    improvement_interval,
    iqm,
    iqm_interval,
    probability_of_improvement,
    resample,
    seeds_needed,
)

RESAMPLES = 4000  # the probabilities' Monte Carlo error is about 0.008 at most


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean over seeds; NaNs with under two values."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def resampled_means(
    scores: Sequence[Sequence[float]], resamples: int = RESAMPLES, seed: int = 0
) -> np.ndarray:
    """(resamples, configurations): each configuration's mean over its seeds
    drawn again with replacement."""
    rng = np.random.default_rng(seed)
    columns = [resample(np.asarray(v, dtype=float), rng, resamples).mean(axis=1) for v in scores]
    return np.stack(columns, axis=1)


def best_shares(means: np.ndarray, mode: str) -> np.ndarray:
    """Per configuration, the share of resamples in which it is the best; a
    tie splits that resample between the tied ones (two identical
    configurations get about one half each)."""
    signed = means if mode == "min" else -means
    best = signed == signed.min(axis=1, keepdims=True)
    return (best / best.sum(axis=1, keepdims=True)).mean(axis=0)


def beats(a: np.ndarray, b: np.ndarray, mode: str) -> float:
    """Share of resamples in which mean a is better than mean b (ties half)."""
    better = a < b if mode == "min" else a > b
    return float(better.mean() + 0.5 * (a == b).mean())


def interval_table(
    trials: pd.DataFrame, knobs: Sequence[str], metric: str, mode: str
) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """`per_configuration` for one metric, best mean first, with the 95%
    interval of each mean (`<metric>_ci_low`, `_ci_high`), left to the
    configurations with a value on some seed (a diverged seed has none; the
    outcome shares say how many); and the values of each, in that order."""
    table = per_configuration(trials, knobs, [metric], mode)
    if table.empty or metric not in trials:
        return pd.DataFrame(), []
    scored = trials.dropna(subset=[metric])
    # sorted: the resamples do not depend on the order the trials came in
    values = [
        np.sort(scored.loc[scored["config_id"] == c, metric].to_numpy()) for c in table["config_id"]
    ]
    table = table[[len(v) > 0 for v in values]].reset_index(drop=True)
    values = [v for v in values if len(v)]
    bounds = [mean_interval(v) for v in values]
    table[f"{metric}_ci_low"] = [lo for lo, _ in bounds]
    table[f"{metric}_ci_high"] = [hi for _, hi in bounds]
    return table, values


def rank_table(
    trials: pd.DataFrame,
    knobs: Sequence[str],
    metric: str,
    mode: str,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """`interval_table`, and how sure its order is: `p_best` (the share of
    bootstrap resamples in which a configuration is the best),
    `p_beats_next` (in which it beats the one ranked after it), `diff_next`
    (the next one's mean minus its own) with a 95% bootstrap interval, and
    `spread_over_gap`: its seeds' std is larger than the gap to the next
    mean, so their order is not to be trusted. With one seed there is no
    spread to resample: the probabilities are NaN."""
    table, values = interval_table(trials, knobs, metric, mode)
    if table.empty:
        return table
    n = len(values)
    if min(len(v) for v in values) < 2:
        for column in ("p_best", "p_beats_next", "diff_next_low", "diff_next_high"):
            table[column] = math.nan
    else:
        means = resampled_means(values, resamples, seed)
        table["p_best"] = best_shares(means, mode)
        table["p_beats_next"] = [
            *(beats(means[:, i], means[:, i + 1], mode) for i in range(n - 1)),
            math.nan,
        ]
        diffs = [means[:, i + 1] - means[:, i] for i in range(n - 1)]
        table["diff_next_low"] = [*(float(np.quantile(d, 0.025)) for d in diffs), math.nan]
        table["diff_next_high"] = [*(float(np.quantile(d, 0.975)) for d in diffs), math.nan]
    observed = [float(v.mean()) for v in values]
    table["diff_next"] = [*(b - a for a, b in pairwise(observed)), math.nan]
    few_run_columns(table, values, metric, mode, seed)
    gap = table[f"{metric}_mean"].diff(-1).abs()
    table["spread_over_gap"] = (table[f"{metric}_std"] > gap).fillna(False)
    return table


def few_run_columns(
    table: pd.DataFrame, values: list[np.ndarray], metric: str, mode: str, seed: int = 0
) -> None:
    """rliable's aggregates beside the mean (scoring/few_runs.py): each
    configuration's `<metric>_iqm` with its 95% bootstrap interval,
    `p_improves_next` (P(a seed of it beats a seed of the next)) with its
    interval, and `seeds_needed_next`, the seeds each that would tell it from
    the next at 95% with 80% power, given the spreads measured."""
    iqms = [iqm_interval(v, seed=seed) for v in values]
    table[f"{metric}_iqm"] = [iqm(v) for v in values]
    table[f"{metric}_iqm_low"], table[f"{metric}_iqm_high"] = zip(*iqms, strict=True)
    pairs = list(pairwise(values))
    spans = [improvement_interval(a, b, mode, seed=seed) for a, b in pairs]
    improves = [probability_of_improvement(a, b, mode) for a, b in pairs]
    table["p_improves_next"] = [*improves, math.nan]
    table["p_improves_next_low"] = [*(lo for lo, _ in spans), math.nan]
    table["p_improves_next_high"] = [*(hi for _, hi in spans), math.nan]
    needed = [seeds_needed(a, b) if min(len(a), len(b)) > 1 else None for a, b in pairs]
    table["seeds_needed_next"] = pd.array([*needed, None], dtype="Int64")


def confirmation_table(
    trials: pd.DataFrame, knobs: Sequence[str], metric: str, mode: str, seed: int = 0
) -> pd.DataFrame:
    """The confirmed configurations, in their confirmed order: each one's
    search estimate (`search_*`: seeds, mean and 95% interval, rank among
    every searched configuration) beside its estimate on the fresh seeds
    (`confirm_*`, with the outcome shares) and the confirmed ranking's
    `p_best`, `p_beats_next` and `spread_over_gap` (see `rank_table`).
    `trials` holds both phases, told apart by a `phase` column ("search" or
    "confirm"; missing counts as "search")."""
    phase = trials["phase"].fillna("search") if "phase" in trials else "search"
    confirmed = trials[phase == "confirm"]
    if confirmed.empty:
        return pd.DataFrame()
    ranked = rank_table(confirmed, knobs, metric, mode, seed=seed)
    searched, _ = interval_table(trials[phase == "search"], [], metric, mode)
    searched["search_rank"] = range(1, len(searched) + 1)
    keep = {"seeds": "seeds", f"{metric}_mean": "mean", f"{metric}_ci_low": "ci_low",
            f"{metric}_ci_high": "ci_high", "search_rank": "rank"}  # fmt: skip
    searched = searched[["config_id", *keep]].rename(
        columns={k: f"search_{v}" for k, v in keep.items() if k != "search_rank"}
    )
    rates = [c for c in ranked if c.endswith("_rate")]
    own = {"seeds": "seeds", f"{metric}_mean": "mean", f"{metric}_std": "std",
           f"{metric}_ci_low": "ci_low", f"{metric}_ci_high": "ci_high"}  # fmt: skip
    few = {f"{metric}_iqm": "iqm", f"{metric}_iqm_low": "iqm_low", f"{metric}_iqm_high": "iqm_high"}
    judged = ["p_best", "p_beats_next", "spread_over_gap", "p_improves_next",
              "p_improves_next_low", "p_improves_next_high", "seeds_needed_next"]  # fmt: skip
    out = ranked[["config_id", *knobs, *own, *few, *rates, *judged]]
    out = out.rename(columns={k: f"confirm_{v}" for k, v in (own | few).items()})
    out = out.rename(columns={r: f"confirm_{r}" for r in rates})
    return out.merge(searched, on="config_id", how="left")
