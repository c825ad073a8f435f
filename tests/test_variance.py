"""analysis.variance_sources: the variance of a metric split by source,
checked on synthetic runs with planted components, against an ordinary
least-squares ANOVA, and on a real study store."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis import AnalysisError, variance_sources
from analysis.variance import components


def _planted(sd: dict[str, float], levels: int, resid: float, seed: int = 0) -> pd.DataFrame:
    """Fully crossed runs: each factor's effects drawn with sd[f] and
    rescaled so their variance (ddof 1) is exactly sd[f]^2, plus residual
    noise of sd `resid`."""
    rng = np.random.default_rng(seed)
    effects = {}
    for f, s in sd.items():
        e = rng.normal(size=levels)
        effects[f] = (e - e.mean()) / e.std(ddof=1) * s
    rows = []
    for cell in itertools.product(range(levels), repeat=len(sd)):
        value = sum(effects[f][lv] for f, lv in zip(sd, cell, strict=True))
        rows.append({**dict(zip(sd, cell, strict=True)), "fid": value + rng.normal() * resid})
    runs = pd.DataFrame(rows)
    runs["config_id"] = runs.pop("config").map(lambda c: f"c{c}") if "config" in runs else "c0"
    return runs


def test_planted_components_are_recovered_with_intervals_that_hold_them():
    sd = {"config": 2.0, "init_seed": 1.0, "data_seed": 0.5}
    runs = _planted(sd, levels=8, resid=0.3)
    table = variance_sources("x", "fid", runs=runs, n_boot=300).set_index("source")
    planted = np.array([4.0, 1.0, 0.25, 0.09])
    assert list(table.index) == ["config_id", "init_seed", "data_seed", "residual"]
    np.testing.assert_allclose(table["variance"], planted, rtol=0.15)
    np.testing.assert_allclose(table["share"], planted / planted.sum(), rtol=0.15)
    assert table["share"].sum() == pytest.approx(1.0)
    assert (table["ci_low"] <= table["share"]).all() and (table["share"] <= table["ci_high"]).all()
    # eight levels pin a component down only so far: its interval is wide
    assert table.loc["config_id", "ci_high"] - table.loc["config_id", "ci_low"] > 0.1


def test_a_source_that_moves_nothing_gets_no_share():
    runs = _planted({"init_seed": 1.0, "eval_seed": 0.0}, levels=6, resid=0.5, seed=1)
    table = variance_sources("x", "fid", runs=runs, n_boot=200).set_index("source")
    assert table.loc["eval_seed", "share"] < 0.05
    assert table.loc["init_seed", "share"] == pytest.approx(1 / 1.25, rel=0.2)


def test_sources_varied_together_count_as_one_named_for_both():
    runs = _planted({"init_seed": 1.0, "eval_seed": 0.3}, levels=5, resid=0.2, seed=3)
    runs["data_seed"] = runs["init_seed"]
    table = variance_sources("x", "fid", runs=runs, n_boot=50)
    assert list(table["source"]) == ["init_seed+data_seed", "eval_seed", "residual"]


def test_sums_of_squares_match_an_ordinary_least_squares_anova():
    """For a balanced design, each factor's mean square from the sequential
    sums of squares of an OLS fit on dummy columns (computed here with
    numpy's lstsq), turned into components by expected mean squares."""
    runs = _planted({"config": 1.0, "init_seed": 0.7}, levels=5, resid=0.4, seed=2)
    y = runs["fid"].to_numpy()
    n = len(y)

    def rss(columns: list[str]) -> float:
        x = np.ones((n, 1))
        if columns:
            dummies = pd.get_dummies(runs[columns].astype(str), drop_first=True)
            x = np.column_stack([x, dummies.to_numpy(float)])
        fitted = x @ np.linalg.lstsq(x, y, rcond=None)[0]
        return float(((y - fitted) ** 2).sum())

    ss_a = rss([]) - rss(["config_id"])
    ss_b = rss(["config_id"]) - rss(["config_id", "init_seed"])
    ms_res = rss(["config_id", "init_seed"]) / (n - 1 - 4 - 4)
    expected = [(ss_a / 4 - ms_res) / 5, (ss_b / 4 - ms_res) / 5, ms_res]
    codes = np.stack([pd.factorize(runs[c])[0] for c in ("config_id", "init_seed")])
    np.testing.assert_allclose(components(y, codes, np.ones(n)), expected, rtol=1e-9)


def test_runs_that_vary_only_the_seed_split_into_seed_and_residual_or_say_why_not(smoke_store):
    table = variance_sources("gan_stability", "fid", smoke_store.uri, n_boot=50)
    # every source followed the seed there: they are one source, `seed`
    assert list(table["source"]) == ["config_id", "seed", "residual"]
    assert table["share"].sum() == pytest.approx(1.0)
    with pytest.raises(AnalysisError, match="no run logged 'nosuch'"):
        variance_sources("gan_stability", "nosuch", smoke_store.uri)
    one = pd.DataFrame({"config_id": ["a", "a"], "seed": [0, 0], "fid": [1.0, 2.0]})
    with pytest.raises(AnalysisError, match="neither the configuration nor any seed varies"):
        variance_sources("x", "fid", runs=one)
    few = pd.DataFrame({"config_id": ["a", "b"], "seed": [0, 1], "fid": [1.0, 2.0]})
    with pytest.raises(AnalysisError, match="no degrees of freedom for the residual"):
        variance_sources("x", "fid", runs=few)
