"""The learned prior over discrete codes: its likelihood against a known
distribution's entropy, samples that keep a spatial pattern the histogram
sampler breaks, and a trial that scores it (alone and in a seed pack)."""

from __future__ import annotations

import math

import pytest
import torch

from models.prior import fit_prior
from models.vqvae import VQVAE, VQVAEConfig
from study.tracking.store import find_trial_run
from study.trial.session import LocalSession
from study.trial.trainable import run_trial
from tests.conftest import local_plan, steps
from tests.test_trainable import _store


def _markov_codes(n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """c_1 uniform over 4 values, then c_i = c_(i-1) + 0 or 1 (mod 4), each
    with probability 1/2: entropy (log 4 + (length - 1) log 2) / length per code."""
    first = torch.randint(4, (n, 1), generator=gen)
    steps_ = torch.randint(2, (n, length - 1), generator=gen)
    return torch.cat([first, steps_], 1).cumsum(1) % 4


def test_the_priors_likelihood_reaches_the_entropy_of_the_codes():
    gen = torch.Generator().manual_seed(0)
    train, held_out = _markov_codes(2000, 8, gen), _markov_codes(1000, 8, gen)
    entropy = (math.log(4) + 7 * math.log(2)) / 8  # 0.693 nats per code
    prior = fit_prior(train, vocab=4, epochs=15)
    assert prior.nll(held_out) == pytest.approx(entropy, abs=0.03)
    # its samples follow the chain: every step moves by 0 or 1
    drawn = prior.sample(500, torch.Generator().manual_seed(1))
    moves = (drawn[:, 1:] - drawn[:, :-1]) % 4
    assert (moves <= 1).float().mean() > 0.97
    # and it left the caller's random stream alone
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    fit_prior(train[:100], vocab=4, epochs=1)
    assert torch.equal(torch.rand(3), expected)


def _halves(n: int) -> torch.Tensor:
    """Images bright in the top half and dark below, or the other way round."""
    x = torch.zeros(n, 1, 28, 28)
    top = torch.arange(n) % 2 == 0
    x[top, :, :14] = 1.0
    x[~top, :, 14:] = 1.0
    return x


def test_prior_samples_keep_a_spatial_pattern_that_histogram_samples_break():
    """Every code grid is one of two patterns; the per-position histogram
    draws each position alone (half the grid bright, half dark, anywhere),
    the prior draws whole patterns."""
    torch.manual_seed(0)
    x = _halves(512)
    cfg = VQVAEConfig(codebook_size=8, batch_size=32, lr=3e-3, prior_epochs=15)
    vq = VQVAE(cfg, x, x[:64])
    for _ in range(8):
        vq.train_epoch()
    assert vq.evaluate()["recon_mse"] < 0.01  # the codes carry the pattern
    metrics = vq.final_stage()
    assert metrics["prior_nll"] < 0.05 and metrics["prior_seconds"] > 0

    def contrast(sampler: str) -> float:
        """Mean |top half - bottom half| brightness of 200 samples: 1 for
        whole patterns, near 0 for halves mixed position by position."""
        s = vq.sample(200, torch.Generator().manual_seed(2), sampler)
        return float((s[..., :14, :].mean((1, 2, 3)) - s[..., 14:, :].mean((1, 2, 3))).abs().mean())

    assert contrast("prior") > 0.9
    assert contrast("histogram") < 0.4
    assert vq.samplers() == ("histogram",) and vq.final_samplers() == ("prior",)


@pytest.mark.parametrize("pack", [1, 2], ids=["alone", "a seed pack of 2"])
def test_a_trial_scores_the_prior_at_its_final_evaluation(tmp_path, pack):
    client, exp, parent = _store(tmp_path, "prior")
    uri = client.tracking_uri
    plan = local_plan("vq_codebook", tmp_path, uri, exp, parent, {}, seeds=pack, pack=pack)
    run_trial({}, plan, "search", LocalSession("prior-trial"))
    members = [""] if pack == 1 else ["0", "1"]
    runs = [find_trial_run(client, exp, parent, "prior-trial", member=i) for i in members]
    for run in runs:
        m, rid = run.data.metrics, run.info.run_id
        assert run.info.status == "FINISHED"
        assert steps(client, rid, "fid_histogram") == [1, 2]  # every evaluation
        for key in ("fid_prior", "recall_prior", "coverage_prior", "prior_nll", "prior_seconds"):
            assert steps(client, rid, key) == [2], key  # the final evaluation only
        assert m["fid"] == m["fid_histogram"]  # the main sampler stays the histogram
        # below a uniform draw over the codebook
        assert 0 < m["prior_nll"] < math.log(int(run.data.params["codebook_size"]))
    if pack == 2:  # each member fits its own prior to its own codes
        assert runs[0].data.metrics["prior_nll"] != runs[1].data.metrics["prior_nll"]
