"""`python -m analysis.report STUDY`: one self-contained HTML report of a
study's trials (figures embedded, tables, outcome counts, the best
configurations with their seed spread) and the CSVs behind it, attached to the
study's latest parent run in MLflow.

A study with no runs, or an unknown one, ends with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import sys
import time
import warnings
from pathlib import Path
from typing import NoReturn

import matplotlib
import pandas as pd

from analysis.confirm import search_phase
from analysis.front import family_samplers, front_table, objective_front, parse_objectives
from analysis.runs import AnalysisError, load_history, load_runs
from scoring.outcomes import OUTCOMES
from scoring.ranking import rank_table
from scoring.registry import METRICS, split_sampler_metric
from study.studies import STUDIES
from study.tracking import GENERATION, TrackingError, check_tracking_uri, resolve_tracking_uri

TOP = 10  # configurations shown in the report's table
matplotlib.use("Agg")  # figures go to files, never to a window: reports run headless


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    p.add_argument("study", help="study name (python -m study.run --list)")
    p.add_argument("--tracking-uri", help="MLflow store (default as for study.run)")
    p.add_argument("--experiment", help="MLflow experiment (default: the study name)")
    p.add_argument("--out", help="output folder (default: reports/STUDY)")
    p.add_argument(
        "--survival-by",
        default="",
        metavar="SETTING",
        help="the setting the survival curves are grouped by (default: the learning rate)",
    )
    return p


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _fmt_spread(stats: pd.DataFrame, metric: str) -> pd.Series:
    def cell(row: pd.Series) -> str:
        if pd.isna(row[f"{metric}_mean"]):
            return "-"
        std = 0.0 if pd.isna(row[f"{metric}_std"]) else row[f"{metric}_std"]
        return (
            f"{row[f'{metric}_mean']:.4g} ± {std:.2g} "
            f"[{row[f'{metric}_min']:.4g}, {row[f'{metric}_max']:.4g}]"
        )

    return stats.apply(cell, axis=1)


def best_table(stats: pd.DataFrame, knob_cols: list[str], metrics: list[str]) -> pd.DataFrame:
    """The top configurations as people read them: knobs, mean ± std [min, max]
    of each metric over seeds, and the outcomes."""
    top = stats.head(TOP)
    table = top[["config_id", *knob_cols, "seeds"]].copy()
    for m in metrics:
        if f"{m}_mean" in top:
            table[m] = _fmt_spread(top, m)
    table["outcomes"] = top.apply(
        lambda r: ", ".join(f"{o} {r[f'{o}_rate']:.0%}" for o in OUTCOMES if r[f"{o}_rate"] > 0),
        axis=1,
    )
    return table


def metric_glossary(columns: list[str]) -> pd.DataFrame:
    """The registered sample metrics among these columns (per-sampler ones
    under their base name): what each measures and which way is better."""
    names = {c for c in columns if c in METRICS}
    names |= {split[0] for c in columns if (split := split_sampler_metric(c))}
    rows = [
        {"metric": m.name, "better": "lower" if m.mode == "min" else "higher",
         "per sampler": m.per_sampler, "meaning": m.help}
        for m in METRICS.values() if m.name in names
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["metric", "better", "per sampler", "meaning"])


def _table_html(df: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    table = df.to_html(
        index=False, border=0, classes="t", na_rep="-", float_format=float_format.format
    )
    return _scrolling(table)


def _scrolling(table: str) -> str:
    """A table in a box that scrolls sideways: a study with many knobs gives
    a table wider than the page, which must not widen the page itself."""
    return f'<div class="scroll">{table}</div>'


CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:.3em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{padding:3px 8px;
text-align:right;border-bottom:1px solid #eee}table.t th{background:#f5f5f5}
figure{margin:1.5em 0}figcaption{color:#555;font-size:14px}img{max-width:100%;height:auto}
.scroll{max-width:100%;overflow-x:auto}
"""


def _what_matters(study, runs: pd.DataFrame, knob_cols: list[str], out: Path) -> list[str]:
    """Budget curve, knob importance and a stability map (with their CSVs),
    where the study tried more than one configuration."""
    from analysis.importance import importance
    from analysis.plots import role
    from analysis.stats import budget_curve, stability_map

    sections: list[str] = []
    if study.metric not in runs or runs["config_id"].nunique() < 2:
        return sections
    curve = budget_curve(runs, study.metric, study.mode)
    curve.to_csv(out / "budget_curve.csv", index=False)
    imp = importance(runs, study.metric, knob_cols)
    imp.to_csv(out / "importance.csv", index=False)
    verdict = imp.attrs["verdict"]
    sections.append(
        f"<h2>What matters for {html.escape(study.metric)}</h2><p>Permutation "
        "importance of a random forest over the knobs (sums to 1), with a 95% interval over "
        "bootstrap draws of the configurations."
        + (f" <b>{html.escape(verdict[0].upper() + verdict[1:])}.</b>" if verdict else "")
        + "</p>"
        + _table_html(imp)
        + _optuna_rated(runs, study, knob_cols)
    )
    numeric = [k for k in imp["param"] if pd.api.types.is_numeric_dtype(runs[k])]
    rates = [r for i in (0, 1) if (r := role(runs, "learning_rate", i)) in knob_cols]
    pair = rates if len(rates) == 2 else numeric[:2]
    if len(pair) == 2:
        smap = stability_map(runs, pair[0], pair[1])
        smap.to_csv(out / "stability_map.csv")
        sections.append(
            f"<h2>Stability map</h2><p>Share of trials ending ok over {pair[0]} "
            f"(columns) by {pair[1]} (rows).</p>" + _scrolling(smap.to_html(
                border=0, classes="t", na_rep="-", float_format="{:.0%}".format
            ))
        )  # fmt: skip
    return sections


def _optuna_rated(runs: pd.DataFrame, study, knob_cols: list[str]) -> str:
    """fANOVA and PED-ANOVA importances side by side, as optuna-dashboard
    shows them; a line saying why where they cannot rate these trials."""
    from analysis.importance import EVALUATORS, optuna_importance

    rated = {}
    for name in EVALUATORS:
        try:
            table = optuna_importance(runs, study.metric, name, knob_cols, study.mode)
            rated[name] = table.set_index("param")["importance"]
        except AnalysisError as e:
            return f"<p>Optuna's evaluators: {html.escape(str(e))}.</p>"
    both = pd.DataFrame(rated).sort_values(next(iter(rated)), ascending=False)
    both = both.rename_axis("param").reset_index()
    return "<p>Optuna's evaluators on one trial a configuration (its mean):</p>" + _table_html(both)


PAIRWISE = 5  # top configurations compared pairwise


def _ranking_sections(study, runs: pd.DataFrame, knob_cols: list[str], out: Path) -> list[str]:
    """How sure the search's order is (each of its top configurations
    against the next, bootstrapped over seeds), and where the study
    confirmed its best on fresh seeds, both estimates side by side."""
    from analysis.confirm import confirmation

    search = search_phase(runs)
    if study.metric not in runs or search["config_id"].nunique() < 2:
        return []
    ranked = rank_table(search, knob_cols, study.metric, study.mode).head(PAIRWISE)
    ranked.to_csv(out / "pairwise.csv", index=False)
    m = study.metric
    shown = ranked[["config_id", *knob_cols, "seeds", f"{m}_mean", f"{m}_std"]].copy()
    shown["next minus this [95%]"] = [
        "-"
        if pd.isna(r.diff_next)
        else f"{r.diff_next:.3g} [{r.diff_next_low:.3g}, {r.diff_next_high:.3g}]"
        for r in ranked.itertuples()
    ]
    shown["beats next"] = ranked["p_beats_next"].map(lambda p: "-" if pd.isna(p) else f"{p:.0%}")
    shown["P(best)"] = ranked["p_best"]
    shown["spread > gap"] = ranked["spread_over_gap"].map({True: "yes", False: ""})
    shown["IQM [95%]"] = [
        _interval(r[0], r[1], r[2])
        for r in ranked[[f"{m}_iqm", f"{m}_iqm_low", f"{m}_iqm_high"]].to_numpy()
    ]
    shown["P(improves next) [95%]"] = [
        _interval(r[0], r[1], r[2])
        for r in ranked[
            ["p_improves_next", "p_improves_next_low", "p_improves_next_high"]
        ].to_numpy()
    ]
    shown["seeds to tell from next"] = ranked["seeds_needed_next"].astype(object).fillna("-")
    sections = [
        f"<h2>How sure the order is</h2><p>The search's top {len(ranked)} by {html.escape(m)}: "
        "each against the next, the difference of their means with a 95% bootstrap interval "
        "(seeds drawn again with replacement), the share of resamples in which it is better, "
        "and where its seeds' std is larger than the gap to the next mean (their order "
        "is not to be trusted). rliable's aggregates beside them: the interquartile mean "
        "(25% cut from each end; the mean under 4 seeds), the probability that a seed of it "
        "beats a seed of the next, and the seeds each that would tell the two apart (Welch "
        "t-test at 5%, 80% power, the measured means and spreads taken as true).</p>"
        + _table_html(shown)
    ]
    sections += _profile_section(search, ranked["config_id"].tolist(), m, study.mode, out)
    if "phase" in runs and (runs["phase"] == "confirm").any():
        table = confirmation(runs)
        table.to_csv(out / "confirmation.csv", index=False)
        sections.append(
            "<h2>Confirmed on fresh seeds</h2><p>The latest invocation's best configurations "
            "re-run on seeds its search never used: the search's estimate (biased toward "
            "its luckiest) beside the fresh one, and the confirmed order's confidence.</p>"
            + _table_html(table.drop(columns=["config_id"]))
        )
    return sections


def _interval(p: float, low: float, high: float) -> str:
    if pd.isna(p):
        return "-"
    return f"{p:.3g}" if pd.isna(low) else f"{p:.3g} [{low:.3g}, {high:.3g}]"


def _profile_section(
    runs: pd.DataFrame, configs: list[str], metric: str, mode: str, out: Path
) -> list[str]:
    """Performance profiles of the top configurations, with their bands."""
    import matplotlib.pyplot as plt

    from analysis.few_runs import performance_profiles

    top = runs[runs["config_id"].isin(configs)]
    profiles = performance_profiles(top, metric, mode)
    profiles.to_csv(out / "profiles.csv", index=False)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for cid, p in profiles.groupby("config_id", sort=False):
        ax.step(p["threshold"], p["share"], where="post", label=cid)
        ax.fill_between(p["threshold"], p["low"], p["high"], step="post", alpha=0.15)
    side = "at or below" if mode == "min" else "at or above"
    ax.set(xlabel=f"{metric} threshold", ylabel=f"share of seeds {side}", ylim=(0, 1.02))
    ax.legend(fontsize=8, title="config_id")
    return [
        f"<h2>Performance profiles</h2><p>For the top {len(configs)}: the share of seeds "
        f"{side} each {html.escape(metric)} threshold, with a 95% bootstrap band (Agarwal "
        "et al. 2021): a curve above another is better at every threshold.</p>"
        f'<figure><img alt="profiles" src="data:image/png;base64,{_png(fig)}"></figure>'
    ]


def _front_section(
    runs: pd.DataFrame, uri: str, latest: str, knob_cols: list[str], out: Path
) -> list[str]:
    """A search on several objectives (--objectives, recorded on its parent
    run; the latest invocation's): the Pareto front's members and figure."""
    from mlflow import MlflowClient

    text = MlflowClient(uri).get_run(latest).data.params.get("objectives")
    objectives = parse_objectives(text or "")
    table = front_table(runs[runs["parent_run_id"] == latest], objectives, knob_cols)
    fig = objective_front(table, objectives)
    if fig is None:
        return []
    table.to_csv(out / "pareto.csv", index=False)
    front = table[table["pareto"]]
    shown = front[["config_id", *knob_cols, "seeds"]].copy()
    for m, _ in objectives:
        shown[m] = [
            f"{a:.3g} ± {b:.2g}"
            for a, b in zip(front[f"{m}_mean"], front[f"{m}_std"].fillna(0), strict=True)
        ]
    names = ", ".join(f"{m} ({d})" for m, d in objectives)
    return [
        f"<h2>Pareto front</h2><p>The latest search's objectives, {html.escape(names)}: "
        f"{len(front)} of {len(table)} configurations are beaten by no other on every "
        "objective (means over seeds; pareto.csv marks every configuration).</p>"
        + _table_html(shown)
        + f'<figure><img alt="pareto_front" src="data:image/png;base64,{_png(fig)}"></figure>'
    ]


def _population_section(
    study, runs: pd.DataFrame, history: pd.DataFrame, knob_cols: list[str], out: Path
) -> list[str]:
    """Population-based training: each final member's schedule of settings,
    rebuilt from its lineage, and the population's metric over time."""
    from analysis.population import changed_settings, is_population, schedule_figure, schedules

    if not is_population(runs):
        return []
    pbt = runs[runs[GENERATION].notna()]
    latest = pbt.loc[pbt["start_time"].idxmax(), "parent_run_id"]  # one population a report
    runs = runs[runs["parent_run_id"] == latest]
    table = schedules(runs, knob_cols)
    table.to_csv(out / "schedules.csv", index=False)
    changed = changed_settings(table, knob_cols)
    clones = int((table["generation"] > 0).sum())
    fig = schedule_figure(table, history, study.metric, changed)
    return [
        f"<h2>Population-based training</h2><p>The latest population "
        f"({html.escape(str(runs['study_run'].iloc[0]))}): "
        f"{table['member'].nunique()} final members; "
        f"{clones} stretches of their schedules began with a clone of another member. Each "
        "member's settings over epochs, walked back through the runs it continues "
        "(pbt_parent, pbt_epoch), are in schedules.csv; below, the population's "
        f"{html.escape(study.metric)} along those lineages and the settings that changed "
        f"({html.escape(', '.join(changed) or 'none')}).</p>"
        f'<figure><img alt="pbt_schedules" src="data:image/png;base64,{_png(fig)}"></figure>'
    ]


def _spaces_section(runs: pd.DataFrame, out: Path) -> list[str]:
    """With eval_classifiers > 1: each configuration's fid in every classifier
    space, and how far the ranking moves from the shipped classifier's."""
    from analysis.spaces import classifier_spaces

    table = classifier_spaces(runs)
    if table is None:
        return []
    table.to_csv(out / "classifier_spaces.csv", index=False)
    return [
        "<h2>Classifier spaces</h2><p>Mean fid over seeds in the feature space of each "
        "classifier (space 0: the shipped one; the others trained with seeds 1, 2, ...), "
        "its relative spread (std / mean) and rank; below, Kendall's tau of each space's "
        "ranking against space 0.</p>" + _table_html(table) + _table_html(table.attrs["spaces"])
    ]


def _figures(
    study,
    runs: pd.DataFrame,
    history: pd.DataFrame,
    metrics: list[str],
    knob_cols: list[str],
    survival_by: str = "",
) -> list[str]:
    """The sample-metric glossary and the family's figures, embedded."""
    from analysis.plots import View, figures

    sections: list[str] = []
    glossary = metric_glossary(list(runs.columns))
    if len(glossary):
        sections.append("<h2>Sample metrics</h2>" + _table_html(glossary))
    view = View(runs, history, study.metric, study.mode, tuple(metrics), knob_cols, study.group_by)
    view.survival_by = survival_by
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        figs = figures(study.family, view)
    sections.append("<h2>Figures</h2>")
    for name, fig in figs:
        caption = fig._suptitle.get_text() if fig._suptitle else name.replace("_", " ")
        sections.append(
            f'<figure><img alt="{name}" src="data:image/png;base64,{_png(fig)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return sections


def _course_sections(
    study: str, runs: pd.DataFrame, history: pd.DataFrame, out: Path, by: str
) -> list[str]:
    """Over time: how many seeds collapsed, recovered and hopped, the
    log-rank tests of the survival curves and the early-warning table."""
    from analysis.plots import role
    from analysis.survival import survival_table
    from analysis.warning import warning_table

    ended = runs.dropna(subset=["ended_epoch"])
    if ended.empty:
        if by:
            raise AnalysisError("--survival-by: these runs record no course over time")
        return []
    counts = pd.DataFrame([{
        "seeds": len(ended),
        "collapsed at some evaluation": int(ended["collapse_epoch"].notna().sum()),
        "median collapse epoch": ended["collapse_epoch"].median(),
        "recovered": int(ended["recovered"].eq(True).sum()),
        "hopped": int(ended["hopping"].eq(True).sum()),
    }])  # fmt: skip
    sections = ["<h2>Over time</h2>" + _table_html(counts)]
    chosen, by = by, by or role(runs, "learning_rate") or STUDIES[study].group_by
    if chosen or (by and ended["collapse_epoch"].notna().any()):
        table = survival_table(runs, by)
        table.to_csv(out / "survival.csv", index=False)
        sections.append(f"<h3>Log-rank tests by {html.escape(by)}</h3>"
                        + _table_html(table.attrs["logrank"]))  # fmt: skip
    warning = warning_table(runs, history)
    if len(warning):
        warning.to_csv(out / "early_warning.csv", index=False)
        shown = warning.dropna(subset=["recall"]).sort_values(
            ["recall", "precision"], ascending=False
        )
        sections.append("<h3>Early warning (best recall first)</h3>" + _table_html(shown.head(12)))
    return sections


def _sampler_section(runs: pd.DataFrame, out: Path) -> list[str]:
    """A study spanning families: a row per family and sampler."""
    if "family" not in runs or runs["family"].nunique() < 2:
        return []
    table = family_samplers(search_phase(runs))
    table.to_csv(out / "by_sampler.csv", index=False)
    shown = table[["family", "sampler", "seeds"]].copy()
    for col in (c[: -len("_mean")] for c in table if c.endswith("_mean")):
        pairs = zip(table[f"{col}_mean"], table[f"{col}_std"].fillna(0), strict=True)
        shown[col] = [f"{m:.3g} ± {s:.2g}" for m, s in pairs]
    return [
        "<h2>By family and sampler</h2><p>mean ± std over seeds, in one classifier's feature "
        "space; sample_seconds: seconds per 1000 samples (by_sampler.csv).</p>" + _table_html(shown)
    ]


def build_report(study_name: str, tracking_uri: str | None, experiment: str | None,
                 out: Path, survival_by: str = "") -> tuple[Path, str, dict]:  # fmt: skip
    """Write report.html and its CSVs into out; return (html path, the parent
    run to attach to, a summary of what it found)."""
    from analysis.stats import config_stats, knobs

    study = STUDIES[study_name]
    runs = load_runs(study_name, tracking_uri, experiment)
    if survival_by and survival_by not in runs.attrs["params"]:
        params = ", ".join(sorted(runs.attrs["params"]))
        raise AnalysisError(
            f"--survival-by: setting '{survival_by}' is not one of the study's; it has: {params}"
        )
    history = load_history(study_name, tracking_uri, experiment, runs=runs)
    metrics = [m for m in (study.metric, *study.table_metrics) if m in runs]
    metrics = list(dict.fromkeys(metrics))
    knob_cols = knobs(runs, metrics)
    stats = config_stats(search_phase(runs), metrics, study.mode, knob_cols)
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "trials.csv", index=False)
    history.to_csv(out / "history.csv", index=False)
    stats.to_csv(out / "configurations.csv", index=False)

    sections: list[str] = []
    counts = runs["outcome"].fillna("unknown").value_counts()
    sections.append("<h2>Outcomes</h2>" + _table_html(
        counts.rename_axis("outcome").reset_index(name="trials")
    ))  # fmt: skip
    sections.append(
        f"<h2>Best configurations by {html.escape(study.metric)}</h2>"
        f"<p>mean ± std [min, max] over seeds; {len(stats)} configurations, "
        f"{len(runs)} trials.</p>" + _table_html(best_table(stats, knob_cols, metrics))
    )
    parent = runs.loc[runs["start_time"].idxmax(), "parent_run_id"]  # the latest invocation
    uri = resolve_tracking_uri(tracking_uri)
    sections += _sampler_section(runs, out)
    sections += _front_section(search_phase(runs), uri, parent, knob_cols, out)
    sections += _population_section(study, runs, history, knob_cols, out)
    sections += _ranking_sections(study, runs, knob_cols, out)
    sections += _what_matters(study, search_phase(runs), knob_cols, out)
    sections += _course_sections(study_name, runs, history, out, survival_by)
    sections += _spaces_section(runs, out)
    figure_sections = _figures(study, runs, history, metrics, knob_cols, survival_by)
    sections += figure_sections
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{study_name} report"
        f"</title><style>{CSS}</style></head><body><h1>{html.escape(study_name)}</h1>"
        f"<p class='sub'>{html.escape(study.description)}<br>{len(runs)} trials from "
        f"{runs['parent_run_id'].nunique()} invocation(s) in {html.escape(uri)}, "
        f"experiment '{html.escape(experiment or study_name)}'; written "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Tables behind it: trials.csv, "
        f"configurations.csv, history.csv and the others beside this file.</p>"
        + "".join(sections) + "</body></html>"
    )  # fmt: skip
    path = out / "report.html"
    path.write_text(page)
    n_figures = sum(f.startswith("<figure>") for f in figure_sections)
    summary = {"trials": len(runs), "configurations": len(stats), "figures": n_figures}
    return path, parent, summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.study not in STUDIES:
        print(
            f"error: unknown study '{args.study}'; choose from: {', '.join(STUDIES)}",
            file=sys.stderr,
        )
        return 2
    try:
        uri = resolve_tracking_uri(args.tracking_uri)
        check_tracking_uri(uri)
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
            raise AnalysisError(f"no MLflow store at {uri}; run the study first")
        out = Path(args.out or Path("reports") / args.study)
        path, parent, summary = build_report(
            args.study, uri, args.experiment, out, args.survival_by
        )
    except (AnalysisError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from mlflow import MlflowClient

    MlflowClient(uri).log_artifacts(parent, str(out), "report")
    print(
        f"{args.study}: {summary['trials']} trials, {summary['configurations']} configurations, "
        f"{summary['figures']} figures\nreport: {path.resolve()}\n"
        f"attached to MLflow parent run {parent} (artifacts/report)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
