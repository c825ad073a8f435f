"""Studies that span families (the trilemma): settings scoped to a family,
the table with a row per family and sampler, the Pareto front, and a smoke
run of all four families through the CLI into one feature space."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from analysis.report import build_report
from models import FAMILIES
from models.config import ConfigError
from scoring.aggregate import per_sampler
from scoring.pareto import non_dominated
from study.studies import STUDIES, axis_labels, config_id, resolve, split_settings
from tests.conftest import study_runs

TRILEMMA = STUDIES["trilemma"]


def test_each_family_gets_its_own_settings_and_the_users_win():
    resolved = resolve(TRILEMMA, {"gan.lr_g": "0.001", "vae.epochs": "7", "epochs": "5"})
    seen = {}
    for family in TRILEMMA.families:
        trial, cfg = split_settings(TRILEMMA, {**resolved.fixed, "family": family})
        assert type(cfg) is FAMILIES[family].Config
        seen[family] = (trial, cfg)
    # the user's unscoped epochs beat the study's 200; their scoped one beats both
    assert {f: t.epochs for f, (t, _) in seen.items()} == {
        "vae": 7, "gan": 5, "diffusion": 5, "vqvae": 5,
    }  # fmt: skip
    assert seen["gan"][1].lr_g == 1e-3 and seen["gan"][1].arch == "dcgan"
    assert seen["vae"][1].arch == "conv" and seen["diffusion"][1].T == 1000
    assert seen["diffusion"][0].eval_every == 200 and seen["vae"][0].eval_every == 100
    # each family's configuration is its own, so ids differ by family
    ids = {config_id(axis_labels(TRILEMMA, {"family": f})) for f in TRILEMMA.families}
    assert len(ids) == 4


def test_a_scoped_key_of_the_studys_own_family_is_its_plain_key():
    resolved = resolve(STUDIES["gan_stability"], {"gan.loss": "hinge"})
    assert resolved.fixed["loss"] == "hinge" and "loss" not in resolved.axes
    with pytest.raises(ConfigError, match="gan_stability trains gan, not vae"):
        resolve(STUDIES["gan_stability"], {"vae.kl_weight": "2"})


def test_one_familys_knob_is_swept_once_that_family_is_set():
    resolved = resolve(TRILEMMA, {"family": "gan"}, sweeps={"gan.lr_g": ["1e-4", "1e-3"]})
    assert resolved.axes["gan.lr_g"].values == (1e-4, 1e-3) and "family" not in resolved.axes
    with pytest.raises(ConfigError, match="--set family=gan"):
        resolve(TRILEMMA, {}, sweeps={"gan.lr_g": ["1e-4", "1e-3"]})


def test_rows_per_sampler_take_each_samplers_columns():
    """Two seeds of a GAN (one unnamed sampler) and of a DDPM whose main
    sampler is ddim50 with ddim10 beside it: three rows, means by hand."""
    trials = pd.DataFrame(
        {
            "config_id": ["g", "g", "d", "d"],
            "family": ["gan", "gan", "diffusion", "diffusion"],
            "seed": [0, 1, 0, 1],
            "outcome": ["ok", "collapsed", "ok", "ok"],
            "sampler": [None, None, "ddim50", "ddim50"],
            "fid": [10.0, 14.0, 2.0, 4.0],
            "fid_ddim10": [np.nan, np.nan, 5.0, 9.0],
            "sample_seconds": [0.1, 0.1, 6.0, 8.0],
            "sample_seconds_ddim10": [np.nan, np.nan, 1.0, 2.0],
            "train_seconds": [30.0, 50.0, 100.0, 120.0],
        }
    )
    table = per_sampler(trials, ["family"], ["fid", "sample_seconds", "train_seconds",
                                              "fid_ddim10", "sample_seconds_ddim10"])  # fmt: skip
    rows = table.set_index(["family", "sampler"])
    assert list(table["sampler"]) == ["ddim50", "ddim10", ""]  # best fid first
    assert rows.loc[("diffusion", "ddim10"), "fid_mean"] == 7.0
    assert rows.loc[("diffusion", "ddim10"), "sample_seconds_mean"] == 1.5
    assert rows.loc[("diffusion", "ddim10"), "train_seconds_mean"] == 110.0  # the trial's own
    assert rows.loc[("diffusion", "ddim50"), "fid_mean"] == 3.0
    assert rows.loc[("gan", ""), ["fid_mean", "ok", "collapsed"]].tolist() == [12.0, 1, 1]


def _front_by_brute_force(points: np.ndarray) -> set[int]:
    """Pure Python: i is on the front unless some j is no worse everywhere
    and better somewhere (every objective minimised)."""
    out = set()
    for i, p in enumerate(points.tolist()):
        beaten = any(
            all(a <= b for a, b in zip(q, p, strict=True)) and q != p
            for j, q in enumerate(points.tolist()) if j != i
        )  # fmt: skip
        out |= set() if beaten else {i}
    return out


@pytest.mark.parametrize("dims", [2, 3])
def test_the_pareto_front_equals_a_brute_force_filter(dims):
    rng = np.random.default_rng(dims)
    points = rng.integers(0, 6, size=(60, dims)).astype(float)  # ties and duplicates
    assert set(np.flatnonzero(non_dominated(points, ["min"] * dims))) == _front_by_brute_force(
        points
    )
    # a maximised objective is a minimised one negated; a NaN row is never on it
    modes = ["max"] + ["min"] * (dims - 1)
    flipped = points * np.r_[-1.0, np.ones(dims - 1)]
    assert (non_dominated(flipped, modes) == non_dominated(points, ["min"] * dims)).all()
    points[0] = np.nan
    assert not non_dominated(points, ["min"] * dims)[0]


def test_a_2d_front_is_the_staircase_of_running_minima():
    """An independent route in two objectives: sorted by x, a point is on
    the front when its y is below every y before it."""
    points = np.random.default_rng(0).random((200, 2))
    order = np.argsort(points[:, 0])
    running = np.minimum.accumulate(points[order, 1])
    stairs = set(order[np.r_[True, points[order[1:], 1] < running[:-1]]])
    assert set(np.flatnonzero(non_dominated(points, ["min", "min"]))) == stairs


def test_the_trilemma_runs_four_families_in_one_feature_space(tmp_path, shared_ray):
    uri = f"sqlite:///{tmp_path}/store.db"
    args = ["trilemma", "--smoke", "--seeds", "1", "--num-samples", "4", "--max-concurrent", "1"]
    args += ["--set", "epochs=1"]  # one epoch and one evaluation each: every path runs
    out = shared_ray.run_study([*args, "--tracking-uri", uri, "--name", "t"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Best configurations and samplers by fid" in out.stdout
    _, children = study_runs(uri, "trilemma")
    params = {r.data.params["family"]: r.data.params for r in children}
    assert set(params) == {"vae", "gan", "diffusion", "vqvae"}
    assert len({p["fid_weights_sha256"] for p in params.values()}) == 1  # one feature space
    counts = {f: int(p["param_count"]) for f, p in params.items()}
    assert min(counts.values()) > 1000 and len(set(counts.values())) == 4
    assert params["diffusion"]["sampler"] == "ddim5_eta0" and "sampler" not in params["gan"]
    assert params["vae"]["arch"] == "conv" and params["gan"]["arch"] == "dcgan"
    for run in children:
        assert {"fid", "precision", "recall", "coverage", "sample_seconds"} <= set(run.data.metrics)
        assert run.data.metrics["train_seconds"] > 0
    table = pd.read_csv(tmp_path / "runs" / "t" / "summary" / "by_sampler.csv")
    rows = set(zip(table["family"], table["sampler"].fillna(""), strict=True))
    diffusion = {("diffusion", "ddim5_eta0"), ("diffusion", "ddim10_eta0")}
    vqvae = {("vqvae", "histogram"), ("vqvae", "prior")}
    assert rows == {("vae", ""), ("gan", ""), *diffusion, *vqvae}
    path, _, _ = build_report("trilemma", uri, None, tmp_path / "report")
    page = path.read_text()
    assert "quality_speed_front" in set(re.findall(r'<img alt="(\w+)"', page))
    assert "By family and sampler" in page and (tmp_path / "report" / "by_sampler.csv").exists()
