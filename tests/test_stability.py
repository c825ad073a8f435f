"""Stability over time, against definitions and independent computations:
hopping against the real data's noise floor, when a run collapsed and
whether it recovered, sigma0 against an SVD, the discriminator's
memorisation gap, Kaplan-Meier curves worked by hand, early-warning lead
times planted in synthetic traces, and one real GAN trial's course as MLflow
holds it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from analysis.runs import AnalysisError
from analysis.survival import survival_table
from analysis.warning import warning_table
from models.family import GenerativeFamily
from scoring.modes import ModeCounts, ModeTrack, noise_floor
from scoring.outcomes import Timeline, collapse_reason, final_outcome
from scoring.spectral import TopSingular, as_matrix

N = 500  # samples an evaluation scores
K = 10


def _counts(shares: np.ndarray, rng: np.random.Generator) -> ModeCounts:
    """A generator's samples: N draws from a class mix."""
    counts = np.bincount(rng.choice(K, N, p=shares / shares.sum()), minlength=K)
    return ModeCounts(counts, N / (4 * K), N)


def _track(mixes: list[np.ndarray]) -> ModeTrack:
    rng = np.random.default_rng(0)
    track = ModeTrack(floor=noise_floor(np.arange(N * 2) % K, K, N))
    for shares in mixes:
        track.step(_counts(shares, rng))
    return track


def test_a_generator_cycling_between_classes_hops_and_a_stable_mix_does_not():
    cycling = [np.eye(K)[[i % K, (i + 1) % K, (i + 2) % K]].sum(0) for i in range(0, 24, 3)]
    stable = [np.ones(K)] * 8
    assert _track(cycling).hopping
    track = _track(stable)
    assert not track.hopping and not any(track.hops)
    # learning: classes only come, none goes: movement without hops
    learning = [np.r_[np.ones(k), np.zeros(K - k)] for k in (2, 4, 6, 8, 10, 10)]
    assert not _track(learning).hopping


def test_mode_dynamics_count_lost_regained_and_ever_covered():
    rng = np.random.default_rng(1)
    track = ModeTrack(floor=0.01)
    first = track.step(_counts(np.r_[np.ones(5), np.zeros(5)], rng))
    assert first["modes_ever"] == 5 and "modes_lost" not in first
    second = track.step(_counts(np.r_[np.zeros(3), np.ones(4), np.zeros(3)], rng))
    assert (second["modes_lost"], second["modes_regained"], second["modes_ever"]) == (3, 0, 7)
    third = track.step(_counts(np.r_[np.ones(2), np.zeros(8)], rng))
    assert (third["modes_lost"], third["modes_regained"], third["modes_ever"]) == (4, 2, 7)
    # JSD base 2 of disjoint histograms is 1
    assert second["mode_jsd"] < third["mode_jsd"] <= 1.0


def _timeline(covered: list[int]) -> Timeline:
    timeline = Timeline()
    for epoch, c in enumerate(covered, start=1):
        metrics = {"modes_covered": float(c)}
        timeline.add(epoch, collapse_reason(GenerativeFamily.collapse_rules, metrics, K))
    return timeline


def test_collapse_epoch_recovery_and_never_learning_are_told_apart():
    learned_then_lost = _timeline([8, 9, 3, 2])
    assert learned_then_lost.collapse_epoch == 3 and learned_then_lost.learned
    assert not learned_then_lost.recovered
    outcome, reason = final_outcome(None, learned_then_lost)
    assert outcome == "collapsed" and "learned, then collapsed at epoch 3" in reason

    recovered = _timeline([8, 2, 3, 9])
    assert recovered.collapse_epoch == 2 and recovered.recovered
    assert final_outcome(None, recovered) == ("ok", "collapsed at epoch 2, recovered by epoch 4")

    learning = _timeline([1, 3, 6, 9])  # below the rule only while still learning
    assert learning.collapse_epoch is None and final_outcome(None, learning) == ("ok", "")

    never = _timeline([1, 2, 1])
    assert never.collapse_epoch == 1 and not never.learned
    assert "never learned" in final_outcome(None, never)[1]
    clean = _timeline([6, 9, 10])
    assert clean.collapse_epoch is None and final_outcome(None, clean) == ("ok", "")
    assert final_outcome("non-finite d_loss", clean)[0] == "diverged"


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Linear(128, 64),
        lambda: nn.Linear(64, 256),
        lambda: nn.Conv2d(16, 32, 4),
        lambda: nn.ConvTranspose2d(32, 16, 4),
    ],
    ids=["linear", "linear wide", "conv", "conv transpose"],
)
def test_sigma0_by_power_iteration_matches_the_matrix_two_norm(make):
    torch.manual_seed(0)  # a fresh layer's top two singular values can be within 1 %
    module = make()
    tracker = TopSingular()
    sigma, name = tracker.top("net", nn.Sequential(module))
    w = as_matrix(module, module.weight).detach()
    assert name == "0.weight"
    assert sigma == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-4)
    for move in (0.01, 0.5):  # training moves the weight: the warm vector follows it
        with torch.no_grad():
            module.weight.add_(move * module.weight.std() * torch.randn_like(module.weight))
        w = as_matrix(module, module.weight).detach()
        warm, _ = tracker.top("net", nn.Sequential(module))
        assert warm == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-3)
        if move == 0.01:
            assert tracker.svds == 1  # a small move converged by power iteration alone


def test_a_discriminator_that_memorised_a_tiny_set_shows_a_large_gap():
    """D trained to call a set "real" and other training digits "fake": on 64
    images it memorises them (held-out digits look like the fakes); on 2000
    it can only learn the digits' distribution, which held-out ones share."""
    from datasources import load_dataset
    from models.gan.model import GAN, GANConfig

    data = load_dataset("mnist5k")

    def gap(n_real: int) -> float:
        torch.manual_seed(0)
        gan = GAN(GANConfig(batch_size=64), data.train_x[:n_real], data.test_x)
        others = data.train_x[2000:4000]
        for _ in range(150):
            real = gan.x[torch.randint(len(gan.x), (64,))]
            fake = others[torch.randint(len(others), (64,))]
            loss = gan.loss.d(gan.D(real, None), gan.D(fake, None))
            gan.opt_d.zero_grad()
            loss.backward()
            gan.opt_d.step()
        return gan.evaluate()["d_memorisation_gap"]

    assert gap(64) > 0.5
    assert abs(gap(2000)) < 0.2


def _runs(rows: list[tuple]) -> pd.DataFrame:
    runs = pd.DataFrame(rows, columns=["run_id", "lr", "collapse_epoch", "ended_epoch"])
    runs.attrs["params"] = ["lr"]
    return runs


def test_survival_matches_a_kaplan_meier_curve_worked_by_hand():
    nan = np.nan
    runs = _runs([
        ("a1", 0.1, 2, 8), ("a2", 0.1, 3, 8), ("a3", 0.1, nan, 3), ("a4", 0.1, 5, 8),
        ("b1", 0.001, nan, 8), ("b2", 0.001, nan, 8), ("b3", 0.001, 6, 8),
    ])  # fmt: skip
    table = survival_table(runs, "lr")
    fast = table[table["lr"] == "0.1"].set_index("epoch")["survival"]
    # at 2: 4 at risk, 1 event -> 3/4; at 3: 3 at risk, 1 event (and one
    # censored) -> 3/4 * 2/3; at 5: 1 at risk, 1 event -> 0
    assert fast.loc[0] == 1.0 and fast.loc[2] == pytest.approx(0.75)
    assert fast.loc[3] == pytest.approx(0.5) and fast.loc[5] == pytest.approx(0.0)
    slow = table[table["lr"] == "0.001"].set_index("epoch")["survival"]
    assert slow.loc[6] == pytest.approx(2 / 3) and slow.loc[8] == pytest.approx(2 / 3)
    band = table.dropna(subset=["low"])
    assert (
        (band["low"] <= band["survival"] + 1e-12) & (band["survival"] <= band["high"] + 1e-12)
    ).all()
    (p,) = table.attrs["logrank"]["p_value"]
    assert 0 < p < 0.2  # the fast group collapses sooner
    with pytest.raises(AnalysisError, match="setting 'beta9' is not one of the study's"):
        survival_table(runs, "beta9")


def test_a_numeric_setting_with_many_values_is_binned_in_log_space():
    lrs = [1e-4, 2e-4, 1e-3, 2e-3, 1e-2, 2e-2]
    runs = _runs([(f"r{i}", lr, np.nan, 8) for i, lr in enumerate(lrs)])
    groups = survival_table(runs, "lr", bins=3)["lr"].cat.categories
    assert len(groups) == 3 and groups[0].startswith("0.0001")


def test_early_warning_finds_the_lead_time_planted_in_synthetic_traces():
    """sigma0_g triples two epochs before each collapse; the stable seeds'
    stays flat; one false alarm among the stable seeds."""
    runs, history = [], []
    for i in range(6):
        collapse = 7.0 if i < 3 else np.nan
        runs.append((f"r{i}", 0.1, collapse, 10))
        for epoch in range(1, 11):
            jumped = (i < 3 and epoch >= 5) or (i == 5 and epoch >= 9)
            history.append((f"r{i}", "sigma0_g", epoch, 3.0 if jumped else 1.0))
    table = warning_table(
        _runs(runs), pd.DataFrame(history, columns=["run_id", "metric", "epoch", "value"])
    )
    row = table[(table["indicator"] == "sigma0_g growth") & (table["threshold"] == 2.0)].iloc[0]
    assert row["lead_epochs"] == 2 and row["recall"] == 1.0
    assert row["precision"] == pytest.approx(3 / 4)
    assert set(table["indicator"]) == {"sigma0_g growth"}  # only what was logged


def test_a_gan_trial_records_its_course_in_mlflow(tmp_path):
    """One real smoke GAN trial, in process: every evaluation logs the mode
    shares (summing to 1 on images), their dynamics, D's accuracies, sigma0
    with the weight that holds it, and the epoch's gradient norms; the run
    ends with its course as tags, which load_runs types and load_modes and
    survival read back."""
    from analysis import load_modes, load_runs, survival
    from study.trial.session import LocalSession
    from study.trial.trainable import run_trial
    from tests.test_trainable import _gan_context, _store

    client, exp, parent = _store(tmp_path, "gan_stability")
    settings = {"arch": "mlp", "epochs": "3", "eval_every": "1"}
    run_trial(
        {}, _gan_context(tmp_path, client, exp, parent, settings), "search", LocalSession("c")
    )
    runs = load_runs("gan_stability", client.tracking_uri)
    (run,) = runs.itertuples()
    assert run.ended_epoch == 3 and isinstance(run.hopping, bool)
    assert run.collapse_epoch in (1, 2, 3) or np.isnan(run.collapse_epoch)
    tags = client.get_run(run.run_id).data.tags
    assert tags["sigma0_g_layer"].endswith("weight") and tags["sigma0_d_layer"].endswith("weight")
    history = {
        k: [m.step for m in client.get_metric_history(run.run_id, k)]
        for k in ("mode_share_0", "modes_ever", "d_acc_real", "sigma0_g", "grad_norm_d", "mode_jsd")
    }
    assert history == {**dict.fromkeys(history, [1, 2, 3]), "mode_jsd": [2, 3]}
    modes = load_modes("gan_stability", client.tracking_uri, runs=runs)
    assert sorted(modes["mode"].unique()) == list(range(10))
    assert np.allclose(modes.groupby("epoch")["share"].sum(), 1.0)
    curve = survival("gan_stability", "lr_g", client.tracking_uri, runs=runs)
    assert curve["survival"].iloc[0] == 1.0 and curve["at_risk"].iloc[0] == 1


def test_many_modes_go_to_an_artifact_that_load_modes_reads(tmp_path):
    """Stacked MNIST's 1000 modes: no mode_share metrics, the histogram of
    every evaluation in mode_shares.json, read back as the same tidy frame."""
    from analysis import load_modes
    from study.tracking.store import SHARES_ARTIFACT
    from study.tracking.trial_run import TrialRun
    from study.trial.course import Course
    from tests.test_trainable import _store

    client, exp, parent = _store(tmp_path, "gan_stability")
    run = TrialRun.open(
        client, experiment_id=exp, parent_run_id=parent, trial_id="t", name="seed=0",
        params={"seed": 0, "config_id": "c", "family": "gan"}, tags={"trial_id": "t"},
    )  # fmt: skip
    course = Course(seed=0)
    course.modes = ModeTrack(floor=0.01)  # the floor of stacked MNIST, not computed here
    rng = np.random.default_rng(0)
    shown = []
    for epoch in (1, 2):
        counts = np.bincount(rng.integers(0, 1000, 2000), minlength=1000)
        metrics = course.modes_seen(epoch, ModeCounts(counts, 1.0, 2000), "stacked_mnist", "cpu")
        assert not [k for k in metrics if k.startswith("mode_share")] and "modes_ever" in metrics
        run.log_json({"modes": 1000, "epochs": course.shares}, SHARES_ARTIFACT)
        shown.append(counts / 2000)
    run.finish("ok", "", tags=course.tags(2))
    modes = load_modes("gan_stability", client.tracking_uri)
    assert len(modes) == 2000 and set(modes["epoch"]) == {1, 2}
    for epoch, shares in zip((1, 2), shown, strict=True):
        got = modes[modes["epoch"] == epoch].sort_values("mode")["share"].to_numpy()
        assert np.allclose(got, shares)
