"""Seed packs against separate trainings, family by family (float64 on the
CPU, where a fused step and K separate steps differ only by the order of
floating-point sums): a pack of K members ends where K single-member
trainings with the same streams end; a pack of one ends where today's
unpacked training ends; a member that diverges changes nothing for the others;
and a pack's checkpoint continues exactly."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from models import FAMILIES, Family
from models.pack import Pack, fuse

# (family, settings): every family, and the options whose steps differ
# (gradient penalty, replay, batch statistics, conditioning, clipping, EMA).
# No dropout or StyleGAN noise: randomness inside a network's forward pass is
# the pack's one stream, not each member's (models.pack)
CASES = [
    ("gan", {"width": 32, "batch_size": 32, "z_dim": 8}),
    (
        "gan",
        {
            "arch": "dcgan", "channels": 8, "dropout": 0.0, "batch_size": 32, "loss": "wgan_gp",
            "replay": True, "mbstd": True, "n_disc": 2,
        },
    ),
    ("gan", {"arch": "dcgan", "channels": 8, "dropout": 0.0, "batch_size": 32,
             "conditional": True, "mbdisc": True}),
    ("autoencoder", {"penalty": "kl", "noise": "gaussian", "width": 32, "batch_size": 32}),
    ("autoencoder", {"arch": "tied", "penalty": "l1", "noise": "dropout", "width": 32,
                     "batch_size": 32}),
    ("autoencoder", {"arch": "conv", "width": 8, "batch_size": 32}),
    ("vae", {"width": 32, "batch_size": 32, "schedule": "linear"}),
    ("dvae", {"width": 32, "batch_size": 32, "d": 4, "k": 5}),
    ("diffusion", {"channels": 8, "T": 50, "batch_size": 32, "conditional": True}),
    ("vqvae", {"width": 8, "code_dim": 4, "codebook_size": 8, "batch_size": 32,
               "codebook_update": "ema", "restart_dead": True}),
    ("vqvae", {"width": 8, "code_dim": 4, "codebook_size": 8, "batch_size": 32,
               "codebook_update": "loss"}),
]  # fmt: skip
IDS = [f"{f}-{i}" for i, (f, _) in enumerate(CASES)]
SEEDS = [11, 12, 13]
EPOCHS = 2


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(128, 1, 8, 8, generator=g)
    return x, x[:32], torch.randint(0, 4, (128,), generator=g)


def maker(family: str, settings: dict) -> Callable[[int], Family]:
    x, test_x, y = data()
    cfg = FAMILIES[family].Config(**settings)

    def make(seed: int) -> Family:
        torch.manual_seed(seed)
        return FAMILIES[family](cfg, x, test_x, y)

    return make


def weights(family: Family) -> dict[str, torch.Tensor]:
    """Every floating tensor of the family's networks (its optimisers left out)."""
    state = family.state_dict()
    # networks only: not optimisers, nor a replay buffer of past samples
    nets = {
        k: v
        for k, v in state.items()
        if isinstance(v, dict) and not k.startswith("opt") and k != "replay"
    }
    return {
        f"{k}.{n}": t
        for k, net in nets.items()
        for n, t in net.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    }


def assert_close(a: Family, b: Family, tol: float = 1e-9) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=tol, atol=tol, msg=k)


def train(pack: Pack, epochs: int = EPOCHS) -> list[dict]:
    for _ in range(epochs):
        metrics = pack.train_epoch()
    pack.sync()
    return metrics


@pytest.mark.parametrize(("family", "settings"), CASES, ids=IDS)
def test_a_pack_ends_where_its_seeds_trained_alone_end(family: str, settings: dict) -> None:
    make = maker(family, settings)
    pack = Pack(fuse(make, SEEDS, torch.device("cpu")))
    packed = train(pack)
    for k, seed in enumerate(SEEDS):
        alone = make(seed)
        for _ in range(EPOCHS):
            metrics = alone.train_epoch()
        assert_close(pack.members[k], alone)
        for name, value in metrics.items():
            assert float(packed[k][name]) == pytest.approx(float(value), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("family", "settings"), CASES[:1] + CASES[6:9], ids=IDS[:1] + IDS[6:9])
def test_a_pack_of_one_ends_where_the_unpacked_training_ends(family: str, settings: dict) -> None:
    make = maker(family, settings)
    one = Pack(fuse(make, SEEDS[:1], torch.device("cpu")))
    assert one.fused  # the fused engine, with one member
    train(one)
    alone = Pack([make(SEEDS[0])])
    assert not alone.fused
    train(alone)
    assert_close(one.members[0], alone.members[0])


@pytest.mark.parametrize(("family", "settings"), CASES, ids=IDS)
def test_a_diverged_member_leaves_the_others_as_an_undisturbed_pack(
    family: str, settings: dict
) -> None:
    make = maker(family, settings)
    calm = Pack(fuse(make, SEEDS, torch.device("cpu")))
    hit = Pack(fuse(make, SEEDS, torch.device("cpu")))
    for pack in (calm, hit):
        pack.train_epoch()
    # member 1 blows up: every weight non-finite, then frozen as the trial does
    with torch.no_grad():
        for stack in hit.engine.stacks.values():
            for t in stack.params.values():
                t[1] = math.nan
    hit.freeze(1)
    hit.sync()
    frozen = {k: t.clone() for k, t in weights(hit.members[1]).items()}
    after = hit.train_epoch()
    train(calm, 1)
    hit.sync()
    for k in (0, 2):
        assert_close(hit.members[k], calm.members[k], tol=0.0)
        assert all(math.isfinite(float(v)) for v in after[k].values())
    # the frozen member stayed as it was frozen
    for k, t in weights(hit.members[1]).items():
        torch.testing.assert_close(t, frozen[k], rtol=0, atol=0, equal_nan=True, msg=k)


@pytest.mark.parametrize(("family", "settings"), CASES[1:2] + CASES[8:10], ids=IDS[1:2] + IDS[8:10])
def test_a_pack_checkpoint_continues_as_if_never_stopped(family: str, settings: dict) -> None:
    make = maker(family, settings)
    through = Pack(fuse(make, SEEDS[:2], torch.device("cpu")))
    train(through, 2)
    first = Pack(fuse(make, SEEDS[:2], torch.device("cpu")))
    train(first, 1)
    state = first.state_dict()
    restored = Pack(fuse(make, SEEDS[:2], torch.device("cpu")))
    restored.load_state_dict(state)
    train(restored, 1)
    for k in range(2):
        assert_close(restored.members[k], through.members[k], tol=0.0)


def test_a_family_that_does_not_train_in_packs_refuses_pack(monkeypatch):
    from models.gan import GAN
    from study.errors import UsageError
    from study.request import StudyRequest
    from study.runner.prepare import prepare

    monkeypatch.setattr(GAN, "packs", False)
    with pytest.raises(UsageError, match="family gan .* does not train in seed packs"):
        prepare(StudyRequest("gan_stability", smoke=True, pack=2))
