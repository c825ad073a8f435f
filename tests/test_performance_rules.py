"""The performance rules (docs/performance.md), checked on the real training step."""

import traceback

import pytest
import torch

from models.gan import GAN, GANConfig

CONFIGS = [
    GANConfig(width=32, batch_size=32),
    GANConfig(width=32, batch_size=32, loss="wgan_gp", replay=True, mbstd=True, n_disc=2),
    GANConfig(arch="dcgan", channels=4, batch_size=32, pac=2, replay=True),
]


def _data(cfg):
    torch.manual_seed(0)
    return torch.rand(128, 1, 28, 28) if cfg.arch == "dcgan" else torch.rand(128, 1, 8, 8)


@pytest.mark.parametrize("cfg", CONFIGS, ids=["mlp", "wgan_gp-replay-mbstd", "dcgan-pac"])
def test_nothing_hard_codes_a_device(cfg):
    """With torch's default device set to `meta`, any tensor a family makes
    without taking the device from its data lands on `meta` and breaks the step
    at once: training and sampling must run entirely on the data's device."""
    x = _data(cfg)
    gan = GAN(cfg, x, x[:8])
    torch.set_default_device("meta")
    try:
        out = gan.train_epoch()
        samples = gan.sample(5)
    finally:
        torch.set_default_device("cpu")
    assert all(v.device.type == "cpu" for v in out.values())
    assert samples.device.type == "cpu"


@pytest.mark.parametrize("cfg", CONFIGS, ids=["mlp", "wgan_gp-replay-mbstd", "dcgan-pac"])
def test_training_epoch_makes_no_host_sync(cfg, monkeypatch):
    """A host sync is a tensor read into Python (item, float, int, bool,
    tolist). The epoch makes none (fused Adam keeps even its step counters
    off the Python side)."""
    x = _data(cfg)
    gan = GAN(cfg, x, x[:8])
    gan.train_epoch()  # warm-up: lazy optimiser state
    readers = []

    def spy(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]  # the frame that read
            readers.append(f"{caller.filename}:{caller.lineno}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)

    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        spy(name)
    gan.train_epoch()
    in_epoch = list(readers)
    torch.tensor(1.0).item()  # a control: proves the spy sees a read
    monkeypatch.undo()
    assert in_epoch == [] and len(readers) >= 1, in_epoch
