"""The chapters' trilemma as a figure: in a study that spans families, each
family and sampler's mean quality (fid) against its speed (seconds per 1000
samples), coloured by coverage, the Pareto front drawn through the points no
other beats on both. Takes a `View` (analysis.plots); None when the runs
hold one family or lack the metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from models import FAMILIES
from scoring.aggregate import per_sampler
from scoring.pareto import non_dominated
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
