"""Seaborn figures for a study's trials. PLOTS maps each model family to the
figures that answer its questions; COMMON figures suit every study. Each
function takes a `View` and returns a figure, or None when the runs lack what
it shows (a knob the invocation did not vary, a metric not logged). No figure
names a family's setting: it asks the family which setting plays a role
(`View.role`, from `Family.roles`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from analysis.course_plots import indicators_at_collapse, mode_heatmap, survival_by_setting
from analysis.front import quality_speed_front
from analysis.stats import bin_values, budget_curve, config_stats, knobs, stability_map
from models import FAMILIES, Family
from models.config import ConfigError
from models.diffusion import parse_sampler
from scoring.outcomes import COLOURS as OUTCOME_COLOURS
from scoring.outcomes import OUTCOMES
from scoring.registry import split_sampler_metric


@dataclass
class View:
    """What a figure may use: the trials, their histories, the study's main
    metric and direction, and the axis it compares techniques by (`group`)."""

    runs: pd.DataFrame
    history: pd.DataFrame
    metric: str
    mode: str
    metrics: tuple[str, ...] = ()
    knobs: list[str] = field(default_factory=list)
    group: str = ""  # the study's group_by axis, if any
    survival_by: str = ""  # the setting survival curves are grouped by (default: the lr)

    def varies(self, col: str | None) -> bool:
        return col is not None and col in self.runs and self.runs[col].nunique(dropna=True) > 1

    def has(self, *cols: str | None) -> bool:
        return all(c is not None and c in self.runs and self.runs[c].notna().any() for c in cols)

    def role(self, name: str, i: int = 0) -> str | None:
        return role(self.runs, name, i)

    def acts(self, setting: str) -> pd.Series:
        """Which runs the setting acts in (`Family.acts_when`: a target that
        only one kind of penalty aims at); every run where the family says
        nothing."""
        family = _family(self.runs)
        when = family.acts_when.get(setting) if family else None
        if when is None or when[0] not in self.runs:
            return pd.Series(True, index=self.runs.index)
        return self.runs[when[0]] == when[1]


def _family(runs: pd.DataFrame) -> type[Family] | None:
    """The model family of the runs (their `family` param), if one."""
    names = runs["family"].dropna().unique() if "family" in runs else []
    return FAMILIES.get(names[0]) if len(names) == 1 else None


def role(runs: pd.DataFrame, name: str, i: int = 0) -> str | None:
    """The i-th setting playing role `name` (models.family.ROLES) for the
    runs' family, if the runs have it as a column; else None."""
    family = _family(runs)
    settings = family.roles.get(name, ()) if family else ()
    return settings[i] if i < len(settings) and settings[i] in runs else None


def _figure(width: float = 6.4, height: float = 4.2) -> tuple[Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    return fig, ax


def _log_if_wide(ax: plt.Axes, values: pd.Series, axis: str = "x") -> None:
    v = values.dropna().astype(float)
    if len(v) and (v > 0).all() and v.max() / v.min() >= 20:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


# --- every study -----------------------------------------------------------


def outcome_rates(view: View) -> Figure | None:
    """Share of seeds ending in each outcome, per configuration (best first)."""
    stats = config_stats(view.runs, [view.metric], view.mode, view.knobs)
    if stats.empty:
        return None
    rates = stats.set_index(stats.index.map(lambda i: f"#{i + 1} {stats.loc[i, 'config_id'][:6]}"))[
        [f"{o}_rate" for o in OUTCOMES]
    ]
    rates.columns = list(OUTCOMES)
    rates = rates.loc[:, rates.sum() > 0]
    fig, ax = _figure(7, max(2.5, 0.28 * len(rates) + 1.2))
    rates.iloc[::-1].plot.barh(
        stacked=True, ax=ax, color=[OUTCOME_COLOURS[o] for o in rates.columns], width=0.8
    )
    ax.set_xlabel("share of seeds")
    ax.set_ylabel(f"configuration (by mean {view.metric})")
    ax.set_title("Outcomes per configuration")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def budget(view: View) -> Figure | None:
    """Best metric expected after k configurations, with its bootstrap band."""
    if not view.has(view.metric) or view.runs["config_id"].nunique() < 2:
        return None
    curve = budget_curve(view.runs, view.metric, view.mode)
    fig, ax = _figure()
    ax.plot(curve["k"], curve["best_mean"], marker="o", color="#264653")
    ax.fill_between(curve["k"], curve["low"], curve["high"], alpha=0.25, color="#264653")
    ax.set_xlabel("configurations tried (k)")
    ax.set_ylabel(f"best {view.metric} ({'lower' if view.mode == 'min' else 'higher'} is better)")
    ax.set_title("Budget curve (mean and 95% bootstrap band)")
    return fig


def metric_by_knob(view: View) -> Figure | None:
    """The main metric of every trial against each varied knob: the seed
    spread is the vertical scatter within a configuration."""
    cols = [k for k in view.knobs if view.varies(k)][:6]
    if not cols or not view.has(view.metric):
        return None
    fig, axes = plt.subplots(
        1, len(cols), figsize=(3.2 * len(cols), 3.4), layout="constrained", sharey=True,
        squeeze=False,
    )  # fmt: skip
    for ax, col in zip(axes[0], cols, strict=True):
        data = view.runs.assign(outcome=view.runs["outcome"].fillna("failed"))
        numeric = pd.api.types.is_numeric_dtype(data[col]) and data[col].nunique() > 4
        plot = sns.scatterplot if numeric else sns.stripplot
        plot(data=data, x=col, y=view.metric, hue="outcome", palette=OUTCOME_COLOURS, ax=ax,
             legend=ax is axes[0][-1])  # fmt: skip
        if numeric:
            _log_if_wide(ax, data[col])
        else:
            ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"{view.metric} of every trial by knob")
    return fig


COMMON: list[Callable[[View], Figure | None]] = [
    outcome_rates, metric_by_knob, budget, survival_by_setting, mode_heatmap,
    indicators_at_collapse, quality_speed_front,
]  # fmt: skip


# --- GANs ---------------------------------------------------------------------


def gan_lr_heatmap(view: View) -> Figure | None:
    """Mean fid and share of stable (ok) seeds over binned learning rates
    (the generator's against the discriminator's)."""
    x, y = view.role("learning_rate", 0), view.role("learning_rate", 1)
    if not (view.varies(x) and view.varies(y) and view.has("fid")):
        return None
    if (view.runs[x] == view.runs[y]).all():  # tied: technique_map shows them
        return None
    runs = view.runs.assign(fid=view.runs["fid"].where(view.runs["outcome"] != "diverged"))
    ok = stability_map(runs, x, y, bins=4)
    fid = _binned_mean(runs, x, y, "fid", bins=4)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    sns.heatmap(fid, annot=True, fmt=".0f", cmap="viridis_r", ax=axes[0],
                cbar_kws={"label": "mean fid"})  # fmt: skip
    axes[0].set_title("fid (lower is better)")
    sns.heatmap(ok, annot=True, fmt=".0%", cmap="RdYlGn", vmin=0, vmax=1, ax=axes[1],
                cbar_kws={"label": "share ok"})  # fmt: skip
    axes[1].set_title("stable seeds (outcome ok)")
    fig.suptitle("Learning rates: the stable region and its edges (blank: not tried)")
    return fig


def technique_map(view: View) -> Figure | None:
    """Per technique (the study's group axis) and (tied) learning rate: the
    share of seeds ending ok and the mean fid of the scored ones: each
    technique's stable range."""
    group, rate = view.group, view.role("learning_rate")
    if not (group and view.varies(group) and view.varies(rate) and view.has("fid")):
        return None
    runs = view.runs.assign(
        ok=(view.runs["outcome"] == "ok").astype(float),
        fid=view.runs["fid"].where(view.runs["outcome"] != "diverged"),
        rate_label=view.runs[rate].map(lambda v: f"{float(v):.2g}"),
    )
    order = runs.groupby(group)["ok"].mean().sort_values(ascending=False).index
    cols = sorted(runs["rate_label"].unique(), key=float)
    ok = runs.pivot_table("ok", group, "rate_label").reindex(index=order, columns=cols)
    fid = runs.pivot_table("fid", group, "rate_label").reindex(index=order, columns=cols)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(order) + 1.8), layout="constrained")
    sns.heatmap(ok, annot=True, fmt=".0%", cmap="RdYlGn", vmin=0, vmax=1, ax=axes[0],
                cbar_kws={"label": "share ok"})  # fmt: skip
    axes[0].set_title("stable seeds (outcome ok)")
    sns.heatmap(fid, annot=True, fmt=".0f", cmap="viridis_r", ax=axes[1],
                cbar_kws={"label": "mean fid"})  # fmt: skip
    axes[1].set_title("fid (lower is better)")
    for ax in axes:
        ax.set_xlabel("learning rate (G = D)")
    fig.suptitle("Which technique widens the stable learning-rate range (widest first)")
    return fig


def _binned_mean(runs: pd.DataFrame, x: str, y: str, value: str, bins: int) -> pd.DataFrame:
    table = (
        runs[value]
        .groupby(
            [bin_values(runs[y], bins).rename(y), bin_values(runs[x], bins).rename(x)],
            observed=False,
        )
        .mean()
    )
    return table.unstack(x).sort_index(ascending=False)


def modes_over_epochs(view: View) -> Figure | None:
    """Mode coverage through training, one line per trial, coloured by outcome."""
    key = next(
        (k for k in ("modes_covered", "modes_captured") if k in set(view.history["metric"])), None
    )
    if key is None:
        return None
    data = view.history[view.history["metric"] == key].copy()
    data["outcome"] = data["outcome"].fillna("failed")
    fig, ax = _figure()
    sns.lineplot(data=data, x="epoch", y="value", hue="outcome", units="run_id",
                 estimator=None, palette=OUTCOME_COLOURS, alpha=0.6, ax=ax)  # fmt: skip
    ax.set_ylabel(key)
    ax.set_title(f"{key} over epochs, one line per trial")
    return fig


# --- autoencoders ---------------------------------------------------------------


def sparsity_tradeoff(view: View) -> Figure | None:
    """Reconstruction against achieved sparsity, coloured by the penalty
    weight; and, where a penalty aims at a target, the distance to it."""
    weight, kind, target = view.role("weight"), view.role("regulariser"), view.role("target")
    if not (view.varies(weight) and view.has("sparsity", "recon_mse")):
        return None
    data = view.runs.assign(log10_weight=np.log10(view.runs[weight].astype(float)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    style = kind if view.varies(kind) else None
    sns.scatterplot(data=data, x="sparsity", y="recon_mse", hue="log10_weight", style=style,
                    palette="viridis", ax=axes[0])  # fmt: skip
    axes[0].set_xlabel("achieved sparsity (mean coding activation)")
    axes[0].set_title("Reconstruction vs achieved sparsity")
    aimed = data[view.acts(target)] if view.has(target) else data.iloc[:0]
    if len(aimed):
        gap = (aimed["sparsity"] - aimed[target]).abs()
        sns.scatterplot(data=aimed.assign(gap=gap), x=weight, y="gap",
                        hue=target, palette="crest", ax=axes[1])  # fmt: skip
        axes[1].set_xscale("log")
        axes[1].set_ylabel("|achieved - target sparsity|")
        axes[1].set_title("The penalty aiming at a target: distance to it as the weight rises")
    return fig


def denoising_levels(view: View) -> Figure | None:
    """Held-out reconstruction and denoising error by noise level and the
    family's first split (its architecture)."""
    level, kind, split = view.role("noise", 0), view.role("noise", 1), view.role("split")
    if not view.has("denoise_mse", level):  # logged only when noise is on
        return None
    cols = [c for c in ("recon_mse", "denoise_mse") if view.has(c)]
    fig, axes = plt.subplots(1, len(cols), figsize=(5.5 * len(cols), 4), layout="constrained",
                             squeeze=False)  # fmt: skip
    for ax, col in zip(axes[0], cols, strict=True):
        sns.pointplot(data=view.runs, x=level, y=col,
                      hue=split if view.varies(split) else None,
                      linestyles=None, dodge=0.3, ax=ax,
                      native_scale=True)  # fmt: skip
        if view.varies(kind):
            ax.set_title(f"{col} (mean and spread over noise kinds and seeds)")
    fig.suptitle("Denoising autoencoders by noise level")
    return fig


# --- VAEs ---------------------------------------------------------------------


def rate_distortion(view: View) -> Figure | None:
    """KL (rate) against reconstruction (distortion), coloured by the KL weight;
    and active units against the weight."""
    weight, schedule, latent = view.role("weight"), view.role("schedule"), view.role("latent")
    if not (view.varies(weight) and view.has("kl", "recon_mse")):
        return None
    data = view.runs.assign(log10_weight=np.log10(view.runs[weight].astype(float)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    sns.scatterplot(data=data, x="kl", y="recon_mse", hue="log10_weight", palette="viridis",
                    style=schedule if view.varies(schedule) else None, ax=axes[0])  # fmt: skip
    axes[0].set_xlabel("KL per image (nats): rate")
    axes[0].set_ylabel("held-out recon_mse: distortion")
    axes[0].set_title("Rate-distortion")
    if view.has("active_units"):
        sns.scatterplot(data=data, x=weight, y="active_units",
                        hue=latent if view.varies(latent) else None, ax=axes[1])  # fmt: skip
        axes[1].set_xscale("log")
        axes[1].set_title("Active units (Burda et al.) as the KL weight rises")
    return fig


def by_schedule(view: View) -> Figure | None:
    """The discrete VAE's metrics by temperature schedule, seeds as points."""
    cols = [c for c in ("recon_mse", "code_perplexity", "fid") if view.has(c)]
    schedule = view.role("schedule")
    if schedule is None or not cols:
        return None
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.8), layout="constrained")
    for ax, col in zip(np.atleast_1d(axes), cols, strict=True):
        sns.boxplot(data=view.runs, x=schedule, y=col, ax=ax, color="#a8dadc", fliersize=0)
        sns.stripplot(data=view.runs, x=schedule, y=col, ax=ax, color="#1d3557", size=4)
    fig.suptitle("Temperature schedules compared (boxes: trials; points: seeds)")
    return fig


def temperature_curves(view: View) -> Figure | None:
    """The temperature each trial trained at, epoch by epoch."""
    data = view.history[view.history["metric"] == "tau"]
    schedule = view.role("schedule")
    if data.empty or schedule is None:
        return None
    data = data.merge(view.runs[["run_id", schedule]], on="run_id")
    fig, ax = _figure()
    sns.lineplot(data=data, x="epoch", y="value", hue=schedule, units="run_id",
                 estimator=None, alpha=0.7, ax=ax)  # fmt: skip
    ax.set_ylabel("Gumbel-softmax temperature")
    ax.set_title("Temperature schedules as trained")
    return fig


# --- diffusion ------------------------------------------------------------------


def _sampler_steps(sampler: str, runs: pd.DataFrame) -> pd.DataFrame | None:
    """Steps, eta, sigma^2 = beta noise and guidance scale (NaN: unguided)
    of a diffusion sampler name for each run (ddpm's steps are the run's T),
    or None when the name is no sampler."""
    steps = role(runs, "steps")
    if steps is None:
        return None
    try:
        parsed = [parse_sampler(sampler, int(t)) for t in runs[steps]]
    except (ConfigError, KeyError, ValueError, TypeError):
        return None
    rows = [(v.steps, v.eta, v.beta_noise, np.nan if v.guidance is None else v.guidance)
            for v in parsed]  # fmt: skip
    return pd.DataFrame(rows, columns=["steps", "eta", "beta", "w"], index=runs.index)


SAMPLER_METRICS = ("fid", "sample_seconds", "recall", "class_accuracy")


def sampler_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Long format of the per-sampler metrics (the registry's, e.g. fid_ddim10_eta0
    or fid_ddpm): run, schedule, steps, eta, beta, w, metric, value."""
    rows = []
    for col in runs.columns:
        split = split_sampler_metric(col)
        if split is None or split[0] not in SAMPLER_METRICS:
            continue
        steps = _sampler_steps(split[1], runs)
        if steps is None:
            continue
        part = runs[["run_id", "config_id", "seed", col]].rename(columns={col: "value"})
        for knob in (role(runs, "schedule"), role(runs, "condition")):
            if knob is not None:
                part[knob] = runs[knob]
        rows.append(part.assign(metric=split[0], sampler=split[1], **steps))
    return pd.concat(rows, ignore_index=True).dropna(subset=["value"]) if rows else pd.DataFrame()


def fid_by_steps(view: View) -> Figure | None:
    """fid against DDIM steps per schedule and eta, and the sampling time
    (unguided DDIM samplers)."""
    table = sampler_table(view.runs)
    if not table.empty:
        table = table[table["w"].isna() & ~table["beta"].astype(bool)]
    if table.empty:
        return None
    schedule = view.role("schedule")
    hue = schedule if schedule in table else None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    sns.lineplot(data=table[table["metric"] == "fid"], x="steps", y="value", hue=hue,
                 style="eta", markers=True, errorbar=("pi", 100), ax=axes[0])  # fmt: skip
    axes[0].set_ylabel("fid (lower is better)")
    axes[0].set_title("Sample quality by DDIM steps (band: seed range)")
    sns.lineplot(data=table[table["metric"] == "sample_seconds"], x="steps", y="value",
                 hue="eta", markers=True, ax=axes[1])  # fmt: skip
    axes[1].set_ylabel("seconds per 1000 samples")
    axes[1].set_title("Sampling time by DDIM steps")
    return fig


def guidance_tradeoff(view: View) -> Figure | None:
    """Classifier-free guidance: fid, recall and class accuracy against the
    guidance scale w (-1: the unconditional model), seeds as a band."""
    table = sampler_table(view.runs)
    if table.empty or table["w"].notna().sum() == 0:
        return None
    table = table[table["w"].notna()]
    drop = view.role("condition")
    hue = drop if drop in table and table[drop].nunique() > 1 else None
    shown = [m for m in ("fid", "recall", "class_accuracy") if (table["metric"] == m).any()]
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.8), layout="constrained")
    for ax, metric in zip(np.atleast_1d(axes), shown, strict=True):
        sns.lineplot(data=table[table["metric"] == metric], x="w", y="value", hue=hue,
                     markers=True, marker="o", errorbar=("pi", 100), ax=ax)  # fmt: skip
        ax.set_xlabel("guidance scale w")
        ax.set_ylabel(metric)
    fig.suptitle("Classifier-free guidance: fidelity against diversity (band: seed range)")
    return fig


# --- VQ-VAE ---------------------------------------------------------------------


def codebook_usage(view: View) -> Figure | None:
    """Codes in use (perplexity) by codebook size, with and without restarts
    and per update rule; and reconstruction against codes in use."""
    size = view.role("latent")
    if not view.has("codebook_perplexity", "recon_mse", size):
        return None
    runs = view.runs
    hue, style = view.role("split", 0), view.role("split", 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    sns.scatterplot(data=runs, x=size, y="codebook_perplexity", hue=hue, style=style,
                    s=60, ax=axes[0])  # fmt: skip
    sizes = np.sort(runs[size].astype(float).unique())
    axes[0].plot(sizes, sizes, color="grey", lw=1, ls="--", label="all in use")
    axes[0].set(xscale="log", yscale="log", title="Codes in use by codebook size")
    sns.scatterplot(data=runs, x="codebook_perplexity", y="recon_mse", hue=hue, style=style,
                    s=60, ax=axes[1], legend=False)  # fmt: skip
    axes[1].set(xscale="log", title="Reconstruction against codes in use")
    return fig


PLOTS: dict[str, list[Callable[[View], Figure | None]]] = {
    "gan": [technique_map, gan_lr_heatmap, modes_over_epochs],
    "autoencoder": [sparsity_tradeoff, denoising_levels],
    "vae": [rate_distortion],
    "dvae": [by_schedule, temperature_curves],
    "vqvae": [codebook_usage],
    "diffusion": [guidance_tradeoff, fid_by_steps],
    "latent_diffusion": [fid_by_steps],
}


def figures(family: str, view: View) -> list[tuple[str, Figure]]:
    """(name, figure) for every figure that applies, the family's first."""
    out = []
    for fn in [*PLOTS.get(family, []), *COMMON]:
        fig = fn(view)
        if fig is not None:
            out.append((fn.__name__, fig))
    return out


__all__ = ["COMMON", "PLOTS", "View", "figures", "knobs", "sampler_table"]
