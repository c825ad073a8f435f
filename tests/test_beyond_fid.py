"""Metrics beyond fid, against their published definitions and independent
computations: fid_inf (Chong and Forsyth 2020), the Vendi score (Friedman
and Dieng 2022), the data-copying test C_T (Meehan et al. 2020), and the
same samples scored in the spaces of classifiers trained with other seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.spaces import classifier_spaces
from datasources import DataError, load_dataset
from scoring.arithmetic import (
    feature_stats,
    fid_inf_sizes,
    fid_infinity,
    frechet_distance,
    intercept_in_inverse_n,
    vendi_score,
)
from scoring.copying import build_cells, ct_score, z_u
from scoring.features import extractor_for
from scoring.registry import evaluate_samples, in_spaces, prepare_reference, split_sampler_metric
from study.tracking.store import find_trial_run
from study.trial.session import LocalSession
from study.trial.trainable import run_trial
from tests.conftest import local_plan
from tests.test_trainable import _store


def test_fid_inf_recovers_the_intercept_of_a_planted_one_over_n_bias():
    sizes = fid_inf_sizes(1000)
    assert sizes[0] == 200 and sizes[-1] == 1000 and len(sizes) == 8
    noise = np.random.default_rng(0).normal(0, 0.01, len(sizes))
    values = [3.5 + 400.0 / n + e for n, e in zip(sizes, noise, strict=True)]
    assert intercept_in_inverse_n(sizes, values) == pytest.approx(3.5, abs=0.1)
    assert fid_inf_sizes(9) == []  # too few samples for a fit


def test_fid_inf_removes_the_finite_sample_bias_of_gaussian_features():
    """Reference statistics of the population itself, samples from a shifted
    Gaussian: the true Frechet distance is |shift|^2; fid at N samples sits
    above it by a bias of order d/N, which the extrapolation removes."""
    d, n = 16, 1000
    gen = torch.Generator().manual_seed(0)
    shift = torch.full((d,), 0.1, dtype=torch.float64)
    true = float(shift @ shift)  # 0.16
    mu, cov = torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)
    errors_n, errors_inf = [], []
    for _ in range(5):
        fake = torch.randn(n, d, generator=gen, dtype=torch.float64) + shift
        at_n = frechet_distance(mu, cov, *feature_stats(fake))
        errors_n.append(at_n - true)
        errors_inf.append(fid_infinity(mu, cov, fake) - true)
    assert np.mean(errors_n) > 0.05  # the bias, about d(d+1)/(4N) ~ 0.07
    assert abs(np.mean(errors_inf)) < np.mean(errors_n) / 3


def test_vendi_counts_distinct_samples_and_matches_the_eigenvalue_definition():
    assert vendi_score(torch.eye(6)) == pytest.approx(6)
    assert vendi_score(torch.ones(5, 3)) == pytest.approx(1)
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    unit = x / x.norm(dim=1, keepdim=True)
    eig = torch.linalg.eigvalsh(unit @ unit.T / len(x)).clamp(min=0)  # K/n, n x n: the primal form
    eig = eig[eig > 1e-12]
    assert vendi_score(x) == pytest.approx(float(torch.exp(-(eig * eig.log()).sum())), rel=1e-9)
    from vendi_score import vendi  # the package's own number, a zero row included

    x[3] = 0
    assert vendi_score(x) == vendi.score_dual(x.numpy(), q=1, normalize=True)


def test_z_u_is_the_pair_count_z_scored_as_the_authors_do():
    rng = np.random.default_rng(2)
    a, b = rng.random(30), rng.random(45)
    u = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
    m, n = len(a), len(b)
    assert z_u(a, b) == pytest.approx((u - (m * n / 2 - 0.5)) / np.sqrt(m * n * (m + n + 1) / 12))
    from scipy.stats import mannwhitneyu  # the authors' code calls it; ties included here

    a, b = np.round(a, 1), np.round(b, 1)
    u = mannwhitneyu(a, b, alternative="less").statistic
    assert z_u(a, b) == (u - (m * n / 2 - 0.5)) / np.sqrt(m * n * (m + n + 1) / 12)


def test_ct_score_is_strongly_negative_for_copies_and_near_zero_for_held_out_images():
    data = load_dataset("mnist5k")
    ext = extractor_for("mnist5k")
    train, test = ext.features(data.train_x), ext.features(data.test_x)
    cells = build_cells(train, test[:500])
    assert ct_score(cells, train[:500]) < -5  # copies: at distance 0 from the training set
    assert abs(ct_score(cells, test[500:])) < 2  # fresh draws of the data
    assert np.isnan(ct_score(cells, test[500:510]))  # no cell holds 20 samples


def test_copy_cells_assign_as_kmeans_does_and_are_read_from_the_disk_cache(tmp_path, monkeypatch):
    """A cell is the nearest k-means centre (scikit-learn's predict); the
    registry's cells are built once per classifier and read back whole."""
    from sklearn.cluster import KMeans

    from scoring import registry

    monkeypatch.setenv("GENSTUDY_CACHE", str(tmp_path))  # a cache of its own to spoil
    registry.copy_cells.cache_clear()

    data = load_dataset("digits")
    ext = extractor_for("digits")
    train, test = ext.features(data.train_x), ext.features(data.test_x)
    cells = build_cells(train, test[:200])
    kmeans = KMeans(n_clusters=len(cells.train), n_init=3, random_state=0)
    predicted = kmeans.fit(train.double().numpy()).predict(test.double().numpy())
    assert (cells.assign(test) == predicted).all()
    built = registry.copy_cells("digits")
    (path,) = tmp_path.glob(f"cells-digits-*-{ext.weights_sha256[:16]}-*-cpu.pt")
    registry.copy_cells.cache_clear()  # as in a new process, which must not build them

    def no_build(*_):
        raise AssertionError("built again")

    monkeypatch.setattr(registry, "build_cells", no_build)
    again = registry.copy_cells("digits")
    assert all(torch.equal(a, b) for a, b in zip(built.train, again.train, strict=True))
    assert (again.heldout_dist == built.heldout_dist).all()
    assert ct_score(again, test[200:]) == ct_score(built, test[200:])
    path.write_bytes(b"not a tensor file")
    registry.copy_cells.cache_clear()
    with pytest.raises(DataError, match="unreadable.*delete the file"):
        registry.copy_cells("digits")
    registry.copy_cells.cache_clear()  # later tests read the machine's cache


def test_the_registry_scores_the_new_metrics_on_images():
    data = load_dataset("mnist5k")
    copies = evaluate_samples(data.train_x[:1000], "mnist5k")
    assert copies["ct_score"] < -5
    assert copies["fid_inf"] < copies["fid"]  # real data: only the bias is left to remove
    assert 5 < copies["vendi"] < 50  # ten classes, a few styles each
    one = evaluate_samples(data.train_x[:1].repeat(500, 1, 1, 1), "mnist5k")
    assert one["vendi"] == pytest.approx(1, abs=1e-6)
    assert split_sampler_metric("fid_inf") is None  # not fid of a sampler 'inf'
    assert split_sampler_metric("fid_inf_ddim10") == ("fid_inf", "ddim10")
    assert split_sampler_metric("vendi_ddpm") == ("vendi", "ddpm")


def test_samples_scored_in_other_classifiers_spaces():
    """in_spaces against fid computed by hand in the seed-1 classifier's
    space; the driver ships that classifier to the trials."""
    data = load_dataset("digits")
    shipped = prepare_reference("digits", spaces=2)
    assert "classifier-digits-v2-seed1.pt" in shipped
    samples = (data.train_x[:300] + 0.2 * torch.rand(300, 1, 8, 8)).clamp(0, 1)
    out = in_spaces(samples, "digits", 2)
    other = extractor_for("digits", "cpu", 1)
    assert other.weights_sha256 != extractor_for("digits").weights_sha256
    by_hand = frechet_distance(
        *feature_stats(other.features(data.test_x)), *feature_stats(other.features(samples))
    )
    assert out["fid_classifier1"] == pytest.approx(by_hand)
    first = evaluate_samples(samples, "digits")["fid"]
    assert out["fid_classifiers_mean"] == pytest.approx((first + by_hand) / 2)
    assert out["fid_classifiers_std"] == pytest.approx(abs(first - by_hand) / np.sqrt(2))
    assert {"modes_covered_classifiers_mean", "modes_covered_classifier1"} <= set(out)


def test_a_trial_logs_the_spread_over_classifier_spaces(tmp_path):
    client, exp, parent = _store(tmp_path, "spaces")
    uri = client.tracking_uri
    plan = local_plan("gan_stability", tmp_path, uri, exp, parent, {"eval_classifiers": "2"})
    assert plan.classifier_spaces == 2
    run_trial({}, plan, "search", LocalSession("spaces-trial"))
    run = find_trial_run(client, exp, parent, "spaces-trial")
    m = run.data.metrics
    assert run.info.status == "FINISHED"
    fids = [m["fid"], m["fid_classifier1"]]
    assert m["fid_classifiers_mean"] == pytest.approx(np.mean(fids))
    assert m["fid_classifiers_std"] == pytest.approx(np.std(fids, ddof=1))
    history = client.get_metric_history(run.info.run_id, "fid_classifiers_std")
    assert len(history) == 1  # the final evaluation only
    assert {"fid_inf", "vendi", "ct_score"} <= set(m)


def test_classifier_spaces_tells_how_far_the_ranking_moves():
    runs = pd.DataFrame({
        "config_id": ["a", "a", "b", "b", "c", "c"],
        "fid": [10.0, 12.0, 20.0, 22.0, 30.0, 32.0],
        "fid_classifier1": [14.0, 14.0, 12.0, 12.0, 40.0, 40.0],  # a and b swap
        "fid_classifier2": [11.0, 11.0, 21.0, 21.0, 31.0, 31.0],  # the same order
    })  # fmt: skip
    table = classifier_spaces(runs)
    assert list(table["space 0"]) == [11.0, 21.0, 31.0]
    assert list(table["rank 1"]) == [2.0, 1.0, 3.0]
    spaces = table.attrs["spaces"].set_index("space")
    assert spaces.loc[2, "kendall_tau"] == pytest.approx(1.0)
    assert spaces.loc[1, "kendall_tau"] == pytest.approx(1 / 3)
    assert spaces.loc[1, "same_best"] == False and spaces.loc[2, "same_best"] == True  # noqa: E712
    assert classifier_spaces(runs[["config_id", "fid"]]) is None
