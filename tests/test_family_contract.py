"""The trial contract, checked over every entry of the family registry: a new
family must add its small example below, and then passes or fails the same
checks as the others."""

from __future__ import annotations

import io
import traceback

import pytest
import torch

from models import (
    FAMILIES,
    Family,
    GenerativeFamily,
    does_arithmetic,
    encodes,
    generates,
    has_latent_space,
)
from models.autoencoder import AEConfig
from models.diffusion import DiffusionConfig
from models.dvae import DVAEConfig
from models.gan import GANConfig
from models.latent_diffusion import LatentDiffusionConfig
from models.vae import VAEConfig
from models.vqvae import VQVAEConfig

# small configurations of each family, with the stabilisers and options that
# add code paths switched on, and the data shape each trains on
EXAMPLES = {
    "gan-mlp": ("gan", GANConfig(width=16, batch_size=32), (1, 8, 8)),
    "gan-wgan_gp-replay-mbstd": (
        "gan",
        GANConfig(width=16, batch_size=32, loss="wgan_gp", replay=True, mbstd=True, n_disc=2),
        (1, 8, 8),
    ),
    "gan-dcgan-pac": (
        "gan",
        GANConfig(arch="dcgan", channels=4, batch_size=32, pac=2, replay=True),
        (1, 28, 28),
    ),
    # (the other optimisers are checked in test_gan_systems: torch's NAdam and
    # RMSProp keep their step counters on the host, by design)
    "gan-progressive-eqlr-pixelnorm-mbdisc": (
        "gan",
        GANConfig(
            arch="dcgan",
            channels=4,
            batch_size=32,
            progressive=True,
            equalized_lr=True,
            pixelnorm=True,
            mbdisc=True,
            mbstd=True,
            stage_epochs=1,
        ),
        (1, 28, 28),
    ),  # fmt: skip
    "gan-style-conditional-progressive": (
        "gan",
        GANConfig(
            arch="style",
            channels=4,
            batch_size=32,
            conditional=True,
            progressive=True,
            replay=True,
            stage_epochs=1,
            mapping_layers=2,
        ),
        (1, 28, 28),
    ),  # fmt: skip
    "autoencoder": (
        "autoencoder",
        AEConfig(width=16, batch_size=32, noise="dropout", penalty="kl"),
        (1, 8, 8),
    ),
    "autoencoder-conv": ("autoencoder", AEConfig(arch="conv", width=8, batch_size=32), (1, 8, 8)),
    "vae": ("vae", VAEConfig(width=16, latent=4, batch_size=32, schedule="cyclical"), (1, 8, 8)),
    "diffusion": (
        "diffusion",
        DiffusionConfig(channels=8, T=20, batch_size=32, samplers="ddim3_eta1,ddpm"),
        (1, 8, 8),
    ),
    "diffusion-conditional-guided": (
        "diffusion",
        DiffusionConfig(
            channels=8,
            T=20,
            batch_size=32,
            conditional=True,
            samplers="ddim3_eta0_w2,ddpm_beta,ddpm5_beta_w-1",
        ),
        (1, 8, 8),
    ),
    "latent_diffusion": (
        "latent_diffusion",
        LatentDiffusionConfig(
            latent=3,
            first_width=16,
            first_epochs=1,
            T=20,
            width=16,
            depth=1,
            batch_size=32,
            samplers="ddim3_eta1,ddpm_beta",
        ),
        (1, 8, 8),
    ),  # fmt: skip
    "latent_diffusion-conv-ae": (
        "latent_diffusion",
        LatentDiffusionConfig(
            first_arch="conv",
            latent=2,
            first_width=8,
            kl_weight=0.0,
            first_epochs=1,
            T=10,
            width=8,
            batch_size=32,
            samplers="ddim2_eta0",
        ),
        (1, 8, 8),
    ),  # fmt: skip
    "vae-mse": ("vae", VAEConfig(width=16, latent=4, batch_size=32, recon_loss="mse"), (1, 8, 8)),
    "dvae-kl_weight": (
        "dvae",
        DVAEConfig(width=16, d=4, k=3, batch_size=32, kl_weight=0.1, prior_epochs=1),
        (1, 8, 8),
    ),
    "vqvae-ema-restart": (
        "vqvae",
        VQVAEConfig(
            codebook_size=8,
            code_dim=4,
            width=8,
            batch_size=32,
            codebook_update="ema",
            restart_dead=True,
        ),
        (1, 8, 8),
    ),
    "vqvae-loss": (
        "vqvae",
        VQVAEConfig(codebook_size=8, code_dim=4, width=8, batch_size=32, prior_epochs=1),
        (1, 8, 8),
    ),
}
CASES = sorted(EXAMPLES)


def test_every_registered_family_has_an_example():
    assert {family for family, _, _ in EXAMPLES.values()} == set(FAMILIES)


def _build(case: str) -> Family:
    name, cfg, shape = EXAMPLES[case]
    torch.manual_seed(0)
    x = torch.rand(96, *shape)
    return FAMILIES[name](cfg, x, x[:32], torch.arange(96) % 10)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_kind_of_family_is_in_its_type(name):
    family = FAMILIES[name]
    assert issubclass(family, Family) and not family.__abstractmethods__
    assert generates(family) == issubclass(family, GenerativeFamily)
    assert hasattr(family, "sample") == generates(family)  # reconstruct-only: no sample()


@pytest.mark.parametrize("name", CASES)
def test_checkpoint_round_trip_gives_the_same_next_step(name):
    a = _build(name)
    a.train_epoch()
    buf = io.BytesIO()  # through bytes as a checkpoint goes, loaded as the trainable loads it
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = _build(name)
    b.load_state_dict(torch.load(buf, weights_only=True))
    torch.manual_seed(7)
    ma = a.train_epoch()
    torch.manual_seed(7)
    mb = b.train_epoch()
    assert {k: float(v) for k, v in ma.items()} == {k: float(v) for k, v in mb.items()}
    leaves_a, leaves_b = dict(_leaves(a.state_dict())), dict(_leaves(b.state_dict()))
    assert leaves_a.keys() == leaves_b.keys()
    for key, value in leaves_a.items():  # networks, optimisers, buffers, counters
        same = (
            torch.equal(value, leaves_b[key]) if torch.is_tensor(value) else value == leaves_b[key]
        )
        assert same, key


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    else:
        yield path, obj


@pytest.mark.parametrize("name", CASES)
def test_training_and_sampling_never_hard_code_a_device(name):
    """With torch's default device set to `meta`, any tensor a family makes
    without taking the device from its data lands on `meta` and breaks the
    step at once: training and sampling must run on the data's device."""
    family = _build(name)
    torch.set_default_device("meta")
    try:
        out = family.train_epoch()
        samples = family.sample(5) if generates(type(family)) else None
        if samples is not None:
            family.final_stage()  # what comes after training: a learned prior
        for sampler in family.samplers() + family.final_samplers() if samples is not None else ():
            family.sample(3, sampler=sampler)
    finally:
        torch.set_default_device("cpu")
    assert all(not isinstance(v, torch.Tensor) or v.device.type == "cpu" for v in out.values())
    assert samples is None or samples.device.type == "cpu"


@pytest.mark.parametrize("name", CASES)
def test_a_training_epoch_makes_no_host_sync(name, monkeypatch):
    """A host sync is a tensor read into Python (item, float, int, bool,
    tolist); the epoch makes none, so a GPU never waits on Python."""
    family = _build(name)
    family.train_epoch()  # warm-up: lazy optimiser state
    readers = []

    def spy(attr):
        original = getattr(torch.Tensor, attr)

        def read(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            readers.append(f"{caller.filename}:{caller.lineno}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, attr, read)

    for attr in ("item", "tolist", "__float__", "__int__", "__bool__"):
        spy(attr)
    family.train_epoch()
    in_epoch = list(readers)
    torch.tensor(1.0).item()  # a control: proves the spy sees a read
    monkeypatch.undo()
    assert in_epoch == [] and len(readers) >= 1, in_epoch


@pytest.mark.parametrize("name", CASES)
def test_metric_names_are_declared_and_training_and_held_out_never_share_one(name):
    """Both are logged at the same step: a shared name would log two values
    per epoch and leave MLflow to keep either. The declared names are what
    the harness checks a study's metrics against."""
    family = _build(name)
    cls = type(family)
    assert not cls.train_metrics & cls.eval_metrics
    assert set(family.train_epoch()) <= cls.train_metrics
    assert set(family.evaluate()) <= cls.eval_metrics


def test_samplers_are_part_of_the_contract():
    diffusion = _build("diffusion")
    assert diffusion.samplers() == ("ddim3_eta1", "ddpm")
    assert all(type(diffusion).is_sampler(s) for s in diffusion.samplers())
    assert not type(diffusion).is_sampler("inception")
    gan = _build("gan-mlp")
    assert gan.samplers() == () and not type(gan).is_sampler("ddpm")


@pytest.mark.parametrize("name", CASES)
def test_latent_probes_keep_the_data_shape_and_are_deterministic(name):
    """A family with a latent space decodes its paths to data of the input's
    shape, the same path position to the same data (path_length differences
    t and t + epsilon); an encoder's codes are one row per input; a
    reconstructing family shows its inputs first."""
    family = _build(name)
    cls, x = type(family), family.test_x if hasattr(family, "test_x") else None
    gen = torch.Generator().manual_seed(0)
    ends = family.latent_ends(6, gen)
    assert (ends is not None) == has_latent_space(cls) == (name.split("-")[0] != "diffusion")
    if ends is None:
        return
    t = torch.linspace(0, 1, 6)
    path = family.decode_path(ends, t)
    assert path.shape == (6, *EXAMPLES[name][2]) and torch.equal(path, family.decode_path(ends, t))
    if not torch.equal(ends[0], ends[1]):  # (an untrained codebook may map both ends alike)
        assert not torch.equal(path, family.decode_path(ends, 1 - t))
    if encodes(cls):
        assert family.probe_codes(x[:5]).shape[0] == 5 and family.probe_codes(x[:5]).dim() == 2
        rows = family.reconstruction_rows(x[:4])
        assert torch.equal(rows[0], x[:4]) and all(r.shape == x[:4].shape for r in rows)
    # latent arithmetic's codes: the encoder's, decoded by the decoder (what
    # the reconstructions show), or a GAN's z draws (none when conditional)
    assert does_arithmetic(cls) == has_latent_space(cls)
    if encodes(cls):
        decoded, rows = family.decode_codes(family.encode_codes(x[:4])), rows[1:]
        assert decoded.shape == x[:4].shape
        if len(rows) == 1:  # (a denoiser reconstructs its corrupted input)
            assert torch.equal(decoded, rows[0])
    else:
        z = family.draw_codes(4, torch.Generator().manual_seed(1))
        assert (z is None) == ("conditional" in name)
        if z is not None:
            decoded = family.decode_codes(z)
            assert torch.equal(decoded, family.decode_codes(z))
            assert decoded.shape == (4, *EXAMPLES[name][2])
