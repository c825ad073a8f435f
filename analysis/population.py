"""Population-based training rebuilt from MLflow: every final member's
schedule of settings, walked back through its lineage (each run names the
run it continues, `pbt_parent`, and the epoch it continues from,
`pbt_epoch`), and the population's metric over time along those lineages.

    table = schedules(load_runs("gan_stability"), ["lr_g", "lr_d"])
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from study.tracking import FROM_EPOCH, GENERATION, PARENT, REPLACED_TRIAL


def is_population(runs: pd.DataFrame) -> bool:
    """Whether these runs come from population-based training."""
    return GENERATION in runs and runs[GENERATION].notna().any()


def final_members(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs PBT never cloned over: where each member of the population
    ended (a donor goes on in its own run)."""
    pbt = runs[runs[GENERATION].notna()]
    replaced = pbt[REPLACED_TRIAL].notna() if REPLACED_TRIAL in pbt else False
    return pbt[~replaced]


def lineage(runs: pd.DataFrame, run_id: str) -> list[pd.Series]:
    """A run and the runs it continues, oldest first."""
    by_id = runs.set_index("run_id", drop=False)
    chain = [by_id.loc[run_id]]
    while isinstance(parent := chain[-1].get(PARENT), str) and parent in by_id.index:
        chain.append(by_id.loc[parent])
    return chain[::-1]


def schedules(runs: pd.DataFrame, settings: Sequence[str]) -> pd.DataFrame:
    """One row per stretch of each final member's schedule: `member` (its
    final run), the `run_id` that trained the stretch, its `generation`,
    `first_epoch` and `last_epoch` (the clone's epoch, or the member's
    last), and the settings it trained under."""
    rows = []
    last = runs.set_index("run_id")["ended_epoch"] if "ended_epoch" in runs else None
    for member in final_members(runs)["run_id"]:
        chain = lineage(runs, member)
        ends = [int(run[FROM_EPOCH]) for run in chain[1:]]
        end = last.get(member) if last is not None else None
        ends.append(int(end) if pd.notna(end) else None)
        for run, stop in zip(chain, ends, strict=True):
            start = run.get(FROM_EPOCH)
            rows.append({
                "member": member,
                "run_id": run["run_id"],
                "generation": int(run[GENERATION]),
                "first_epoch": int(start) + 1 if pd.notna(start) else 1,
                "last_epoch": stop,
                **{k: run.get(k) for k in settings},
            })  # fmt: skip
    return pd.DataFrame(rows)


def changed_settings(table: pd.DataFrame, settings: Sequence[str]) -> list[str]:
    """The settings that change somewhere along a member's schedule."""
    return [
        k for k in settings
        if k in table and (table.groupby("member")[k].nunique(dropna=True) > 1).any()
    ]  # fmt: skip


def member_paths(table: pd.DataFrame, history: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Each final member's `metric` over epochs along its lineage: each
    stretch's epochs from the run that trained them."""
    values = history[history["metric"] == metric]
    parts = []
    for row in table.itertuples():
        mine = values[(values["run_id"] == row.run_id) & (values["epoch"] >= row.first_epoch)]
        if pd.notna(row.last_epoch):
            mine = mine[mine["epoch"] <= row.last_epoch]
        parts.append(mine[["epoch", "value"]].assign(member=row.member))
    if not parts:
        return pd.DataFrame(columns=["member", "epoch", "value"])
    return pd.concat(parts, ignore_index=True).sort_values(["member", "epoch"])


def schedule_figure(
    table: pd.DataFrame, history: pd.DataFrame, metric: str, settings: Sequence[str]
) -> plt.Figure:
    """Left: the population's `metric` over time, a line per final member
    along its lineage, a dot where it was cloned; right: each changing
    setting's schedule, a step line per member."""
    fig, axes = plt.subplots(1, 1 + len(settings), figsize=(4.2 * (1 + len(settings)), 3.6))
    axes = list(axes) if len(settings) else [axes]
    paths = member_paths(table, history, metric)
    colours = dict(zip(table["member"].unique(), plt.cm.tab10.colors * 10, strict=False))
    for member, path in paths.groupby("member"):
        axes[0].plot(path["epoch"], path["value"], color=colours[member], lw=1.2)
    clones = table[table["generation"] > 0]
    for row in clones.itertuples():
        # the clone's epoch: the last the donor trained (evaluated there, under PBT)
        at = paths[(paths["member"] == row.member) & (paths["epoch"] == row.first_epoch - 1)]
        axes[0].plot(at["epoch"], at["value"], "o", color=colours[row.member], ms=4)
    axes[0].set(xlabel="epoch", ylabel=metric, title=f"population {metric} (dot: a clone)")
    end = paths["epoch"].max() if len(paths) else table["first_epoch"].max()
    for ax, key in zip(axes[1:], settings, strict=True):
        for member, rows in table.groupby("member", sort=False):
            last = rows["last_epoch"].iloc[-1]
            # a stretch trains epochs first..last: from the boundary before its first
            epochs = [*(rows["first_epoch"] - 1), end if pd.isna(last) else last]
            ax.step(epochs, [*rows[key], rows[key].iloc[-1]], where="post",
                    color=colours[member], lw=1.2)  # fmt: skip
        values = pd.to_numeric(table[key], errors="coerce")
        wide = values.gt(0).all() and values.max() > 10 * values.min()  # a learning rate
        ax.set(xlabel="epoch", title=key, yscale="log" if wide else "linear")
    fig.suptitle(f"PBT: {table['member'].nunique()} final members and their schedules")
    fig.tight_layout()
    return fig
