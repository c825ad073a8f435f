"""The autoencoder, VAE, discrete VAE and diffusion families: each learns,
and each schedule, penalty and diagnostic matches its formula, computed here
independently (numpy or torch.distributions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datasources import load_dataset
from models import FAMILIES
from models.autoencoder import AEConfig, Autoencoder, kl_sparsity
from models.coders import RECON_COLLAPSE
from models.config import ConfigError
from models.diffusion import (
    SCHEDULES,
    Diffusion,
    DiffusionConfig,
    Sampler,
    cosine_alpha_bar,
    ddim_sigma,
    parse_sampler,
)
from models.dvae import DiscreteVAE, DVAEConfig, perplexity, temperature, uniform_kl
from models.vae import VAE, VAEConfig, gaussian_kl, kl_weight_at
from scoring.outcomes import collapse_reason


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return load_dataset("mnist5k").train_x[:64]


OVERFIT: list = [
    (Autoencoder, AEConfig(batch_size=64, lr=3e-3), "loss", 150),
    (Autoencoder, AEConfig(arch="tied", batch_size=64, lr=3e-3), "loss", 150),
    (Autoencoder, AEConfig(arch="conv", width=16, batch_size=64, lr=3e-3), "loss", 150),
    (
        Autoencoder,
        AEConfig(noise="gaussian", penalty="kl", batch_size=64, lr=3e-3),
        "recon_loss",
        150,
    ),
    (VAE, VAEConfig(batch_size=64, lr=3e-3), "loss", 150),
    (VAE, VAEConfig(arch="conv", width=16, batch_size=64, lr=3e-3), "loss", 150),
    (DiscreteVAE, DVAEConfig(batch_size=64, lr=3e-3), "loss", 150),
    (Diffusion, DiffusionConfig(channels=8, batch_size=64, lr=3e-3, T=100), "eps_loss", 60),
]


@pytest.mark.parametrize(
    ("cls", "cfg", "key", "steps"),
    OVERFIT,
    ids=[f"{c.__name__}-{i}" for i, (c, *_) in enumerate(OVERFIT)],
)
def test_each_family_overfits_a_fixed_batch(batch, cls, cfg, key, steps):
    torch.manual_seed(0)
    family = cls(cfg, batch, batch)  # the batch is the whole training set: one step an epoch
    first = float(family.train_epoch()[key])
    for _ in range(steps - 2):
        family.train_epoch()
    last = float(np.mean([float(family.train_epoch()[key]) for _ in range(2)]))
    assert last < first / 3, (first, last)


def test_every_family_is_registered():
    assert set(FAMILIES) == {
        "gan",
        "autoencoder",
        "vae",
        "dvae",
        "vqvae",
        "diffusion",
        "latent_diffusion",
    }


# --- autoencoders -------------------------------------------------------------


def test_kl_sparsity_matches_the_bernoulli_kl():
    codes = torch.rand(50, 7)
    p = 0.05
    q = codes.mean(0).numpy()
    expected = np.sum(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)))
    assert float(kl_sparsity(codes, p)) == pytest.approx(expected, rel=1e-5)
    assert float(kl_sparsity(torch.full((4, 3), p), p)) == pytest.approx(0.0, abs=1e-6)


def test_autoencoder_metrics_and_corruptions(batch):
    cfg = AEConfig(noise="dropout", noise_level=0.5, penalty="l1", batch_size=32)
    ae = Autoencoder(cfg, batch, batch)
    m = ae.evaluate()
    assert {"recon_mse", "recon_mse_train", "sparsity", "active_fraction", "denoise_mse"} <= set(m)
    assert m["recon_vs_mean"] > RECON_COLLAPSE  # untrained: no better than the mean image
    h = torch.sigmoid(ae.net.encode(batch)).detach()
    assert m["sparsity"] == pytest.approx(float(h.mean()), rel=1e-5)
    assert m["active_fraction"] == pytest.approx(float((h > 0.5).float().mean()), rel=1e-5)
    dropped = ae.corrupt(torch.ones(10_000))
    assert float((dropped == 0).float().mean()) == pytest.approx(0.5, abs=0.03)
    assert set(dropped.unique().tolist()) == {0.0, 1.0}  # masking noise: kept pixels as they were
    clean = Autoencoder(AEConfig(batch_size=32), batch, batch)
    assert torch.equal(clean.corrupt(batch), batch)
    assert not {"denoise_mse", "sparsity"} & set(clean.evaluate())  # plain: linear codes
    assert torch.equal(clean.codes(batch), clean.net.encode(batch))


RECONSTRUCTORS: list = [  # epochs of 8 steps to leave the mean image well behind
    (Autoencoder, AEConfig(batch_size=64, lr=3e-3), 20),
    (VAE, VAEConfig(batch_size=64, lr=3e-3), 20),
    (DiscreteVAE, DVAEConfig(batch_size=64, lr=3e-3), 40),  # measured 0.91 at 20, 0.66 at 40
]


@pytest.mark.parametrize(
    ("cls", "cfg", "epochs"), RECONSTRUCTORS, ids=lambda c: getattr(c, "__name__", "")
)
def test_recon_vs_mean_is_recon_mse_over_the_mean_image_error(cls, cfg, epochs):
    data = load_dataset("mnist5k")
    train, test = data.train_x[:512], data.test_x[:256]
    torch.manual_seed(0)
    family = cls(cfg, train, test)
    for _ in range(epochs):
        family.train_epoch()
    m = family.evaluate()
    mean_image = train.numpy().mean(0)
    baseline = float(np.mean((test.numpy() - mean_image) ** 2))
    assert m["recon_vs_mean"] == pytest.approx(m["recon_mse"] / baseline, rel=1e-5)
    assert m["recon_vs_mean"] < 0.75
    assert collapse_reason(Autoencoder.collapse_rules, m, data.n_classes) is None


def test_an_autoencoder_with_dead_codes_ends_collapsed():
    """An L1 weight far too high switches every code off: the decoder can
    only answer the mean digit, and the outcome rule says so."""
    data = load_dataset("mnist5k")
    train, test = data.train_x[:512], data.test_x[:256]
    torch.manual_seed(0)
    cfg = AEConfig(penalty="l1", sparsity_weight=10.0, batch_size=64, lr=3e-3)
    ae = Autoencoder(cfg, train, test)
    for _ in range(20):
        ae.train_epoch()
    m = ae.evaluate()
    assert m["active_fraction"] == 0
    assert m["recon_vs_mean"] == pytest.approx(1.0, abs=0.1)
    assert "mean image" in collapse_reason(Autoencoder.collapse_rules, m, data.n_classes)


# --- VAE ----------------------------------------------------------------------


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(gaussian_kl(mu, logvar), expected, atol=1e-5)


def test_kl_weight_schedules():
    def w(schedule: str, epoch: float) -> float:
        return kl_weight_at(VAEConfig(kl_weight=2.0, schedule=schedule, warmup_epochs=4), epoch)

    assert [w("constant", e) for e in (0, 3, 100)] == [2.0, 2.0, 2.0]
    assert [w("linear", e) for e in (0, 1, 2, 4, 100)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    # cycles of 8 epochs: up over 4, hold for 4, start again
    assert [w("cyclical", e) for e in (0, 2, 4, 6, 8, 10, 12)] == [0, 1, 2, 2, 0, 1, 2]


def test_active_units_count_the_latents_that_vary_with_the_input(batch):
    vae = VAE(VAEConfig(latent=6, batch_size=32), batch, batch)
    with torch.no_grad():  # make two latents constant in the input
        vae.enc[-1].weight[:2] = 0
    mu = vae.posterior(batch)[0].detach()
    expected = int((mu.var(0) > 0.01).sum())
    assert vae.evaluate()["active_units"] == expected and expected <= 4


# --- discrete VAE -------------------------------------------------------------


def test_temperature_schedules_at_given_steps():
    exp = DVAEConfig(schedule="exponential", tau0=1.0, tau_min=0.5, rate=1e-3, anneal_every=100)
    assert temperature(exp, 0, 10) == 1.0
    assert temperature(exp, 99, 10) == 1.0  # held until the next update
    assert temperature(exp, 150, 10) == pytest.approx(math.exp(-0.1))
    assert temperature(exp, 10**6, 10) == 0.5  # floored at tau_min
    lin = DVAEConfig(schedule="linear", tau0=1.0, tau_min=0.1, anneal_epochs=10)
    assert temperature(lin, 0, 20) == 1.0
    assert temperature(lin, 100, 20) == pytest.approx(0.55)  # half way: epoch 5 of 10
    assert temperature(lin, 10**5, 20) == pytest.approx(0.1)
    assert temperature(DVAEConfig(schedule="constant", tau0=0.7), 10**5, 20) == 0.7


def test_uniform_kl_and_perplexity_match_direct_computation():
    logits = torch.randn(4, 3, 5)
    q = torch.distributions.Categorical(logits=logits)
    u = torch.distributions.Categorical(probs=torch.full((4, 3, 5), 0.2))
    expected = torch.distributions.kl_divergence(q, u).sum(1)
    assert torch.allclose(uniform_kl(logits), expected, atol=1e-5)
    # code 0 always category 2 (perplexity 1); code 1 uses 4 categories equally (4)
    codes = torch.tensor([[2, 0], [2, 1], [2, 2], [2, 3]])
    assert perplexity(codes, 5) == pytest.approx((1 + 4) / 2)


def test_dvae_logs_its_temperature(batch):
    dvae = DiscreteVAE(DVAEConfig(batch_size=32, rate=0.1, anneal_every=1), batch, batch)
    taus = [dvae.train_epoch()["tau"] for _ in range(3)]  # 2 steps per epoch
    assert taus == pytest.approx([max(0.5, math.exp(-0.1 * s)) for s in (2, 4, 6)])


# --- diffusion ----------------------------------------------------------------


def test_linear_schedule_constants_rescale_with_T():
    b = SCHEDULES["linear"](1000)
    assert float(b[0]) == pytest.approx(1e-4) and float(b[-1]) == pytest.approx(0.02)
    b = SCHEDULES["linear"](100)
    assert float(b[0]) == pytest.approx(1e-3) and float(b[-1]) == pytest.approx(0.2)


@pytest.mark.parametrize("T", [50, 1000])
def test_cosine_schedule_matches_its_formula(T):
    s = 0.008
    f = np.cos(((np.arange(T + 1) / T + s) / (1 + s)) * np.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
    assert np.allclose(SCHEDULES["cosine"](T).numpy(), betas, atol=1e-10)
    assert np.allclose(np.cumprod(1 - betas)[: T // 2], alpha_bar[1 : T // 2 + 1], atol=1e-8)
    assert float(cosine_alpha_bar(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(1.0)


def test_sigmoid_schedule_runs_from_one_to_zero_monotonically():
    betas = SCHEDULES["sigmoid"](200)
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert float(alpha_bar[0]) > 0.99 and float(alpha_bar[-1]) < 1e-3
    assert bool((betas > 0).all()) and bool((betas <= 0.999).all())


def test_ddim_with_eta_one_and_every_step_is_ddpm_posterior_variance():
    betas = SCHEDULES["linear"](1000)
    ab = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1000)
    sigma = ddim_sigma(ab[t], ab[t - 1], 1.0)
    posterior = (1 - ab[t - 1]) / (1 - ab[t]) * betas[t]  # DDPM's beta-tilde
    assert torch.allclose(sigma**2, posterior, rtol=1e-6)
    assert float(ddim_sigma(ab[t], ab[t - 1], 0.0).abs().max()) == 0.0


def test_ddim_eta_zero_is_deterministic_given_the_noise(batch):
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(channels=8, T=50, batch_size=64), batch, batch)
    model.train_epoch()
    noise = torch.randn(6, *batch.shape[1:])
    a = model.sample(6, steps=10, eta=0.0, noise=noise)
    b = model.sample(6, steps=10, eta=0.0, noise=noise.clone())
    assert torch.equal(a, b) and a.shape == (6, *batch.shape[1:])
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    c = model.sample(6, steps=10, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(1))
    d = model.sample(6, steps=10, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(c, d)  # eta > 0 adds fresh noise at every step


def test_sampler_names():
    assert parse_sampler("ddim20_eta0.5", 1000) == Sampler(20, 0.5)
    assert parse_sampler("ddpm", 300) == Sampler(300, 1.0)
    assert parse_sampler("ddpm_beta", 300) == Sampler(300, 1.0, beta_noise=True)
    assert parse_sampler("ddpm50_beta_w3", 300) == Sampler(50, 1.0, True, 3.0)
    assert parse_sampler("ddim10_eta0_w-1", 300) == Sampler(10, 0.0, False, -1.0)
    for bad in (
        "ddim0_eta0", "ddim2000_eta0", "ddim10_eta2", "euler", "ddpm50", "ddpm_w-2", "ddpm_beta_w",
        "ddpm50_w1",
    ):  # fmt: skip
        with pytest.raises(ConfigError):
            parse_sampler(bad, 1000)
