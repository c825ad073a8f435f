"""End-of-study tables: one row per trial, then per configuration the mean and
standard deviation over seeds and how the seeds ended."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from scoring.outcomes import OUTCOMES, ended
from study.clock import PHASES, STAMPS

CLOCK = (*PHASES, *STAMPS)  # each trial's own timing


def trial_rows(results: Any, searched: tuple[str, ...], metrics: tuple[str, ...]) -> pd.DataFrame:
    """One row per trial of a Tune ResultGrid: searched values, seed, outcome,
    metrics, and the trial's own clock (seconds training and evaluating)."""
    rows = []
    for r in results:
        last = r.metrics or {}
        outcome = ended(last.get("outcome")) if r.error is None else "failed"
        row = {k: (r.config or {}).get(k) for k in searched}
        row |= {
            "config_id": last.get("config_id"),
            "seed": last.get("seed"),
            "outcome": outcome,
            "epoch": last.get("epoch"),
        }
        for m in metrics:
            v = last.get(m)
            row[m] = v if outcome != "diverged" and isinstance(v, float) else math.nan
        rows.append(row | {k: last.get(k, math.nan) for k in CLOCK})
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
    shown["outcomes"] = [
        ", ".join(f"{o} {int(row[o])}" for o in OUTCOMES if row[o]) for _, row in table.iterrows()
    ]
    return shown.head(limit).to_string(index=False)


def outcome_line(trials: pd.DataFrame) -> str:
    counts = trials["outcome"].value_counts()
    parts = [f"{o} {int(counts.get(o, 0))}" for o in OUTCOMES if counts.get(o, 0)]
    noun = "trial" if len(trials) == 1 else "trials"
    return f"{len(trials)} {noun}: " + ", ".join(parts)
