"""How sure a ranking is (scoring.ranking): the t interval against its
textbook value, the bootstrap probabilities at their known limits, and the
confirmation table's two estimates against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from scoring.ranking import (
    beats,
    best_shares,
    confirmation_table,
    mean_interval,
    rank_table,
    resampled_means,
)


def _trials(scores: dict[str, list[float]], phase: str = "search") -> pd.DataFrame:
    rows = [
        {"config_id": c, "lr": float(i), "seed": s, "outcome": "ok", "fid": v, "phase": phase}
        for i, (c, values) in enumerate(scores.items())
        for s, v in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_mean_interval_is_the_student_t_interval():
    # n = 3: t(0.975, 2) = 4.302653 (tables); mean 2, sd 1
    low, high = mean_interval([1.0, 2.0, 3.0])
    half = 4.302653 * 1.0 / math.sqrt(3)
    assert low == pytest.approx(2 - half, abs=1e-5) and high == pytest.approx(2 + half, abs=1e-5)
    assert all(math.isnan(v) for v in mean_interval([5.0]))  # one seed: no spread known


def test_a_configuration_better_on_every_seed_by_far_is_best_in_every_resample():
    means = resampled_means([[1.0, 1.2, 0.9], [10.0, 10.5, 9.8], [20.0, 21.0, 19.0]])
    shares = best_shares(means, "min")
    assert shares.tolist() == [1.0, 0.0, 0.0]
    assert best_shares(means, "max").tolist() == [0.0, 0.0, 1.0]
    assert beats(means[:, 0], means[:, 1], "min") == 1.0


def test_two_identical_configurations_are_each_best_about_half_the_time():
    same = [3.0, 5.0, 4.0, 6.0]
    shares = best_shares(resampled_means([same, same]), "min")
    assert shares.sum() == pytest.approx(1.0)
    assert shares[0] == pytest.approx(0.5, abs=0.03)
    # exactly tied resamples are split, not given to the first
    assert best_shares(resampled_means([[2.0, 2.0], [2.0, 2.0]]), "min").tolist() == [0.5, 0.5]


def test_rank_table_orders_flags_and_compares_neighbours():
    trials = _trials({"a": [1.0, 2.0, 3.0], "b": [1.5, 2.5, 3.5], "c": [10.0, 10.1, 9.9]})
    table = rank_table(trials, ["lr"], "fid", "min")
    assert table["config_id"].tolist() == ["a", "b", "c"]
    assert table["diff_next"].iloc[0] == pytest.approx(0.5)
    # a's seeds spread (std 1) more than the gap to b (0.5); b's gap to c is wide
    assert table["spread_over_gap"].tolist() == [True, False, False]
    assert table["p_beats_next"].iloc[1] == 1.0 and math.isnan(table["p_beats_next"].iloc[2])
    assert 0.5 < table["p_beats_next"].iloc[0] < 1.0
    low, high = table["diff_next_low"].iloc[0], table["diff_next_high"].iloc[0]
    assert low < 0.5 < high
    # a seed with no value (diverged) is left out of the mean, not counted as 0
    diverged = pd.concat([trials, _trials({"a": [math.nan]})], ignore_index=True)
    assert rank_table(diverged, ["lr"], "fid", "min")["fid_mean"].iloc[0] == pytest.approx(2.0)


def test_one_seed_gives_no_probabilities():
    table = rank_table(_trials({"a": [1.0], "b": [2.0]}), ["lr"], "fid", "min")
    assert table["p_best"].isna().all() and table["diff_next"].iloc[0] == 1.0


def test_confirmation_table_puts_both_estimates_side_by_side():
    # the search ranked b first by luck; the fresh seeds put a first
    search = _trials({"a": [5.0, 6.0], "b": [4.0, 5.0], "c": [9.0, 9.0]})
    confirm = _trials({"a": [5.0, 5.2, 5.1], "b": [7.0, 7.5, 7.2]}, phase="confirm")
    confirm["seed"] += 2
    table = confirmation_table(pd.concat([search, confirm]), ["lr"], "fid", "min")
    assert table["config_id"].tolist() == ["a", "b"]
    assert table["search_rank"].tolist() == [2, 1]
    assert table["search_mean"].tolist() == [5.5, 4.5] and table["search_seeds"].tolist() == [2, 2]
    assert table["confirm_mean"].iloc[0] == pytest.approx(np.mean([5.0, 5.2, 5.1]))
    assert table["confirm_seeds"].tolist() == [3, 3] and table["p_best"].iloc[0] == 1.0
    assert table["confirm_ok_rate"].tolist() == [1.0, 1.0]
    assert confirmation_table(search, ["lr"], "fid", "min").empty  # nothing confirmed
