"""The latent systems: VQ-VAE's estimator, codebook updates and restarts,
path length and the linear probe, VAE and dVAE loss knobs, classifier-free
guidance and the chapter's sigma^2 = beta sampler, each against its
published definition computed here independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from datasources import load_dataset
from models.coders import recon_sum
from models.diffusion import SCHEDULES, Diffusion, DiffusionConfig, beta_update
from models.dvae import DiscreteVAE, DVAEConfig
from models.latent import lerp, slerp
from models.vae import VAE, VAEConfig
from models.vqvae import VQVAE, Codebook, VQVAEConfig, ema_update, usage_perplexity
from scoring.features import extractor_for
from scoring.outcomes import Timeline, collapse_reason, final_outcome
from scoring.probes import PATH_EPSILON
from scoring.registry import ProbeCodes, evaluate_latent, pixel_probe


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist5k")


def _vq(mnist, **kw) -> VQVAE:
    torch.manual_seed(0)
    cfg = VQVAEConfig(codebook_size=16, code_dim=4, width=8, batch_size=64, **kw)
    return VQVAE(cfg, mnist.train_x[:512], mnist.test_x[:128])


# --- VQ-VAE -------------------------------------------------------------------


def test_the_straight_through_gradient_reaches_the_encoder(mnist):
    """The decoder's gradient at its input arrives unchanged at the encoder's
    output, though quantisation itself has no gradient."""
    model = _vq(mnist)
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            tensor = inputs[0] if name == "dec_in" else output
            tensor.retain_grad()
            seen[name] = tensor

        return hook

    model.enc.register_forward_hook(keep("z"))
    model.dec.register_forward_hook(keep("dec_in"))
    parts, z, idx = model.losses(mnist.train_x[:64])
    parts["recon_loss"].backward()  # the reconstruction term alone
    assert seen["z"] is z and seen["z"].grad is not None
    assert torch.equal(seen["z"].grad, seen["dec_in"].grad)
    assert float(seen["z"].grad.abs().sum()) > 0
    assert all(float(p.grad.abs().sum()) > 0 for p in model.enc.parameters())


def test_ema_moves_a_used_code_toward_its_vectors_by_the_published_update():
    torch.manual_seed(0)
    book = Codebook(4, 2)
    with torch.no_grad():
        book.embed.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]]))
        book.ema_sum.copy_(book.embed)
    z = torch.tensor([[1.0, 1.0], [1.2, 0.8], [0.9, 1.1]]).t().reshape(1, 2, 1, 3)
    idx, _ = book.quantise(z)
    assert idx.flatten().tolist() == [0, 0, 0]
    decay, eps = 0.9, 1e-5
    before = float(book.embed[0].detach().sub(torch.tensor([1.0, 1.0])).norm())
    ema_update(dict([*book.named_parameters(), *book.named_buffers()]), z, idx, decay)
    # van den Oord et al., appendix: N = g N + (1 - g) n, m = g m + (1 - g) sum z,
    # e = m / N with Laplace-smoothed N
    counts = np.array([0.9 * 1 + 0.1 * 3, 0.9, 0.9, 0.9])
    sums = 0.9 * np.array([[0, 0], [5, 5], [-5, 5], [5, -5]]) + 0.1 * np.array(
        [[3.1, 2.9], [0, 0], [0, 0], [0, 0]]
    )
    n = counts.sum()
    smoothed = (counts + eps) / (n + 4 * eps) * n
    assert np.allclose(book.embed.detach().numpy(), sums / smoothed[:, None], atol=1e-5)
    after = float(book.embed[0].detach().sub(torch.tensor([1.0, 1.0])).norm())
    assert after < before


def test_restart_dead_revives_an_unused_code(mnist):
    for restart in (False, True):
        model = _vq(mnist, restart_dead=restart)
        with torch.no_grad():
            model.codebook.embed[5] = 1e3  # far from every encoder output: never chosen
        model.train_epoch()
        entry = model.codebook.embed[5].detach()
        if not restart:  # loss updates give an unused entry no gradient
            assert torch.equal(entry, torch.full_like(entry, 1e3))
            continue
        with torch.no_grad():  # it is now one of the encoder's outputs
            z = model.enc(model.x).permute(0, 2, 3, 1).reshape(-1, 4)
        assert float((z - entry).norm(dim=1).min()) < 1e-4
        assert int((model.codes(model.x) == 5).sum()) > 0


def test_perplexity_is_k_for_uniform_use_and_one_for_a_single_code():
    assert usage_perplexity(torch.full((16,), 10)) == pytest.approx(16)
    assert usage_perplexity(torch.tensor([0, 40, 0, 0])) == pytest.approx(1)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert usage_perplexity(p * 100) == pytest.approx(math.exp(-(p * p.log()).sum().item()))


def test_a_collapsed_codebook_ends_collapsed_with_its_reason():
    collapsed = {"recon_vs_mean": 0.3, "dead_codes": 0.9, "codebook_perplexity": 3.2}
    reason = collapse_reason(VQVAE.collapse_rules, collapsed, 10)
    assert reason == "codebook collapsed: 90% of entries unused (perplexity 3.2)"
    timeline = Timeline()
    timeline.add(5, reason)
    outcome, why = final_outcome(None, timeline)
    assert outcome == "collapsed" and why.startswith(reason) and "epoch 5" in why
    assert collapse_reason(VQVAE.collapse_rules, {**collapsed, "dead_codes": 0.1}, 10) is None


def test_samples_follow_the_per_position_code_histogram(mnist):
    model = _vq(mnist)
    with torch.no_grad():  # every position of every input takes entry 3
        model.codebook.embed.fill_(1e3)
        model.codebook.embed[3] = 0.0
    codes = model.codes(model.x)
    assert bool((codes == 3).all())
    samples = model.sample(5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        q = torch.zeros(5, 4, *codes.shape[1:])
        assert torch.allclose(samples, model.dec(q), atol=1e-6)


# --- latent paths and path length ------------------------------------------


def test_slerp_keeps_the_ends_and_interpolates_the_norm():
    a, b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    for t, want in ((0.0, a), (1.0, b)):
        assert torch.allclose(slerp(a, b, torch.tensor([t])), want, atol=1e-6)
    mid = slerp(a, b, torch.tensor([0.5]))
    assert torch.allclose(mid, torch.tensor([[2.0, 2.0]]) / math.sqrt(2), atol=1e-6)
    assert torch.equal(lerp(a, b, torch.tensor([0.25])), torch.tensor([[2.25, 0.25]]))


def _paths(decode, n=200):
    gen = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(n, 2, generator=gen), torch.randn(n, 2, generator=gen)
    t = torch.rand(n, generator=gen)
    return decode(lerp(z0, z1, t)), decode(lerp(z0, z1, t + PATH_EPSILON))


def _stripes(freq: float):
    grid = torch.linspace(0, 1, 28)

    def decode(z):  # strokes whose position moves with z, faster for higher freq
        phase = freq * (z[:, :1, None] * grid[None, :, None] + z[:, 1:, None] * grid[None, None])
        return (0.5 + 0.5 * torch.sin(phase)).unsqueeze(1)

    return decode


def test_path_length_is_zero_for_a_constant_generator_and_grows_with_roughness():
    constant = _paths(lambda z: torch.full((len(z), 1, 28, 28), 0.3))
    assert evaluate_latent("mnist5k", paths=constant)["path_length"] == 0.0
    lengths = [
        evaluate_latent("mnist5k", paths=_paths(_stripes(f)))["path_length"] for f in (1, 4, 16)
    ]
    assert 0 < lengths[0] < lengths[1] < lengths[2], lengths


def test_path_length_matches_an_independent_computation():
    at_t, at_eps = _paths(_stripes(4))
    ext = extractor_for("mnist5k", "cpu")
    d = ((ext.features(at_t) - ext.features(at_eps)) ** 2).sum(1).double().numpy()
    d = d / PATH_EPSILON**2
    lo, hi = np.percentile(d, 1, method="lower"), np.percentile(d, 99, method="higher")
    want = d[(d >= lo) & (d <= hi)].mean()
    got = evaluate_latent("mnist5k", paths=(at_t, at_eps))["path_length"]
    assert got == pytest.approx(want, rel=1e-3)


# --- the linear probe -----------------------------------------------------------


def _sklearn_probe(train, train_y, test, test_y) -> float:
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return probe.fit(train.numpy(), train_y.numpy()).score(test.numpy(), test_y.numpy())


def test_the_probe_gives_scikit_learns_accuracy(mnist):
    torch.manual_seed(0)
    vae = VAE(VAEConfig(latent=8, width=64), mnist.train_x[:1000], mnist.test_x)
    vae.train_epoch()
    train, test = vae.probe_codes(mnist.train_x[:500]), vae.probe_codes(mnist.test_x)
    got = evaluate_latent(
        "mnist5k", codes=ProbeCodes(train, mnist.train_y[:500], test, mnist.test_y)
    )
    want = _sklearn_probe(train, mnist.train_y[:500], test, mnist.test_y)
    assert got == {"probe_accuracy": pytest.approx(want)} and 0.3 < want < 1


def test_the_pixel_baseline_is_the_probe_on_raw_pixels(mnist):
    flat = lambda x: x.flatten(1)  # noqa: E731
    want = _sklearn_probe(
        flat(mnist.train_x[:200]), mnist.train_y[:200], flat(mnist.test_x), mnist.test_y
    )
    assert pixel_probe("mnist5k", 200) == pytest.approx(want)


# --- VAE and dVAE loss knobs ----------------------------------------------------


def test_mse_reconstruction_is_the_chapters_loss(mnist):
    """loss = F.mse_loss(out, x) + kl_weight * kl.mean() / 784 (the chapter's
    vae_loss), and recon_sum's mse is the per-example sum of squares."""
    out, x = torch.rand(4, 1, 28, 28), mnist.train_x[:4]
    assert torch.allclose(recon_sum(out, x, "mse"), ((out - x) ** 2).sum((1, 2, 3)))
    torch.manual_seed(0)
    vae = VAE(VAEConfig(latent=4, width=16, recon_loss="mse"), mnist.train_x[:256], x)
    decoded = vae.dec(torch.randn(4, 4))
    kl = torch.rand(4)
    loss, _ = vae.elbo_loss(decoded, x, kl, weight=3.0)
    chapter = F.mse_loss(decoded, x) + 3.0 * kl.mean() / 784
    assert float(loss) == pytest.approx(float(chapter.detach()), rel=1e-5)


def test_dvae_kl_weight_scales_the_kl_term(mnist):
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        cfg = DVAEConfig(d=4, k=3, width=16, batch_size=64, kl_weight=weight)
        model = DiscreteVAE(cfg, mnist.train_x[:256], mnist.test_x[:64])
        m = {k: float(v) for k, v in model.train_epoch().items()}
        assert m["loss"] == pytest.approx(m["recon_loss"] + weight * m["kl_train"] / 784, rel=1e-5)


# --- classifier-free guidance and the sigma^2 = beta sampler ----------------------


@pytest.fixture(scope="module")
def guided():
    digits = load_dataset("digits")
    torch.manual_seed(0)
    samplers = "ddim5_eta0,ddim5_eta0_w0,ddim5_eta0_w-1,ddim5_eta0_w3"
    cfg = DiffusionConfig(channels=8, T=50, batch_size=64, conditional=True, samplers=samplers)
    model = Diffusion(cfg, digits.train_x[:256], digits.test_x, digits.train_y[:256])
    model.train_epoch()
    return model


def test_guidance_zero_is_conditional_and_minus_one_the_unconditional_model(guided):
    noise = torch.randn(20, 1, 8, 8)
    labels = torch.arange(20) % 10
    null = torch.full_like(labels, guided.n_classes)

    def draw(sampler, y=labels):
        return guided.sample(20, sampler=sampler, noise=noise, labels=y)

    plain = draw("ddim5_eta0")
    assert torch.equal(draw("ddim5_eta0_w0"), plain)
    assert torch.equal(draw("ddim5_eta0_w-1"), draw("ddim5_eta0", null))
    assert not torch.equal(draw("ddim5_eta0_w3"), plain)
    assert torch.equal(guided.sample_labels(12), torch.arange(12) % 10)


def test_guided_noise_follows_ho_and_salimans(guided):
    x, t = torch.randn(6, 1, 8, 8), torch.full((6,), 30)
    y = torch.arange(6)
    cond = guided.ema_net(x, t, y)
    uncond = guided.ema_net(x, t, torch.full_like(y, guided.n_classes))
    with torch.no_grad():
        assert torch.allclose(guided._eps(x, t, y, 2.5), 3.5 * cond - 2.5 * uncond, atol=1e-5)


def test_the_beta_sampler_is_the_chapters_ddpm_update():
    betas = SCHEDULES["cosine"](100)
    ab = torch.cumprod(1 - betas, 0)
    x, eps, z = torch.randn(3, 1, 8, 8, dtype=torch.float64).unbind(0)
    for t in (99, 50, 1):
        alpha, beta = 1 - betas[t], betas[t]
        chapter = (x - beta / (1 - ab[t]).sqrt() * eps) / alpha.sqrt() + beta.sqrt() * z
        assert torch.allclose(beta_update(x, eps, ab[t], ab[t - 1], z), chapter)
