"""Aggregates that survive few runs (scoring/few_runs.py) against hand
computations of rliable's definitions, the seeds-needed power analysis
against a simulation, and the confirmation table and lines that show them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from scoring.few_runs import (
    improvement_interval,
    iqm,
    iqm_interval,
    probability_of_improvement,
    profile,
    seeds_needed,
)
from scoring.ranking import confirmation_table
from study.runner.summary import confirmation_lines, format_confirmation
from tests.test_ranking import _trials


def test_iqm_is_the_mean_of_the_middle_half():
    # 8 values: the 2 lowest and 2 highest are cut, the middle 4 averaged
    assert iqm([100, 1, 2, 3, 4, 5, 6, -50]) == pytest.approx(np.mean([2, 3, 4, 5]))
    assert iqm([1.0, 2.0, 9.0]) == pytest.approx(4.0)  # under 4 values nothing is cut
    low, high = iqm_interval([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    assert low < iqm(range(1, 9)) < high and low >= 1 and high <= 8
    assert all(math.isnan(v) for v in iqm_interval([3.0]))


def test_probability_of_improvement_counts_pairs_and_halves_ties():
    # fid, lower is better: of the 2 x 3 pairs x wins 4, ties 1, loses 1
    x, y = [1.0, 3.0], [2.0, 3.0, 0.5]
    wins = sum((a < b) + 0.5 * (a == b) for a in x for b in y)
    assert probability_of_improvement(x, y, "min") == pytest.approx(wins / 6)
    assert probability_of_improvement(x, y, "max") == pytest.approx(1 - wins / 6)
    # the Mann-Whitney U statistic over nx * ny, as rliable computes it
    u = stats.mannwhitneyu(np.negative(x), np.negative(y), alternative="greater").statistic
    assert probability_of_improvement(x, y, "min") == pytest.approx(u / 6)
    low, high = improvement_interval([1.0, 1.1, 1.2], [5.0, 5.1, 5.2], "min")
    assert low == high == 1.0  # every resample: x better on every pair


def test_a_performance_profile_is_the_share_of_seeds_at_or_under_each_threshold():
    share, low, high = profile([10.0, 20.0, 30.0, 40.0], [5, 20, 35, 50], "min")
    assert share.tolist() == [0.0, 0.5, 0.75, 1.0]
    assert (low <= share).all() and (share <= high).all() and high[0] == 0.0


def test_seeds_needed_gives_the_power_asked_for_in_a_simulation():
    """Means 1 apart, sd 1 each: n per group from the exact noncentral t;
    10,000 simulated Welch tests at that n reject about 80% of the time, and
    three seeds fewer clearly less."""
    n = seeds_needed([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    assert n == 17  # textbook: 2 (1.96 + 0.84)^2 = 15.7 by the normal limit, a little more by t
    rng = np.random.default_rng(0)

    def power(m: int) -> float:
        a, b = rng.normal(0, 1, (10_000, m)), rng.normal(1, 1, (10_000, m))
        return float((stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < 0.05).mean())

    assert power(n) == pytest.approx(0.8, abs=0.02) and power(n - 3) < 0.76
    assert seeds_needed([1.0, 2.0], [1.0, 2.0]) is None  # equal means: no number does it


def test_the_confirmation_shows_improvement_and_the_seeds_a_decision_needs():
    search = _trials({"a": [5.0, 6.0], "b": [4.0, 5.0]})
    confirm = _trials({"a": [5.0, 5.6, 5.2, 4.9], "b": [5.5, 6.5, 5.9, 5.0]}, phase="confirm")
    table = confirmation_table(pd.concat([search, confirm]), ["lr"], "fid", "min")
    a, b = [5.0, 5.6, 5.2, 4.9], [5.5, 6.5, 5.9, 5.0]
    improves = probability_of_improvement(a, b, "min")
    assert table["p_improves_next"].iloc[0] == pytest.approx(improves)
    assert table["confirm_iqm"].iloc[0] == pytest.approx(iqm(a))
    assert table["seeds_needed_next"].iloc[0] == seeds_needed(a, b)
    shown = format_confirmation(table, ("lr",), "fid")
    assert "P(improves next)" in shown and "IQM" in shown
    lines = confirmation_lines(table)
    needed = next(line for line in lines if line.startswith("Telling #1 from #2"))
    assert f"takes {seeds_needed(a, b)} seeds each" in needed and "they had 4 and 4" in needed


def test_the_analysis_functions_give_the_same_numbers_per_configuration():
    from analysis import AnalysisError, performance_profiles
    from analysis import iqm as iqm_of
    from analysis import probability_of_improvement as improvement_of

    a, b = [5.0, 5.6, 5.2, 4.9, 9.0], [5.5, 6.5, 5.9, 5.0, 5.8]
    runs = _trials({"a": a, "b": b})
    table = iqm_of(runs, "fid", "min")
    assert table["config_id"].tolist() == ["a", "b"]  # a's outlier does not move its IQM
    assert table["iqm"].tolist() == pytest.approx([iqm(a), iqm(b)])
    assert table.loc[0, "mean"] > table.loc[1, "mean"]  # while the mean ranks a second
    p = improvement_of(runs, "a", "b", "fid", "min")
    assert p["p"] == pytest.approx(probability_of_improvement(a, b, "min")) and p["seeds_x"] == 5
    assert p["low"] <= p["p"] <= p["high"]
    profiles = performance_profiles(runs, "fid", "min", thresholds=[5.0, 6.0])
    assert profiles.set_index(["config_id", "threshold"])["share"].to_dict() == {
        ("a", 5.0): 0.4,
        ("a", 6.0): 0.8,
        ("b", 5.0): 0.2,
        ("b", 6.0): 0.8,
    }
    with pytest.raises(AnalysisError, match="configuration 'zz' has no run"):
        improvement_of(runs, "a", "zz", "fid", "min")
