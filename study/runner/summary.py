"""End-of-study tables: one row per trial, then per configuration the mean and
standard deviation over seeds and how the seeds ended."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from scoring.few_runs import MAX_SEEDS
from scoring.outcomes import OUTCOMES, ended, seed_results
from study.trial.clock import PHASES, STAMPS

CLOCK = (*PHASES, *STAMPS)  # each trial's own timing


def trial_rows(results: Any, searched: tuple[str, ...], metrics: tuple[str, ...]) -> pd.DataFrame:
    """One row per seed of a Tune ResultGrid (a trial, or each member of a
    seed pack's trial): searched values, seed, outcome, metrics, and the
    trial's own clock (seconds training and evaluating; a pack's rows share
    their trial's, so sum it over distinct trial_id)."""
    rows = []
    for r in results:
        clock = {k: (r.metrics or {}).get(k, math.nan) for k in CLOCK}
        clock["trial_id"] = (r.metrics or {}).get("trial_id")
        for last in seed_results(r.metrics):  # a seed pack's trial: a row per seed
            outcome = ended(last.get("outcome")) if r.error is None else "failed"
            row = {k: (r.config or {}).get(k) for k in searched}
            row |= {
                "config_id": last.get("config_id"),
                "seed": last.get("seed"),
                "outcome": outcome,
                "epoch": last.get("epoch"),
                # the course: NaN collapse_epoch never collapsed (or failed)
                "collapse_epoch": last.get("collapse_epoch", math.nan),
                "hopping": last.get("hopping", math.nan),
                "sampler": last.get("sampler", ""),  # the one the unsuffixed metrics are of
            }
            for m in metrics:
                v = last.get(m)
                row[m] = v if outcome != "diverged" and isinstance(v, float) else math.nan
            rows.append(row | clock)
    return pd.DataFrame(rows)


def _num(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def format_table(
    table: pd.DataFrame, searched: tuple[str, ...], metrics: tuple[str, ...], limit: int = 10
) -> str:
    shown = pd.DataFrame({"#": range(1, len(table) + 1)})
    for k in searched:
        shown[k] = table[k].map(_num)
    for m in metrics:
        shown[m] = [
            f"{_num(a)} ± {_num(b)}"
            for a, b in zip(table[f"{m}_mean"], table[f"{m}_std"], strict=True)
        ]
    if "collapse_epoch_median" in table:
        shown["collapsed at"] = table["collapse_epoch_median"].map(_num).to_numpy()
    if "hopping_share" in table and table["hopping_share"].notna().any():
        shown["hopping"] = table["hopping_share"].map(_share).to_numpy()
    shown["outcomes"] = [
        ", ".join(f"{o} {int(row[o])}" for o in OUTCOMES if row[o]) for _, row in table.iterrows()
    ]
    return shown.head(limit).to_string(index=False)


def outcome_line(trials: pd.DataFrame) -> str:
    counts = trials["outcome"].value_counts()
    parts = [f"{o} {int(counts.get(o, 0))}" for o in OUTCOMES if counts.get(o, 0)]
    noun = "trial" if len(trials) == 1 else "trials"
    return f"{len(trials)} {noun}: " + ", ".join(parts)


def _share(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.0%}"


def _estimate(mean: float, low: float, high: float) -> str:
    if math.isnan(low):
        return _num(mean)
    return f"{_num(mean)} [{_num(low)}, {_num(high)}]"


def format_confirmation(table: pd.DataFrame, searched: tuple[str, ...], metric: str) -> str:
    """The confirmed configurations in their confirmed order: the search's
    estimate (its rank among every searched configuration) beside the fresh
    seeds' (95% intervals over seeds), outcomes, and how sure the order is."""
    shown = pd.DataFrame({"#": range(1, len(table) + 1)})
    for k in searched:
        shown[k] = table[k].map(_num)
    shown[f"search {metric}"] = [
        f"{_estimate(r.search_mean, r.search_ci_low, r.search_ci_high)} (#{int(r.search_rank)})"
        for r in table.itertuples()
    ]
    shown[f"confirmed {metric}"] = [
        _estimate(r.confirm_mean, r.confirm_ci_low, r.confirm_ci_high) for r in table.itertuples()
    ]
    if "collapse_epoch_median" in table:
        shown["collapsed at"] = table["collapse_epoch_median"].map(_num).to_numpy()
    if "hopping_share" in table and table["hopping_share"].notna().any():
        shown["hopping"] = table["hopping_share"].map(_share).to_numpy()
    shown["outcomes"] = [
        ", ".join(
            f"{o} {round(row[f'confirm_{o}_rate'] * row['confirm_seeds'])}"
            for o in OUTCOMES
            if row[f"confirm_{o}_rate"]
        )
        for _, row in table.iterrows()
    ]
    if (table["confirm_seeds"] >= 4).any():  # below 4 seeds the IQM trims nothing: the mean
        shown["IQM"] = [
            _estimate(r.confirm_iqm, r.confirm_iqm_low, r.confirm_iqm_high)
            for r in table.itertuples()
        ]
    shown["P(best)"] = table["p_best"].map(lambda p: "-" if math.isnan(p) else f"{p:.2f}")
    shown["P(improves next)"] = [
        "" if math.isnan(p) else _share_interval(p, lo, hi)
        for p, lo, hi in table[
            ["p_improves_next", "p_improves_next_low", "p_improves_next_high"]
        ].itertuples(index=False)
    ]
    shown["beats next"] = [
        "" if math.isnan(p) else f"{p:.0%}" + (" (spread > gap)" if flag else "")
        for p, flag in zip(table["p_beats_next"], table["spread_over_gap"], strict=True)
    ]
    return shown.to_string(index=False)


def confirmation_lines(table: pd.DataFrame) -> list[str]:
    """What the confirmation says in words: how sure the winner is, and
    whether the fresh seeds changed the search's order."""
    lines = []
    if len(table) > 1 and not math.isnan(table["p_beats_next"].iloc[0]):
        lines.append(
            f"#1 beats #2 in {table['p_beats_next'].iloc[0]:.0%} of bootstrap resamples of "
            f"the fresh seeds; it is the best in {table['p_best'].iloc[0]:.0%}."
        )
    if len(table) > 1 and table["confirm_seeds"].iloc[:2].min() > 1:
        lines.append(seeds_needed_line(table["seeds_needed_next"].iloc[0], table["confirm_seeds"]))
    order = list(table["search_rank"].astype(int))
    if order != sorted(order):
        lines.append(
            f"The fresh seeds changed the order: the search's #{order[0]} is confirmed #1."
        )
    return lines


def seeds_needed_line(needed: object, seeds: pd.Series) -> str:
    """How many seeds would tell #1 from #2 apart, and how it is reckoned."""
    method = (
        "(a two-sided Welch t-test at 5% with 80% power, taking the measured means and "
        "spreads as true)"
    )
    had = f"they had {int(seeds.iloc[0])} and {int(seeds.iloc[1])}"
    if pd.isna(needed):
        return f"Telling #1 from #2 apart takes more than {MAX_SEEDS} seeds each {method}; {had}."
    return f"Telling #1 from #2 apart takes {int(needed)} seeds each {method}; {had}."


def _share_interval(p: float, low: float, high: float) -> str:
    return f"{p:.2f}" if math.isnan(low) else f"{p:.2f} [{low:.2f}, {high:.2f}]"


def format_groups(groups: pd.DataFrame, group: str, metric: str, extra: tuple[str, ...]) -> str:
    """The per-technique table: how much of the grid each one keeps stable,
    and how good its samples get."""
    shown = pd.DataFrame({group: groups[group].map(str)})
    shown["ok"] = [f"{s:.0%}" for s in groups["ok_share"]]
    shown["stable"] = [
        f"{a}/{b}" for a, b in zip(groups["stable_configs"], groups["configs"], strict=True)
    ]
    if "stable_values" in groups:
        shown["stable at"] = groups["stable_values"].replace("", "-")
    shown[f"best {metric}"] = groups[f"best_{metric}"].map(_num)
    shown[f"median {metric}"] = groups[f"median_{metric}"].map(_num)
    for m in extra:
        if f"{m}_mean" in groups:
            shown[m] = groups[f"{m}_mean"].map(_num)
    return shown.to_string(index=False)
