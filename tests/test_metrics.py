import math

import numpy as np
import pytest
import scipy.linalg
import torch

from datasources import load_dataset
from models.family import GenerativeFamily
from scoring.arithmetic import class_coverage, feature_stats, frechet_distance, mixture_quality
from scoring.features import extractor_for
from scoring.outcomes import collapse_reason
from scoring.registry import evaluate_samples, provenance


def test_frechet_distance_matches_closed_form_for_gaussians():
    # diagonal covariances: d = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    mu1, mu2 = torch.zeros(3), torch.tensor([1.0, 2.0, 2.0])
    expected = 9.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected)


def test_frechet_distance_matches_scipy_sqrtm_on_random_covariances():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 20)), rng.standard_normal((20, 20))
    s1, s2 = x @ x.T / 20, y @ y.T / 20 + np.eye(20) * 0.1
    m1, m2 = rng.standard_normal(20), rng.standard_normal(20)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    got = frechet_distance(*(torch.from_numpy(t) for t in (m1, s1, m2, s2)))
    assert got == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(
        torch.from_numpy(m1), torch.from_numpy(s1), torch.from_numpy(m1), torch.from_numpy(s1)
    ) == pytest.approx(0, abs=1e-6)


def test_class_coverage_counts_only_a_quarter_share_or_more():
    uniform = torch.arange(1000) % 10
    assert class_coverage(uniform, 10) == {"modes_covered": 10.0, "mode_kl": pytest.approx(0.0)}
    ones = torch.ones(1000, dtype=torch.long)
    assert class_coverage(ones, 10) == {
        "modes_covered": 1.0,
        "mode_kl": pytest.approx(math.log(10)),
    }
    # 20 stray predictions per class (2%) are below the 1/(4K) = 2.5% share
    mostly_ones = torch.cat([torch.ones(820, dtype=torch.long), torch.arange(180) % 9 + 2])
    assert class_coverage(mostly_ones, 10)["modes_covered"] == 1.0


@pytest.mark.parametrize(("name", "floor"), [("ring", 0.0014), ("grid", 0.005)])
def test_mixture_metrics_of_perfect_and_one_mode_samplers(name, floor):
    d = load_dataset(name)
    perfect = mixture_quality(d.test_x, d.modes, d.mode_std)  # real held-out points
    assert perfect["modes_captured"] == d.n_classes
    assert perfect["hq_fraction"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)
    assert perfect["reverse_kl"] < 4 * floor
    one = d.modes[3] + d.mode_std * torch.randn(2500, 2)
    single = mixture_quality(one, d.modes, d.mode_std)
    assert single["modes_captured"] == 1 and single["reverse_kl"] == pytest.approx(
        math.log(d.n_classes)
    )
    rules = GenerativeFamily.collapse_rules
    assert collapse_reason(rules, single, d.n_classes) == f"samples cover 1 of {d.n_classes} modes"
    assert collapse_reason(rules, perfect, d.n_classes) is None
    far = mixture_quality(torch.full((100, 2), 50.0), d.modes, d.mode_std)
    assert far["hq_fraction"] == 0 and far["modes_captured"] == 0


def test_classifier_is_accurate_enough_for_mode_counting():
    ext = extractor_for("mnist5k")
    data = load_dataset("mnist5k")
    acc = (ext.predict(data.test_x) == data.test_y).float().mean().item()
    assert acc >= 0.95 and acc == pytest.approx(ext.accuracy, abs=1e-6)
    assert len(ext.weights_sha256) == 64
    info = provenance("mnist5k")
    assert info["fid_weights_sha256"] == ext.weights_sha256 and info["fid_n_real"] == "1000"


def test_fid_ranks_held_out_real_far_below_noise_and_blur():
    data = load_dataset("mnist5k")
    real = evaluate_samples(data.train_x[:1000], "mnist5k")
    noise = evaluate_samples(torch.rand(1000, 1, 28, 28), "mnist5k")
    blurred = torch.nn.functional.avg_pool2d(data.train_x[:1000], 5, 1, 2)
    blur = evaluate_samples(blurred, "mnist5k")
    assert real["fid"] * 20 < noise["fid"] and real["fid"] < blur["fid"] < noise["fid"]
    assert real["modes_covered"] == 10 and real["mode_kl"] < 0.05
    ones = data.train_x[data.train_y == 1][:400]
    assert evaluate_samples(ones, "mnist5k")["modes_covered"] == 1
    # feature statistics really are those of the extractor
    mu, _ = feature_stats(extractor_for("mnist5k").features(data.test_x))
    assert mu.dtype == torch.float64


def test_evaluate_samples_accepts_numpy_points_and_checks_shapes():
    ring = load_dataset("ring")
    out = evaluate_samples(ring.test_x.numpy(), "ring")
    assert set(out) == {"modes_captured", "hq_fraction", "reverse_kl"}
    with pytest.raises(ValueError, match="do not match"):
        evaluate_samples(torch.rand(10, 3), "ring")


def test_stacked_mnist_counts_a_mode_with_one_sample_per_the_protocol():
    data = load_dataset("stacked_mnist")
    out = evaluate_samples(data.test_x[:500], "stacked_mnist")
    # 500 real triples hit about 390 distinct modes; a share threshold would count 0
    ext = extractor_for("stacked_mnist")
    distinct = len(torch.unique(ext.predict(data.test_x[:500])))
    assert out["modes_covered"] == distinct > 300
    assert set(out) >= {"fid", "kid", "precision", "recall", "density", "coverage", "mode_kl"}


def test_real_images_score_near_perfect_and_noise_scores_zero_on_every_metric():
    data = load_dataset("mnist5k")
    real = evaluate_samples(data.train_x[:1000], "mnist5k")
    noise = evaluate_samples(torch.rand(1000, 1, 28, 28), "mnist5k")
    assert abs(real["kid"]) < 1 < noise["kid"]
    for key in ("precision", "recall", "coverage"):
        assert real[key] > 0.8 and noise[key] == 0.0, key
    assert 0.8 < real["density"] < 1.2 and noise["density"] == 0.0


def test_inception_fid_reads_a_local_weights_file_and_never_downloads(tmp_path, monkeypatch):
    import torchvision

    import scoring.features as ex
    from scoring.features import InceptionError, inception_extractor

    with pytest.raises(InceptionError, match="does not exist"):
        inception_extractor(str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(1)}, bad)
    with pytest.raises(InceptionError, match="not an Inception v3 state dict"):
        inception_extractor(str(bad))
    weights = tmp_path / "inception.pth"
    torch.manual_seed(0)
    # init_weights=False: torch's default init (torchvision's truncated normal takes 10 s)
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(net.state_dict(), weights)
    monkeypatch.setattr(ex, "INCEPTION_SIZE", 75)  # the smallest input it takes: fast on CPU
    data = load_dataset("digits")
    out = evaluate_samples(data.train_x[:50], "digits", inception_weights=str(weights))
    noise = evaluate_samples(torch.rand(50, 1, 8, 8), "digits", inception_weights=str(weights))
    assert 0 <= out["fid_inception"] < noise["fid_inception"]
    assert inception_extractor(str(weights)).features(data.test_x[:4]).shape == (4, 2048)
