"""Fronts. The chapters' trilemma as a figure: in a study that spans
families, each family and sampler's mean quality (fid) against its speed
(seconds per 1000 samples), coloured by coverage, the Pareto front drawn
through the points no other beats on both (a `View`, analysis.plots; None
when the runs hold one family or lack the metrics). And the front of a
search on several objectives (--objectives): its table and figure."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from models import FAMILIES
from scoring.aggregate import per_configuration, per_sampler
from scoring.pareto import non_dominated, on_front
from scoring.registry import split_sampler_metric

if TYPE_CHECKING:
    from analysis.plots import View

QUALITY, SPEED, COVERAGE = "fid", "sample_seconds", "coverage"


def family_samplers(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per family and sampler: mean and std over seeds of fid,
    precision, recall, coverage, modes_covered, sample_seconds and the
    trial's train_seconds."""
    base = [QUALITY, "precision", "recall", COVERAGE, "modes_covered", SPEED, "train_seconds"]
    families = [FAMILIES[f] for f in runs["family"].dropna().unique() if f in FAMILIES]

    def sampler_column(col: str) -> bool:  # not a param named like one (fid_reference)
        s = split_sampler_metric(col)
        return bool(s) and s[0] in base and any(f.is_sampler(s[1]) for f in families)

    per = [c for c in runs if sampler_column(c)]
    return per_sampler(runs, ["family"], [m for m in base if m in runs] + per)


def quality_speed_front(view: View) -> Figure | None:
    runs = view.runs
    if "family" not in runs or runs["family"].nunique() < 2 or not view.has(QUALITY, SPEED):
        return None
    table = family_samplers(runs).dropna(subset=[f"{QUALITY}_mean", f"{SPEED}_mean"])
    if len(table) < 2:
        return None
    x, y = table[f"{SPEED}_mean"].to_numpy(float), table[f"{QUALITY}_mean"].to_numpy(float)
    colour = table.get(f"{COVERAGE}_mean", pd.Series(np.nan, index=table.index))
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    dots = ax.scatter(x, y, c=colour.to_numpy(float), cmap="viridis", vmin=0, vmax=1, s=70,
                      edgecolors="black", zorder=3)  # fmt: skip
    fig.colorbar(dots, ax=ax, label=f"{COVERAGE} (higher covers more of the data)")
    for xi, yi, fam, sampler in zip(x, y, table["family"], table["sampler"], strict=True):
        ax.annotate(f"{fam} {sampler}".strip(), (xi, yi), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)  # fmt: skip
    front = non_dominated(np.c_[x, y], ["min", "min"])
    order = np.argsort(x[front])
    ax.step(x[front][order], y[front][order], where="post", color="grey", ls="--",
            label="Pareto front (faster and better)", zorder=2)  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="seconds per 1000 samples (lower is faster)",
           ylabel="fid (lower is better)")  # fmt: skip
    ax.set_title("Quality against sampling speed, coverage as colour (means over seeds)")
    ax.legend(fontsize=8, loc="upper right")
    return fig


def parse_objectives(text: str) -> list[tuple[str, str]]:
    """The parent run's `objectives` param, 'fid:min,recall:max', as pairs."""
    return [tuple(item.split(":", 1)) for item in text.split(",") if ":" in item]  # type: ignore[misc]


def front_table(
    runs: pd.DataFrame, objectives: list[tuple[str, str]], knobs: list[str]
) -> pd.DataFrame:
    """Per configuration (search trials): mean and std over seeds of each
    objective, and `pareto`, whether no other beats it on every one."""
    names = [m for m, _ in objectives if m in runs]
    if len(objectives) < 2 or len(names) < len(objectives):  # no Pareto search, or unlogged
        return pd.DataFrame()
    table = per_configuration(runs, knobs, names, objectives[0][1])
    table = table.dropna(subset=[f"{m}_mean" for m in names])
    table["pareto"] = on_front(table, objectives)
    return table


def objective_front(table: pd.DataFrame, objectives: list[tuple[str, str]]) -> Figure | None:
    """The first two objectives' configuration means with their seed spread,
    the front's members joined (a Pareto search, --objectives)."""
    if table.empty or len(objectives) < 2:
        return None
    (x, dx), (y, dy) = objectives[:2]
    fig, ax = plt.subplots(figsize=(7, 4.6), layout="constrained")
    for on, colour, label in ((False, "grey", "beaten on every objective"), (True, "C3", "front")):
        part = table[table["pareto"] == on]
        ax.errorbar(part[f"{x}_mean"], part[f"{y}_mean"], xerr=part[f"{x}_std"].fillna(0),
                    yerr=part[f"{y}_std"].fillna(0), fmt="o", capsize=2, color=colour,
                    label=label)  # fmt: skip
    front = table[table["pareto"]].sort_values(f"{x}_mean")
    ax.plot(front[f"{x}_mean"], front[f"{y}_mean"], color="C3", lw=1, ls="--")
    better = {"min": "lower", "max": "higher"}
    ax.set(xlabel=f"{x} ({better[dx]} is better)", ylabel=f"{y} ({better[dy]} is better)")
    ax.set_title("Pareto front of the search: configuration means, bars one std over seeds")
    ax.legend(fontsize=8)
    return fig
