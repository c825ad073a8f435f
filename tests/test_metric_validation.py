"""Our metrics against independent implementations and published numbers."""

import pytest
import torch
from torchmetrics.image.fid import _compute_fid
from torchmetrics.image.kid import poly_mmd

from scoring.arithmetic import density_coverage, frechet_distance, kid, prdc, precision_recall


def test_fid_agrees_with_torchmetrics_on_the_same_features():
    torch.manual_seed(0)
    a, b = torch.randn(500, 16).double(), (torch.randn(500, 16) * 1.3 + 0.2).double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        float(_compute_fid(mu1, s1, mu2, s2)), rel=1e-8
    )


def test_kid_agrees_with_torchmetrics_poly_mmd():
    torch.manual_seed(0)
    real, fake = torch.randn(300, 32).double(), (torch.randn(300, 32) + 0.5).double()
    # one subset of everything: no sampling in either implementation
    assert kid(real, fake) == pytest.approx(float(poly_mmd(real, fake)), rel=1e-9)
    # subsets: the mean of poly_mmd over the same subsets we draw
    gen = torch.Generator().manual_seed(3)
    expected = []
    for _ in range(5):
        x = real[torch.randperm(300, generator=gen)[:100]]
        y = fake[torch.randperm(300, generator=gen)[:100]]
        expected.append(float(poly_mmd(x, y)))
    assert kid(real, fake, subsets=5, subset_size=100, seed=3) == pytest.approx(
        sum(expected) / 5, rel=1e-9
    )
    # two draws of one distribution score near 0 (the unbiased estimate may dip
    # below), far under two distributions apart
    other = torch.randn(300, 32).double()
    assert abs(kid(real, other)) < kid(real, fake) / 20


def test_precision_recall_density_coverage_on_hand_made_sets():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    # k=1 radii: every real point's nearest neighbour is 1 away
    inside = torch.tensor([[0.5], [2.5]])
    far = torch.tensor([[10.0], [11.0]])
    pr = precision_recall(real, torch.cat([inside, far]), k=1)
    assert pr["precision"] == 0.5  # two of four fakes are inside the real manifold
    dc = density_coverage(real, inside, k=1)
    # 0.5 lies in the balls of 0 and 1; 2.5 in those of 2 and 3 -> density 4/(1*2)
    assert dc == {"density": 2.0, "coverage": 1.0}
    assert density_coverage(real, far, k=1) == {"density": 0.0, "coverage": 0.0}
    # strict '<': a point exactly on a ball's boundary is outside it
    assert density_coverage(real, torch.tensor([[4.0]]), k=1)["density"] == 0.0


def test_prdc_self_test_of_the_authors():
    """Naeem et al.'s self-test (prdc README): two independent sets of 10,000
    points from N(0, I) in 1000 dimensions, k = 5, give precision 0.477,
    recall 0.471, density 1.056, coverage 0.974. Precision, recall and
    coverage agree within 0.02 on any draw; density moves by about 0.06
    between draws of the two sets (1.029, 1.059 and 0.946 on three draws),
    so it is held to that."""
    torch.manual_seed(0)
    real, fake = torch.randn(10_000, 1000), torch.randn(10_000, 1000)
    got = prdc(real, fake, k_pr=5, k_dc=5)
    published = {"precision": 0.477, "recall": 0.471, "density": 1.056, "coverage": 0.974}
    tolerance = {"precision": 0.02, "recall": 0.02, "density": 0.06, "coverage": 0.02}
    for key, value in published.items():
        assert got[key] == pytest.approx(value, abs=tolerance[key]), (key, got[key])


def test_prdc_in_one_pass_equals_the_definitions_on_whole_distance_matrices():
    """prdc shares its distance passes between the four metrics and walks
    them in chunks; the definitions on full matrices must give the same."""
    torch.manual_seed(1)
    real, fake = torch.randn(300, 8).double(), (torch.randn(250, 8) * 1.2 + 0.3).double()

    def radii(x: torch.Tensor, k: int) -> torch.Tensor:
        return torch.cdist(x, x).sort(dim=1).values[:, k]

    d = torch.cdist(fake, real)  # (fake, real)
    r3, r5, f3 = radii(real, 3), radii(real, 5), radii(fake, 3)
    expected = {
        "precision": (d < r3[None, :]).any(1).double().mean().item(),
        "recall": (f3[None, :] > d.T).any(1).double().mean().item(),
        "density": (d < r5[None, :]).sum().item() / (5 * len(fake)),
        "coverage": (d.min(0).values < r5).double().mean().item(),
    }
    got = prdc(real, fake, k_pr=3, k_dc=5, chunk=64)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1
