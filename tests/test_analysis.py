"""analysis: MLflow to pandas against the shared smoke store, the statistics
against hand computations on data with known answers, the report CLI end to
end, and the notebooks executed top to bottom."""

from __future__ import annotations

import re
import subprocess
import sys

import nbformat
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from nbclient import NotebookClient

from analysis.importance import importance, optuna_importance
from analysis.report import build_report
from analysis.report import main as report_main
from analysis.runs import AnalysisError, load_history, load_runs
from analysis.stats import budget_curve, config_stats, knobs, stability_map
from tests.conftest import ROOT, SMOKE_STUDIES, cli_env, in_process

# --- MLflow to pandas -------------------------------------------------------------


def test_load_runs_gives_one_typed_row_per_trial(smoke_store):
    runs = load_runs("gan_stability", smoke_store.uri)
    client = MlflowClient(smoke_store.uri)
    exp = client.get_experiment_by_name("gan_stability")
    children = {
        r.info.run_id: r
        for r in client.search_runs([exp.experiment_id])
        if "mlflow.parentRunId" in r.data.tags
    }
    assert sorted(runs["run_id"]) == sorted(children) and len(runs) == 4
    assert runs["study_run"].unique().tolist() == ["smoke-gan_stability"]
    assert runs["seed"].dtype == np.int64 and runs["lr_g"].dtype == np.float64
    assert runs["replay"].dtype == bool
    for row in runs.itertuples():
        run = children[row.run_id]
        assert row.outcome == run.data.tags["outcome"]
        assert row.config_id == run.data.params["config_id"]
        if "fid" in run.data.metrics:
            assert row.fid == run.data.metrics["fid"]
    assert set(knobs(runs, ["fid"])) <= {"lr_g", "lr_d", "beta1", "loss", "n_disc", "replay",
                                         "mbstd", "arch"}  # fmt: skip


def test_load_history_is_long_format_matching_mlflow(smoke_store):
    runs = load_runs("vae_kl", smoke_store.uri)
    history = load_history("vae_kl", smoke_store.uri, runs=runs, metrics=["kl", "recon_mse"])
    assert list(history.columns) == [
        "run_id", "trial_id", "config_id", "seed", "outcome", "metric", "epoch", "value",
    ]  # fmt: skip
    assert len(history) == 4 * 2 * 2  # trials x metrics x epochs
    client = MlflowClient(smoke_store.uri)
    rid = runs["run_id"].iloc[0]
    expected = [(m.step, m.value) for m in client.get_metric_history(rid, "kl")]
    got = history[(history.run_id == rid) & (history.metric == "kl")]
    assert list(zip(got.epoch, got.value, strict=True)) == sorted(expected)


def test_unknown_experiment_is_an_analysis_error(smoke_store):
    with pytest.raises(AnalysisError, match="no experiment 'gan_modes'"):
        load_runs("gan_modes", smoke_store.uri)


# --- statistics on data with known answers -----------------------------------------


def _trials() -> pd.DataFrame:
    # config a: fid 10, 12 (ok, ok); b: 20, -, (ok, diverged); c: 30, 34 (collapsed, ok)
    return pd.DataFrame(
        {
            "config_id": ["a", "a", "b", "b", "c", "c"],
            "seed": [0, 1, 0, 1, 0, 1],
            "lr": [1e-4, 1e-4, 1e-3, 1e-3, 1e-2, 1e-2],
            "fid": [10.0, 12.0, 20.0, np.nan, 30.0, 34.0],
            "outcome": ["ok", "ok", "ok", "diverged", "collapsed", "ok"],
        }
    )


def test_config_stats_match_a_hand_computation():
    stats = config_stats(_trials(), ["fid"], "min", ["lr"]).set_index("config_id")
    assert list(stats.index) == ["a", "b", "c"]  # best mean first
    assert stats.loc["a", "fid_mean"] == 11.0 and stats.loc["a", "fid_std"] == pytest.approx(
        np.std([10, 12], ddof=1)
    )
    assert (stats.loc["c", "fid_min"], stats.loc["c", "fid_max"]) == (30.0, 34.0)
    assert stats.loc["b", "diverged_rate"] == 0.5 and stats.loc["b", "ok_rate"] == 0.5
    assert stats.loc["c", "collapsed_rate"] == 0.5 and stats.loc["a", "seeds"] == 2


def test_per_technique_table_matches_a_hand_computation():
    from scoring.aggregate import per_group

    # technique a: stable at both rates; b: one seed collapses at 1e-3, the
    # other diverges at 1e-2 (no fid)
    trials = pd.DataFrame(
        {
            "technique": ["a"] * 4 + ["b"] * 4,
            "lr": [1e-3, 1e-3, 1e-2, 1e-2] * 2,
            "config_id": ["a1", "a1", "a2", "a2", "b1", "b1", "b2", "b2"],
            "outcome": ["ok"] * 4 + ["ok", "collapsed", "ok", "diverged"],
            "fid": [10.0, 20.0, 40.0, 50.0, 5.0, 300.0, 30.0, np.nan],
            "modes_covered": [10, 10, 9, 9, 10, 1, 8, np.nan],
        }
    )
    out = per_group(trials, "technique", ["lr"], "fid", "min", ["modes_covered"])
    assert list(out["technique"]) == ["a", "b"]  # widest first
    a, b = out.iloc[0], out.iloc[1]
    assert (a["trials"], a["ok_share"], a["stable_configs"], a["configs"]) == (4, 1.0, 2, 2)
    assert a["best_fid"] == 15.0 and a["median_fid"] == 30.0 and a["stable_values"] == "0.001, 0.01"
    assert (b["ok_share"], b["stable_configs"], b["stable_values"]) == (0.5, 0, "")
    assert b["best_fid"] == 30.0  # config b2's mean over the seed that has a fid
    assert b["median_fid"] == 30.0 and b["modes_covered_mean"] == pytest.approx(19 / 3)


def test_budget_curve_follows_the_order_statistics():
    trials = _trials()
    curve = budget_curve(trials, "fid", "min", n_boot=20_000, seed=1)
    # k = 1: a random configuration, then a random seed of it: each trial has
    # chance 1/6; the diverged one counts as infinitely bad, so it is reported
    # as "no usable result" and the mean is over the other five
    values = {"a": [10, 12], "b": [20, np.inf], "c": [30, 34]}
    draws = [v for vs in values.values() for v in vs]
    finite = [v for v in draws if np.isfinite(v)]
    assert curve.loc[0, "best_mean"] == pytest.approx(np.mean(finite), rel=0.02)
    assert curve.loc[0, "no_usable_result"] == pytest.approx(1 / 6, abs=0.01)
    # k = 2: exact expectation of the min of two independent draws
    pairs = [min(x, y) for x in draws for y in draws]
    exact = np.mean([p for p in pairs if np.isfinite(p)])
    assert curve.loc[1, "best_mean"] == pytest.approx(exact, rel=0.02)
    assert curve["best_mean"].is_monotonic_decreasing
    assert (curve["low"] <= curve["best_mean"]).all() and (
        curve["best_mean"] <= curve["high"]
    ).all()


def test_importance_finds_the_knob_that_matters():
    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame(
        {
            "config_id": [str(i) for i in range(n)],
            "lr": 10 ** rng.uniform(-5, -2, n),
            "noise": rng.uniform(0, 1, n),
            "loss": rng.choice(["a", "b"], n),
        }
    )
    df["fid"] = 100 * np.log10(df["lr"]) ** 2 + rng.normal(0, 1, n)
    table = importance(df, "fid", ["lr", "noise", "loss"], resamples=5)
    imp = table.set_index("param")["importance"]
    assert imp["lr"] > 0.8 and imp.sum() == pytest.approx(1.0)
    # its bootstrap interval over configurations clears the others': ranked
    assert table["param"].iloc[0] == "lr" and table["low"].iloc[0] > table["high"].iloc[1:].max()
    assert table.attrs["verdict"] == ""
    # Optuna's evaluators on one trial per configuration say the same
    for evaluator in ("fanova", "ped_anova"):
        rated = optuna_importance(df, "fid", evaluator, ["lr", "noise", "loss"])
        assert rated["param"].iloc[0] == "lr", (evaluator, rated)
    with pytest.raises(AnalysisError, match="unknown evaluator 'shap'; choose from: fanova"):
        optuna_importance(df, "fid", "shap", ["lr"])


def test_importance_says_when_too_few_configurations_rank_the_knobs():
    """Eight configurations, eight knobs, one of which decides (as in the
    default gan_stability run, where every configuration that trained used
    wgan_gp): no ranking is claimed."""
    rng = np.random.default_rng(1)
    df = pd.DataFrame({f"k{i}": rng.uniform(0, 1, 8) for i in range(8)})
    df["config_id"] = [str(i) for i in range(8)]
    df["fid"] = np.where(df["k0"] > 0.5, 50.0, 400.0) + rng.normal(0, 5, 8)
    table = importance(df, "fid", [f"k{i}" for i in range(8)], resamples=5)
    assert (
        "8 configurations for 8 knobs: too few to rank them (at least 16)"
        in (table.attrs["verdict"])
    )
    assert (table["low"] <= table["high"]).all() and table["high"].notna().all()


def test_stability_map_shares():
    df = pd.DataFrame(
        {
            "lr_g": [1e-5, 1e-5, 1e-2, 1e-2, 1e-2, 1e-5],
            "lr_d": [1e-5, 1e-5, 1e-2, 1e-2, 1e-2, 1e-2],
            "outcome": ["ok", "ok", "ok", "collapsed", "collapsed", "diverged"],
        }
    )
    table = stability_map(df, "lr_g", "lr_d", bins=2)
    assert table.iloc[-1, 0] == 1.0  # low lr_d (last row), low lr_g: 2 of 2 ok
    assert table.iloc[0, 1] == pytest.approx(1 / 3)  # high, high: 1 of 3 ok
    assert table.iloc[0, 0] == 0.0 and np.isnan(table.iloc[-1, 1])  # never tried


def test_technique_map_shows_each_techniques_stable_share_and_fid_per_learning_rate():
    from analysis.plots import View, technique_map

    runs = pd.DataFrame(
        {
            "technique": ["a", "a", "a", "a", "b", "b", "b", "b"],
            "lr_g": [1e-4, 1e-4, 1e-3, 1e-3] * 2,
            "outcome": ["ok", "ok", "ok", "collapsed", "ok", "diverged", "collapsed", "collapsed"],
            "fid": [10.0, 20.0, 30.0, 50.0, 70.0, 999.0, 80.0, 90.0],
        }
    ).assign(lr_d=lambda d: d["lr_g"], family="gan")
    fig = technique_map(View(runs, pd.DataFrame(), "fid", "min", group="technique"))
    ok, fid = ([t.get_text() for t in ax.texts] for ax in fig.axes[:2])
    # rows widest first (a: 3 of 4 ok, b: 1 of 4), columns lr 1e-4, 1e-3
    assert ok == ["100%", "50%", "50%", "0%"]
    assert fid == ["15", "40", "70", "85"]  # the diverged trial's fid is left out
    no_group = View(runs.drop(columns="technique"), pd.DataFrame(), "fid", "min", group="technique")
    assert technique_map(no_group) is None


def test_figures_find_a_familys_settings_by_their_roles():
    """Figures ask the family which setting plays a role: every role a
    family declares is a known one naming a setting of its config, and a
    figure follows the declaration (a GAN's learning rates, in order)."""
    from analysis.plots import View, role
    from models import FAMILIES
    from models.config import keys
    from models.family import ROLES

    for name, family in FAMILIES.items():
        assert set(family.roles) <= set(ROLES), name
        named = {s for settings in family.roles.values() for s in settings}
        named |= set(family.acts_when) | {when[0] for when in family.acts_when.values()}
        assert named <= keys(family.Config), (name, named - keys(family.Config))
    runs = pd.DataFrame({"family": ["gan"] * 2, "lr_g": [1e-4, 1e-3], "lr_d": [1e-3, 1e-4]})
    assert [role(runs, "learning_rate", i) for i in (0, 1, 2)] == ["lr_g", "lr_d", None]
    assert View(runs, pd.DataFrame(), "fid", "min").role("weight") is None
    assert role(runs.drop(columns="family"), "learning_rate") is None


# --- the report -------------------------------------------------------------------

FAMILY_FIGURES = {
    "gan_stability": {"gan_lr_heatmap", "modes_over_epochs"},
    "sparse_ae": {"sparsity_tradeoff"},
    "denoising_ae": {"denoising_levels"},
    "vae_kl": {"rate_distortion"},
    "dvae_temperature": {"by_schedule", "temperature_curves"},
    "diffusion_schedule": {"fid_by_steps"},
    "vq_codebook": {"codebook_usage"},
    "diffusion_guidance": {"guidance_tradeoff"},
    "latent_diffusion": {"fid_by_steps"},
}


def test_report_cli_writes_html_csvs_and_attaches_them(smoke_store, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "analysis.report", "gan_stability",
         "--tracking-uri", smoke_store.uri, "--out", str(tmp_path / "rep")],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "Best configurations by fid" in page and "Outcomes" in page
    # the registry's glossary: each sample metric shown once, with its direction
    assert "<h2>Sample metrics</h2>" in page and "<td>fid</td>" in page
    assert "<td>Frechet distance of sample and held-out features</td>" in page
    figures = set(re.findall(r'<img alt="(\w+)" src="data:image/png;base64,', page))
    assert FAMILY_FIGURES["gan_stability"] | {"outcome_rates", "budget", "profiles"} <= figures
    # rliable's aggregates beside the bootstrap ranking
    assert "IQM [95%]" in page and "P(improves next) [95%]" in page
    assert "<h2>Performance profiles</h2>" in page
    profiles = pd.read_csv(tmp_path / "rep" / "profiles.csv")
    assert profiles["share"].between(0, 1).all() and profiles["config_id"].nunique() == 2
    assert not re.search(r'(src|href)="https?://', page)  # self-contained: nothing fetched
    # a table wider than the page scrolls in its box; a figure shrinks to the page
    assert page.count("<table") == page.count('<div class="scroll"><table') > 3
    assert (
        "img{max-width:100%;height:auto}" in page
        and ".scroll{max-width:100%;overflow-x:auto}" in page
    )
    for csv in ("trials.csv", "configurations.csv", "history.csv", "budget_curve.csv"):
        assert (tmp_path / "rep" / csv).exists(), csv
    client = MlflowClient(smoke_store.uri)
    parent = client.search_runs(
        [client.get_experiment_by_name("gan_stability").experiment_id],
        "tags.study = 'gan_stability'",
    )[0]
    attached = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/trials.csv"} <= attached


@pytest.mark.parametrize("study", [s for s in SMOKE_STUDIES if s != "gan_stability"])
def test_every_family_gets_its_figures(smoke_store, tmp_path, study):
    path, parent, summary = build_report(study, smoke_store.uri, None, tmp_path)
    figures = set(re.findall(r'<img alt="(\w+)"', path.read_text()))
    assert FAMILY_FIGURES[study] <= figures, figures
    if study == "diffusion_guidance":  # its smoke samplers are all guided: no steps curve
        assert "fid_by_steps" not in figures
    assert summary["trials"] == 4 and parent


@pytest.mark.parametrize(
    ("args", "message", "real"),
    [
        # a real command line: its exit code and its one line on stderr
        (["no_such_study"], "unknown study 'no_such_study'", True),
        # the others in this process: the same main(), without a start-up
        (["gan_modes"], "no experiment 'gan_modes'", False),
        (
            ["gan_stability", "--survival-by", "beta9"],
            "setting 'beta9' is not one of the study's",
            False,
        ),
    ],
)
def test_report_refuses_what_it_cannot_report(smoke_store, tmp_path, args, message, real):
    argv = [*args, "--tracking-uri", smoke_store.uri]
    if real:
        out = subprocess.run(
            [sys.executable, "-m", "analysis.report", *argv],
            cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    else:
        out = in_process(report_main, argv, tmp_path, {})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "reports").exists()


# --- notebooks ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gan_stability.ipynb", "families.ipynb"])
def test_notebooks_run_top_to_bottom(smoke_store, monkeypatch, name):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", smoke_store.uri)
    nb = nbformat.read(ROOT / "analysis" / "notebooks" / name, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the figures rendered
    text = " ".join(str(o.get("text", "")) for o in outputs)
    assert "run the study first" not in text  # every section found its study
