"""Figures of a run's course over time: survival curves by a setting, the
mode-occupancy heatmap of one run, and the warning indicators aligned on
the collapse epoch. Each takes a `View` (analysis.plots) and returns None
when the runs did not record their course."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from analysis.runs import AnalysisError
from analysis.survival import survival_table
from analysis.warning import INDICATORS, by_run
from study.tracking import MODE_SHARE

if TYPE_CHECKING:
    from analysis.plots import View


def _courses(view: View) -> pd.DataFrame | None:
    runs = view.runs
    if "ended_epoch" not in runs or runs["ended_epoch"].isna().all():
        return None
    return runs.dropna(subset=["ended_epoch"])


def survival_by_setting(view: View, by: str | None = None) -> Figure | None:
    """Kaplan-Meier curves of the time to first collapse, one per value (or
    bin) of `by`, by default the family's learning rate or the study's group."""
    runs = _courses(view)
    by = by or view.survival_by or view.role("learning_rate") or view.group or None
    if runs is None or by is None or not view.varies(by) or runs["collapse_epoch"].isna().all():
        return None
    try:
        table = survival_table(runs, by)
    except AnalysisError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    palette = sns.color_palette("viridis", len(table[by].cat.categories))
    for colour, (group, curve) in zip(palette, table.groupby(by, observed=True), strict=False):
        ax.step(curve["epoch"], curve["survival"], where="post", color=colour, label=str(group))
        ax.fill_between(
            curve["epoch"], curve["low"], curve["high"], step="post", color=colour, alpha=0.15
        )
    p = table.attrs["logrank"]["p_value"].min()
    ax.set(xlabel="epoch", ylabel="share not yet collapsed", ylim=(-0.02, 1.02))
    ax.set_title(f"Survival by {by} (Kaplan-Meier, 95% band; smallest log-rank p = {p:.2g})")
    ax.legend(title=by, fontsize="small")
    return fig


def mode_heatmap(view: View, run_id: str | None = None) -> Figure | None:
    """The share of samples in each mode at every evaluation of one run: by
    default the run that hopped most, else one that learned and collapsed."""
    shares = view.history[view.history["metric"].str.startswith(MODE_SHARE)]
    if shares.empty:
        return None
    run_id = run_id or _telling_run(view, shares)
    one = shares[shares["run_id"] == run_id].copy()
    one["mode"] = one["metric"].str.removeprefix(MODE_SHARE).astype(int)
    grid = one.pivot_table(index="mode", columns="epoch", values="value")
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    sns.heatmap(grid, cmap="magma", vmin=0, ax=ax, cbar_kws={"label": "share of samples"})
    row = view.runs.set_index("run_id").loc[run_id]
    ax.set_title(f"Mode occupancy of {row.get('run_name', run_id)} ({row.get('outcome')})")
    return fig


def _telling_run(view: View, shares: pd.DataFrame) -> str:
    runs = view.runs[view.runs["run_id"].isin(shares["run_id"])]
    if "hopping" in runs and runs["hopping"].eq(True).any():
        return runs[runs["hopping"].eq(True)]["run_id"].iloc[0]
    if "collapse_epoch" in runs and runs["collapse_epoch"].notna().any():
        return runs.sort_values("collapse_epoch", ascending=False)["run_id"].iloc[0]
    return runs["run_id"].iloc[0]


def indicators_at_collapse(view: View) -> Figure | None:
    """Each warning indicator against epochs before/after the first collapse,
    one line per seed that learned and then collapsed, with their median."""
    runs = _courses(view)
    if runs is None:
        return None
    lost = runs.dropna(subset=["collapse_epoch"])
    wide = by_run(view.history, lost["run_id"])
    panels = []
    for ind in INDICATORS:
        rows = []
        for rid, w in wide.items():
            trace = ind.trace(w)
            first = w.index.min()
            collapse = lost.set_index("run_id").at[rid, "collapse_epoch"]
            if trace is not None and collapse > first:  # learned first
                rows += [(rid, e - collapse, v) for e, v in trace.items()]
        if rows:
            panels.append((ind.name, pd.DataFrame(rows, columns=["run_id", "lag", "value"])))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), layout="constrained")
    flat = np.atleast_1d(axes).ravel()
    for ax, (name, data) in zip(flat, panels, strict=False):
        sns.lineplot(data=data, x="lag", y="value", units="run_id", estimator=None,
                     color="grey", alpha=0.4, ax=ax)  # fmt: skip
        ax.plot(*zip(*data.groupby("lag")["value"].median().items(), strict=True), color="crimson")
        ax.axvline(0, color="black", lw=0.8, ls="--")
        if "growth" in name and data["value"].max() > 20 * data["value"].median():
            ax.set_yscale("log")  # a few exploding gradients would flatten the rest
        ax.set(title=name, xlabel="epochs from first collapse", ylabel="")
    for ax in flat[len(panels) :]:
        ax.remove()
    fig.suptitle("Warning indicators aligned on the collapse (median in red)")
    return fig
