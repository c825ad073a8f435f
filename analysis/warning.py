"""Early warning: which training diagnostic crosses a threshold before a
seed collapses, how reliably, and how early.

The seeds that learned and then collapsed are the ones to warn of (a seed
collapsed from its first evaluation gives no time to warn; it is left
out); the seeds that never collapsed are the ones not to alarm on. A seed
alarms at the first epoch its indicator crosses the threshold. For each
indicator and threshold: precision (alarms that came before a collapse,
over all alarms), recall (collapses warned of, over all collapses) and the
median lead in epochs of the warnings that came in time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.runs import load_history, load_runs

Trace = Callable[[pd.DataFrame], pd.Series | None]  # a seed's metrics by epoch -> indicator


def _growth(metric: str) -> Trace:
    """The metric over its first logged value: BigGAN's growing sigma0."""

    def trace(wide: pd.DataFrame) -> pd.Series | None:
        if metric not in wide or wide[metric].dropna().empty:
            return None
        series = wide[metric].dropna()
        return series / max(abs(series.iloc[0]), 1e-12)

    return trace


def _level(metric: str) -> Trace:
    return lambda wide: wide[metric].dropna() if metric in wide else None


def _d_drift(wide: pd.DataFrame) -> pd.Series | None:
    """How far D's accuracy over reals and fakes is from the chapter's 50%."""
    if not {"d_acc_real", "d_acc_fake"} <= set(wide):
        return None
    return ((wide["d_acc_real"] + wide["d_acc_fake"]) / 2 - 0.5).abs().dropna()


@dataclass(frozen=True)
class Indicator:
    name: str
    trace: Trace
    thresholds: tuple[float, ...]
    metrics: tuple[str, ...]  # what it reads


INDICATORS = (
    Indicator("sigma0_g growth", _growth("sigma0_g"), (1.25, 1.5, 2.0, 3.0), ("sigma0_g",)),
    Indicator("sigma0_d growth", _growth("sigma0_d"), (1.25, 1.5, 2.0, 3.0), ("sigma0_d",)),
    Indicator(
        "d_memorisation_gap",
        _level("d_memorisation_gap"),
        (0.05, 0.1, 0.2),
        ("d_memorisation_gap",),
    ),
    Indicator(
        "d_acc drift from 0.5", _d_drift, (0.2, 0.3, 0.4, 0.45), ("d_acc_real", "d_acc_fake")
    ),
    Indicator("grad_norm_g growth", _growth("grad_norm_g"), (2.0, 5.0, 10.0), ("grad_norm_g",)),
    Indicator("grad_norm_d growth", _growth("grad_norm_d"), (2.0, 5.0, 10.0), ("grad_norm_d",)),
)
COLUMNS = [
    "indicator",
    "threshold",
    "precision",
    "recall",
    "lead_epochs",
    "alarms",
    "warned",
    "collapses",
    "seeds",
]


def early_warning(
    study: str,
    tracking_uri: str | None = None,
    *,
    runs: pd.DataFrame | None = None,
    experiment: str | None = None,
) -> pd.DataFrame:
    """One row per indicator and threshold (COLUMNS), for the indicators
    the study's runs logged."""
    runs = runs if runs is not None else load_runs(study, tracking_uri, experiment)
    wanted = sorted({m for i in INDICATORS for m in i.metrics} & set(runs.columns))
    history = load_history(study, tracking_uri, experiment, wanted, runs) if wanted else None
    return warning_table(runs, history)


def by_run(history: pd.DataFrame, run_ids: pd.Index | pd.Series) -> dict[str, pd.DataFrame]:
    """Each run's metrics as a table, epochs by metric names."""
    chosen = history[history["run_id"].isin(run_ids)]
    return {
        rid: g.pivot_table(index="epoch", columns="metric", values="value")
        for rid, g in chosen.groupby("run_id")
    }


def warning_table(runs: pd.DataFrame, history: pd.DataFrame | None) -> pd.DataFrame:
    """early_warning's table from load_runs and load_history frames."""
    if history is None or history.empty:
        return pd.DataFrame(columns=COLUMNS)
    ended = runs.dropna(subset=["ended_epoch"]).set_index("run_id")
    wide = by_run(history, ended.index)
    rows = []
    for ind in INDICATORS:
        traces = {rid: t for rid, w in wide.items() if (t := ind.trace(w)) is not None and len(t)}
        if traces:
            rows += [_score(ind.name, th, traces, ended) for th in ind.thresholds]
    return pd.DataFrame(rows, columns=COLUMNS)


def _score(name: str, threshold: float, traces: dict, ended: pd.DataFrame) -> dict:
    alarms, leads, collapses, seeds = 0, [], 0, 0
    for rid, trace in traces.items():
        collapse = ended.at[rid, "collapse_epoch"]
        first_eval = trace.index.min()
        if not np.isnan(collapse) and collapse <= first_eval:
            continue  # never learned: nothing to warn of
        seeds += 1
        crossed = trace.index[trace.to_numpy() >= threshold]
        alarm = crossed.min() if len(crossed) else np.nan
        collapses += not np.isnan(collapse)
        if np.isnan(alarm):
            continue
        if np.isnan(collapse):
            alarms += 1  # a false alarm
        elif alarm < collapse:
            alarms += 1
            leads.append(collapse - alarm)
    return {
        "indicator": name,
        "threshold": threshold,
        "precision": len(leads) / alarms if alarms else np.nan,
        "recall": len(leads) / collapses if collapses else np.nan,
        "lead_epochs": float(np.median(leads)) if leads else np.nan,
        "alarms": alarms,
        "warned": len(leads),
        "collapses": collapses,
        "seeds": seeds,
    }
