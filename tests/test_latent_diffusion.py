"""Latent diffusion: the first stage's codes go in and come out unchanged,
the DDPM learns their distribution, and the first stage's KL weight reaches
the VAE (the study's axis). Its CLI run is one of the smoke studies."""

from __future__ import annotations

import pytest
import torch

from datasources import load_dataset
from models.latent_diffusion import LatentDiffusion, LatentDiffusionConfig
from models.vae import VAE, VAEConfig

SMALL = {"width": 64, "depth": 2, "batch_size": 64, "T": 200}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _trained(data, epochs: int = 1, **settings) -> LatentDiffusion:
    torch.manual_seed(0)
    cfg = LatentDiffusionConfig(**{**SMALL, **settings})
    model = LatentDiffusion(cfg, data.train_x, data.test_x, data.train_y)
    for _ in range(epochs):
        model.train_epoch()
    return model


def test_the_decoder_round_trip_matches_the_first_stages(digits):
    """The first stage is the VAE family's model with the first-stage
    settings (its weights load into one); codes scaled for the diffusion
    decode to exactly what that VAE reconstructs."""
    model = _trained(digits, first_epochs=10, latent=6)
    vae_cfg = VAEConfig(latent=6, batch_size=64, kl_weight=1.0)
    vae = VAE(vae_cfg, digits.train_x, digits.test_x)
    vae.load_state_dict(model.first.state_dict())
    x = digits.test_x
    assert torch.equal(model.reconstruct(x), vae.reconstruct(x))
    # the diffusion's training data: centred per dimension, overall std 1
    assert model.x.mean(0).abs().max() < 1e-4
    assert abs(float(model.x.pow(2).mean()) - 1) < 1e-4
    decoded = model.to_data(model.x[:100])
    assert torch.allclose(decoded, vae.reconstruct(digits.train_x[:100]), atol=1e-5)
    assert model.evaluate()["recon_vs_mean"] < 0.8  # the first stage learned something


def test_the_ddpm_learns_the_distribution_of_the_codes(digits):
    """Latent samples have the codes' mean (codes scaled to unit overall
    variance, so the tolerance is in those units) and their covariance, to a
    quarter of its norm after 880 steps; the samples are those latents
    decoded."""
    model = _trained(digits, epochs=40, first_epochs=5, latent=3)
    gen = torch.Generator().manual_seed(1)
    z = model.generate(2000, gen, sampler="ddim20_eta1")
    codes = model.x
    assert (z.mean(0) - codes.mean(0)).abs().max() < 0.1, (z.mean(0), codes.mean(0))
    error = torch.linalg.norm(z.T.cov() - codes.T.cov()) / torch.linalg.norm(codes.T.cov())
    assert error < 0.25, (z.T.cov(), codes.T.cov())
    samples = model.sample(5, torch.Generator().manual_seed(2), sampler="ddim20_eta1")
    again = model.to_data(model.generate(5, torch.Generator().manual_seed(2), "ddim20_eta1"))
    assert torch.equal(samples, again) and samples.shape == (5, 1, 8, 8)


def test_the_first_stage_kl_weight_is_the_vaes(digits):
    """kl_weight 0 leaves the codes free (an autoencoder): the held-out KL to
    N(0, I) is far larger than at weight 1."""
    free = _trained(digits, first_epochs=5, latent=4, kl_weight=0.0).evaluate()
    vae = _trained(digits, first_epochs=5, latent=4, kl_weight=1.0).evaluate()
    assert free["kl"] > 3 * vae["kl"], (free["kl"], vae["kl"])
    assert free["recon_mse"] < vae["recon_mse"]
