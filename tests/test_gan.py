import io
import math

import pytest
import torch
import torch.nn.functional as F

from models.config import ConfigError
from models.gan import GAN, GANConfig
from models.gan.parts import LOSSES, MinibatchStdDev, ReplayBuffer, gradient_penalty

REAL = torch.tensor([2.0, -1.0, 0.5])
FAKE = torch.tensor([-3.0, 0.0, 1.0])


def _bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def test_ns_and_minimax_match_binary_cross_entropy():
    d = _bce(REAL, 1.0) + _bce(FAKE, 0.0)
    assert LOSSES["ns"].d(REAL, FAKE) == pytest.approx(d.item())
    assert LOSSES["minimax"].d(REAL, FAKE) == pytest.approx(d.item())
    # ns: -log D(G(z)); minimax: log(1 - D(G(z)))
    assert LOSSES["ns"].g(FAKE) == pytest.approx(-torch.log(torch.sigmoid(FAKE)).mean().item())
    expected = torch.log(1 - torch.sigmoid(FAKE)).mean().item()
    assert LOSSES["minimax"].g(FAKE) == pytest.approx(expected, rel=1e-5)


def test_hinge_lsgan_wgan_values():
    hinge_d = (max(0, 1 - 2) + max(0, 1 + 1) + max(0, 1 - 0.5)) / 3 + (0 + 1 + 2) / 3
    assert LOSSES["hinge"].d(REAL, FAKE) == pytest.approx(hinge_d)
    assert LOSSES["hinge"].g(FAKE) == pytest.approx(2 / 3)
    ls_d = 0.5 * ((1 + 4 + 0.25) / 3) + 0.5 * ((9 + 0 + 1) / 3)
    assert LOSSES["lsgan"].d(REAL, FAKE) == pytest.approx(ls_d)
    assert LOSSES["lsgan"].g(FAKE) == pytest.approx(0.5 * (16 + 1 + 0) / 3)
    assert LOSSES["wgan_gp"].d(REAL, FAKE) == pytest.approx(FAKE.mean() - REAL.mean())
    assert LOSSES["wgan_gp"].gradient_penalty and not LOSSES["ns"].gradient_penalty


def test_gradient_penalty_is_zero_for_unit_slope_critic():
    critic = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[0.6, 0.8, 0.0, 0.0]]))  # |grad| = 1 everywhere
    real, fake = torch.randn(8, 4), torch.randn(8, 4)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        critic.weight.mul_(3)  # |grad| = 3 -> penalty (3 - 1)^2 = 4
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(4.0, rel=1e-5)


def test_minibatch_stddev_sees_collapse():
    layer = MinibatchStdDev(group_size=4)
    same = torch.ones(8, 3, 5, 5)
    out = layer(same)
    assert out.shape == (8, 4, 5, 5)
    assert torch.allclose(out[:, 3], torch.zeros(8, 5, 5), atol=1e-3)
    varied = torch.randn(8, 16)
    out = layer(varied)
    assert out.shape == (8, 17) and (out[:, 16] > 0.5).all()
    # group g is the samples i, i + 2, i + 4, i + 6 (the reshape order)
    group0 = varied[[0, 2, 4, 6]]
    expected = group0.var(0, unbiased=False).add(1e-8).sqrt().mean()
    assert out[0, 16] == pytest.approx(expected.item(), rel=1e-5)
    assert out[4, 16] == pytest.approx(expected.item(), rel=1e-5)


def test_replay_buffer_is_a_ring_and_round_trips():
    buf = ReplayBuffer(capacity=5, shape=(2,), device=torch.device("cpu"))
    with pytest.raises(ValueError):
        buf.sample(1)
    buf.push(torch.arange(6.0).reshape(3, 2))  # rows 0, 1, 2
    assert buf.size == 3 and buf.pos == 3
    buf.push(torch.arange(6.0, 12.0).reshape(3, 2))  # rows 3, 4, 5: 5 overwrites 0
    assert buf.size == 5 and buf.pos == 1
    assert buf.data[0].tolist() == [10.0, 11.0]
    drawn = buf.sample(200)
    assert set(drawn[:, 0].tolist()) == {2.0, 4.0, 6.0, 8.0, 10.0}
    other = ReplayBuffer(5, (2,), torch.device("cpu"))
    other.load_state_dict(buf.state_dict())
    assert torch.equal(other.data, buf.data) and (other.size, other.pos) == (5, 1)


def _images(n=256, size=28, channels=1):
    torch.manual_seed(0)
    return torch.rand(n, channels, size, size)


def test_discriminator_is_frozen_during_the_generator_step():
    gan = GAN(GANConfig(width=32), _images(), _images(16))
    before = [p.clone() for p in gan.D.parameters()]
    g_before = [p.clone() for p in gan.G.parameters()]
    gan._g_step(64)
    assert all(torch.equal(a, b) for a, b in zip(before, gan.D.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(g_before, gan.G.parameters(), strict=True))
    assert all(p.requires_grad for p in gan.D.parameters())


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize(
    ("arch", "size", "channels"), [("mlp", 28, 1), ("dcgan", 8, 1), ("dcgan", 32, 3)]
)
def test_every_loss_and_architecture_trains_and_samples_in_range(loss, arch, size, channels):
    cfg = GANConfig(
        arch=arch, loss=loss, width=32, channels=8, replay=True, mbstd=True, n_disc=2, batch_size=32
    )
    gan = GAN(cfg, _images(128, size, channels), _images(16, size, channels))
    metrics = gan.train_epoch()
    assert set(metrics) == {"d_loss", "g_loss"}
    assert all(math.isfinite(float(v)) for v in metrics.values())
    samples = gan.sample(10)
    assert samples.shape == (10, channels, size, size)
    assert samples.min() >= 0 and samples.max() <= 1


def test_points_generator_is_unbounded_and_dcgan_rejects_points():
    pts = torch.randn(256, 2) * 5
    gan = GAN(GANConfig(width=16, batch_size=32), pts, pts[:10])
    gan.train_epoch()
    assert gan.sample(7).shape == (7, 2)
    with pytest.raises(ConfigError, match="divisible by 4"):
        GAN(GANConfig(arch="dcgan"), pts, pts)


def test_too_few_samples_for_a_batch_is_a_config_error():
    with pytest.raises(ConfigError, match="exceeds"):
        GAN(GANConfig(batch_size=64, n_disc=5), _images(100), _images(10))


def test_checkpoint_covers_models_optimisers_and_replay():
    cfg = GANConfig(width=32, replay=True, batch_size=32)
    x = _images(128)
    a = GAN(cfg, x, x[:8])
    a.train_epoch()
    buf = io.BytesIO()  # through bytes as a checkpoint goes, loaded as the trainable loads it
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = GAN(cfg, x, x[:8])
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(b.replay.data, a.replay.data) and b.replay.size == a.replay.size
    assert b.opt_d.state_dict()["state"].keys() == a.opt_d.state_dict()["state"].keys()
    # identical state and RNG -> identical next epoch
    torch.manual_seed(7)
    ma = a.train_epoch()
    torch.manual_seed(7)
    mb = b.train_epoch()
    assert float(ma["d_loss"]) == pytest.approx(float(mb["d_loss"]), rel=1e-6)
    g = torch.Generator().manual_seed(1)
    g2 = torch.Generator().manual_seed(1)
    assert torch.allclose(a.sample(5, g), b.sample(5, g2))


def test_pacgan_packs_consecutive_samples_into_one_discriminator_input():
    from models.gan.nets import Pack

    x = torch.arange(24.0).reshape(4, 3, 1, 2)
    packed = Pack(2)(x)
    assert packed.shape == (2, 6, 1, 2)
    assert torch.equal(packed[0, :3], x[0]) and torch.equal(packed[0, 3:], x[1])
    for arch, data in (("mlp", torch.randn(256, 2)), ("dcgan", _images(128, 8))):
        cfg = GANConfig(arch=arch, pac=4, batch_size=32, width=16, channels=4)
        gan = GAN(cfg, data, data[:8])
        assert gan.D(data[:32]).shape == (8, 1)  # one verdict per pack of 4
        assert all(math.isfinite(float(v)) for v in gan.train_epoch().values())
    with pytest.raises(ConfigError, match="multiple of pac"):
        GAN(GANConfig(pac=3, batch_size=32), torch.randn(256, 2), torch.randn(8, 2))
