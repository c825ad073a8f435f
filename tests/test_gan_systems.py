"""The chapters' GAN techniques, each against its published definition:
optimisers, ProGAN's equalized learning rate, pixel norm and growing,
StyleGAN's AdaIN, style mixing and truncation, minibatch discrimination,
conditional GANs and class_accuracy; then the study through the CLI."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datasources import load_dataset
from models.config import ConfigError
from models.gan import GAN, GANConfig, growth
from models.gan.parts import MinibatchDiscrimination, PixelNorm, equalize_lr
from models.gan.stylegan import AdaIN, StyleGenerator
from scoring.features import extractor_for
from scoring.registry import evaluate_samples
from study.studies import STUDIES
from study.studies.spec import resolve, split_settings
from tests.conftest import study_runs

IMAGES = (1, 28, 28)


def _gan(n: int = 128, **kw) -> GAN:
    torch.manual_seed(0)
    x = torch.rand(n, *IMAGES)
    return GAN(GANConfig(batch_size=32, channels=4, **kw), x, x[:8], torch.arange(n) % 10)


# --- optimisers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kind, options",
    [
        ("adam", torch.optim.Adam, {"betas": (0.2, 0.9), "fused": True}),
        ("nadam", torch.optim.NAdam, {"betas": (0.2, 0.9), "foreach": True}),
        ("rmsprop", torch.optim.RMSprop, {"alpha": 0.8, "momentum": 0.5, "foreach": True}),
        ("sgd", torch.optim.SGD, {"momentum": 0.5, "foreach": True}),
    ],
)
def test_each_optimiser_gets_its_own_parameters_and_its_state_survives_a_checkpoint(
    name, kind, options
):
    settings = {"beta1": 0.2, "beta2": 0.9, "rms_alpha": 0.8, "momentum": 0.5}
    gan = _gan(arch="mlp", width=16, optimizer=name, optimizer_d="adam", lr_g=3e-3, **settings)
    assert type(gan.opt_g) is kind and type(gan.opt_d) is torch.optim.Adam
    group = gan.opt_g.param_groups[0]
    assert group["lr"] == 3e-3 and all(group[k] == v for k, v in options.items())
    gan.train_epoch()
    buf = io.BytesIO()
    torch.save(gan.state_dict(), buf)
    buf.seek(0)
    other = _gan(arch="mlp", width=16, optimizer=name, optimizer_d="adam", lr_g=3e-3, **settings)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.opt_g.state_dict()["state"].keys() == gan.opt_g.state_dict()["state"].keys()
    torch.manual_seed(3)
    a = gan.train_epoch()
    torch.manual_seed(3)
    b = other.train_epoch()
    assert float(a["g_loss"]) == float(b["g_loss"]) and float(a["d_loss"]) == float(b["d_loss"])


def test_the_style_mapping_network_learns_at_a_hundredth_of_the_rate():
    gan = _gan(arch="style", lr_g=2e-3)
    rates = {id(p): g["lr"] for g in gan.opt_g.param_groups for p in g["params"]}
    mapping = {id(p) for p in gan.G.mapping.parameters()}
    assert mapping and all(rates[i] == pytest.approx(2e-5) for i in mapping)
    assert {r for i, r in rates.items() if i not in mapping} == {2e-3}
    assert len(rates) == len(list(gan.G.parameters()))


def test_optimizer_d_defaults_to_the_generators():
    gan = _gan(arch="mlp", width=16, optimizer="rmsprop")
    assert type(gan.opt_d) is torch.optim.RMSprop


# --- ProGAN ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, fan_in",
    [
        (nn.Linear(400, 300), 400),
        (nn.Conv2d(8, 64, 3), 8 * 9),
        # each output of a stride-2 transposed 4x4 conv sums in_channels x 4 taps
        (nn.ConvTranspose2d(32, 16, 4, 2, 1), 32 * 16 / 4),
    ],
)
def test_equalized_lr_stores_unit_normal_weights_and_scales_them_by_the_he_constant(layer, fan_in):
    torch.manual_seed(0)
    equalize_lr(layer)
    stored = layer.parametrizations.weight.original
    c = math.sqrt(2 / fan_in)
    assert stored.std().item() == pytest.approx(1.0, abs=0.05)
    assert abs(stored.mean().item()) < 0.05 and not layer.bias.detach().any()
    assert torch.allclose(layer.weight, stored * c)
    # the update an optimiser applies to the stored weight reaches the layer
    # scaled by c: the gradient w.r.t. the stored weight is c x the usual one
    x = torch.randn(4, *((400,) if isinstance(layer, nn.Linear) else (layer.in_channels, 6, 6)))
    layer(x).square().sum().backward()
    plain = stored.detach().mul(c).requires_grad_(True)
    bias = layer.bias.detach()
    if isinstance(layer, nn.ConvTranspose2d):  # (parametrized layers are subclasses)
        y = F.conv_transpose2d(x, plain, bias, 2, 1)
    else:
        y = F.linear(x, plain, bias) if isinstance(layer, nn.Linear) else F.conv2d(x, plain, bias)
    y.square().sum().backward()
    assert torch.allclose(stored.grad, c * plain.grad, rtol=1e-4, atol=1e-6)


def test_equalized_lr_reaches_every_layer_of_both_networks():
    gan = _gan(arch="dcgan", equalized_lr=True, progressive=True)
    for net in (gan.G, gan.D):
        layers = [
            m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d)
        ]
        assert layers and all(hasattr(m, "parametrizations") for m in layers)


def test_pixel_norm_gives_each_pixel_unit_mean_square_over_channels():
    x = torch.randn(4, 16, 5, 5) * torch.rand(4, 1, 5, 5) * 30
    out = PixelNorm()(x)
    assert torch.allclose(out.square().mean(dim=1), torch.ones(4, 5, 5), atol=1e-4)
    gan = _gan(arch="dcgan", pixelnorm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gan.G.modules())
    assert sum(isinstance(m, PixelNorm) for m in gan.G.modules()) == 2  # after each layer


def test_the_fade_in_weight_moves_from_0_to_1_over_fade_epochs():
    assert growth(1.9, 2, 2, 2) == (0, 1.0)  # the first level needs no fade
    assert [growth(t, 2, 2, 2) for t in (2.0, 3.0, 4.0)] == [(1, 0.0), (1, 0.5), (2, 0.0)]
    assert growth(5.0, 2, 2, 2) == (2, 0.5) and growth(9.0, 2, 2, 2) == (2, 1.0)
    assert [growth(t, 2, 3, 1) for t in (3.0, 3.5, 4.0, 5.9)] == [(1, 0.0), (1, 0.5)] + [
        (1, 1.0)
    ] * 2
    gan = _gan(arch="dcgan", progressive=True, stage_epochs=2, fade_epochs=1)
    seen = []
    for _ in range(5):
        seen.append((gan.G.stage, gan.G.alpha, gan.D.stage, gan.D.alpha))
        gan.train_epoch()
    assert [s[:2] for s in seen] == [(0, 1.0), (0, 1.0), (1, 0.0), (1, 1.0), (2, 0.0)]
    assert all(s[:2] == s[2:] for s in seen)  # the discriminator grows in step


def _plain_copy(net: nn.Module, cfg: dict, which: str) -> nn.Module:
    """The same architecture built without growth, given the grown network's
    weights (the progressive one only adds to/from-RGB layers)."""
    plain = getattr(_gan(**cfg), which)
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert not missing and all("_rgb" in k for k in unexpected)
    return plain


def test_at_alpha_1_the_grown_networks_equal_the_plain_ones_and_at_alpha_0_the_previous_stage():
    gan = _gan(arch="dcgan", progressive=True)
    G, D = gan.G.eval(), gan.D.eval()
    z, x = torch.randn(6, 32), torch.rand(6, *IMAGES)
    G.grow(2, 1.0), D.grow(2, 1.0)
    assert torch.allclose(G(z), _plain_copy(G, {"arch": "dcgan"}, "G").eval()(z), atol=1e-6)
    assert torch.allclose(D(x), _plain_copy(D, {"arch": "dcgan"}, "D").eval()(x), atol=1e-6)
    # stage 1 at alpha 1, written out: level 1's image upsampled to 28 x 28
    G.grow(1, 1.0)
    by_hand = G.to_rgb[1](G.blocks[1](G.blocks[0](z)))
    expected = (torch.tanh(F.interpolate(by_hand, scale_factor=2, mode="nearest")) + 1) / 2
    assert torch.allclose(G(z), expected, atol=1e-6)
    for net, inp in ((G, z), (D, x)):  # a new level at alpha 0 changes nothing yet
        net.grow(0, 1.0)
        before = net(inp)
        net.grow(1, 0.0)
        assert torch.allclose(net(inp), before, atol=1e-6)
        net.grow(1, 0.5)
        assert not torch.allclose(net(inp), before, atol=1e-4)


def test_progressive_growing_needs_a_convolutional_architecture():
    with pytest.raises(ConfigError, match="progressive"):
        _gan(arch="mlp", progressive=True)
    with pytest.raises(ConfigError, match="fade_epochs"):
        _gan(arch="dcgan", progressive=True, stage_epochs=1, fade_epochs=2)


# --- StyleGAN ---------------------------------------------------------------------


def test_adain_sets_each_samples_channel_statistics_from_the_style():
    torch.manual_seed(0)
    adain = AdaIN(8, 4)
    with torch.no_grad():
        adain.affine.weight.normal_()
    x, w = torch.randn(3, 4, 6, 6) * 5 + 2, torch.randn(3, 8)
    out = adain(x, w)
    ys, yb = adain.affine(w).chunk(2, dim=1)
    assert torch.allclose(out.mean(dim=(2, 3)), yb, atol=1e-4)
    assert torch.allclose(out.std(dim=(2, 3), unbiased=False), ys.abs(), atol=1e-3)


def _style(**kw) -> StyleGenerator:
    torch.manual_seed(0)
    args = {"mapping_layers": 2, "mixing_prob": 1.0, "truncation": 0.7, "pixelnorm": False}
    return StyleGenerator(IMAGES, 4, 8, **(args | kw))


def test_style_mixing_switches_to_the_second_style_from_the_crossover_on():
    G = _style()
    w1, w2 = torch.randn(64, 8), torch.randn(64, 8)
    mixed = G.mix(w1[:, None].expand(-1, G.n_layers, -1), w2)
    crossovers = set()
    for i in range(64):
        same = [torch.equal(mixed[i, layer], w1[i]) for layer in range(G.n_layers)]
        k = same.index(False)
        assert 1 <= k < G.n_layers and all(same[:k])
        assert all(torch.equal(mixed[i, layer], w2[i]) for layer in range(k, G.n_layers))
        crossovers.add(k)
    assert len(crossovers) > 2  # random crossovers
    never = _style(mixing_prob=0.0).mix(w1[:, None].expand(-1, 6, -1), w2)
    assert torch.equal(never, w1[:, None].expand(-1, 6, -1))


def test_style_mixing_changes_only_the_layers_after_the_crossover():
    G = _style().eval()
    ws = torch.randn(2, 8)[:, None].expand(-1, G.n_layers, -1).clone()
    other = ws.clone()
    other[:, 2:] = torch.randn(2, 8)[:, None]  # crossover at layer 2: level 1 on
    gen = torch.Generator().manual_seed(0)
    h0 = G.blocks[0](torch.zeros(2, 8), (ws, gen))
    gen.manual_seed(0)
    h0_mixed = G.blocks[0](torch.zeros(2, 8), (other, gen))
    assert torch.equal(h0, h0_mixed)  # layers 0 and 1 are untouched
    assert not torch.allclose(G.blocks[1](h0, (ws, None)), G.blocks[1](h0, (other, None)))


def test_truncation_at_psi_0_gives_one_image_per_label_and_the_samplers_are_scored_names():
    gan = _gan(arch="style", conditional=True, mapping_layers=2)
    with torch.no_grad():
        gan.G.w_avg.normal_()  # one centre per class
    assert gan.samplers() == ("psi1", "psi0.7") and GAN.is_sampler("psi0.7")
    out = gan.sample(30, sampler="psi0")  # noise scales start at zero: noise-free
    labels = gan.sample_labels(30)
    for c in range(10):
        same = out[labels == c]
        assert torch.allclose(same, same[0].expand_as(same), atol=1e-6)
    assert not torch.allclose(out[0], out[1], atol=1e-3)
    assert not torch.allclose(gan.sample(30, sampler="psi1")[0], out[0], atol=1e-4)


def test_w_avg_tracks_each_classes_mean_style():
    G = _style(n_classes=3, mixing_prob=0.0).train()
    z, y = torch.randn(300, 8), torch.arange(300) % 3
    for _ in range(3000):
        G.track(G.map(z, y).detach(), y)
    means = torch.stack([G.map(z[y == c], y[y == c]).mean(0) for c in range(3)])
    assert torch.allclose(G.w_avg, means.detach(), atol=1e-4)


# --- minibatch discrimination, conditional GANs -------------------------------------


def test_minibatch_discrimination_follows_its_definition_and_separates_copies_from_variety():
    torch.manual_seed(0)
    layer = MinibatchDiscrimination(6, kernels=3, kernel_dim=4)
    f = torch.randn(5, 6)
    out = layer(f)
    m = (f @ layer.T).reshape(5, 3, 4)
    expected = torch.tensor(
        [
            [
                sum(math.exp(-(m[i, b] - m[j, b]).abs().sum().item()) for j in range(5) if j != i)
                for b in range(3)
            ]
            for i in range(5)
        ]
    )
    assert torch.equal(out[:, :6], f) and torch.allclose(out[:, 6:], expected, atol=1e-5)
    copies = layer(torch.randn(1, 6).expand(16, 6))[:, 6:]
    varied = layer(torch.randn(16, 6) * 10)[:, 6:]
    assert torch.allclose(copies, torch.full_like(copies, 15.0))  # n - 1 near-copies
    assert varied.max() < 1.0


def test_the_projection_discriminator_adds_the_label_embedding_dot_features():
    gan = _gan(arch="dcgan", conditional=True)
    D = gan.D.eval()
    x, y = torch.rand(4, *IMAGES), torch.tensor([0, 3, 3, 9])
    f = D.head(D.blocks[1](D.blocks[2](D.pack(x))))
    expected = D.linear(f) + (D.embed(y) * f).sum(1, keepdim=True)
    assert torch.allclose(D(x, y), expected, atol=1e-6)
    assert not torch.allclose(D(x, y), D(x, (y + 1) % 10))


def test_a_conditional_gan_samples_balanced_labels_and_needs_labels():
    gan = _gan(arch="mlp", width=16, conditional=True)
    assert torch.bincount(gan.sample_labels(100)).tolist() == [10] * 10
    torch.manual_seed(1)
    a = gan.sample(20, generator=torch.Generator().manual_seed(0))
    # the same noise with other labels gives other images: the label is an input
    gan.sample_labels = lambda n: (torch.arange(n) + 1) % 10
    b = gan.sample(20, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(a, b)
    with pytest.raises(ConfigError, match="labels"):
        GAN(GANConfig(conditional=True), torch.rand(64, *IMAGES), torch.rand(8, *IMAGES))
    with pytest.raises(ConfigError, match="pac"):
        _gan(arch="mlp", conditional=True, pac=2)


def test_class_accuracy_of_real_held_out_images_is_the_classifiers_test_accuracy():
    data = load_dataset("mnist5k")
    scored = evaluate_samples(data.test_x, "mnist5k", labels=data.test_y)
    assert scored["class_accuracy"] == pytest.approx(extractor_for("mnist5k").accuracy, abs=1e-6)
    wrong = evaluate_samples(data.test_x, "mnist5k", labels=(data.test_y + 1) % 10)
    assert wrong["class_accuracy"] < 0.05
    assert "class_accuracy" not in evaluate_samples(data.test_x[:100], "mnist5k")


# --- the study's axes ------------------------------------------------------------


def test_a_technique_axis_stands_for_its_settings_and_lr_sets_both_networks():
    study = STUDIES["gan_stabilisers"]
    resolved = resolve(study, {"technique": "style", "lr": "0.001"})
    assert set(resolved.axes) == set() and resolved.fixed["technique"] == "style"
    _, cfg = split_settings(study, resolved.fixed)
    assert (cfg.arch, cfg.lr_g, cfg.lr_d) == ("style", 1e-3, 1e-3)
    _, cfg = split_settings(study, {**resolved.fixed, "technique": "nadam"})
    assert (cfg.arch, cfg.optimizer) == ("dcgan", "nadam")
    with pytest.raises(ConfigError, match="not one of"):
        resolve(study, {"technique": "dropout"})
    with pytest.raises(ConfigError, match="out of range"):
        resolve(study, {"lr": "5"})
    with pytest.raises(ConfigError, match="several settings"):
        resolve(study, {}, sweeps={"technique": ["style", "nadam"]})


def test_gan_stabilisers_trains_every_technique_through_the_cli(tmp_path, shared_ray):
    uri = f"sqlite:///{tmp_path}/store.db"
    # every technique once; the discriminators on SGD with momentum, so the
    # optimiser knobs the techniques leave alone train through the CLI too
    args = ["gan_stabilisers", "--smoke", "--set", "lr=0.001", "--num-samples", "9"]
    args += ["--max-concurrent", "1"]  # one trial process for the nine, seconds of CPU less
    args += ["--set", "epochs=1"]  # one epoch and one evaluation each: a technique's path runs
    args += ["--set", "optimizer_d=sgd", "--set", "momentum=0.5"]
    out = shared_ray.run_study(
        [*args, "--seeds", "1", "--tracking-uri", uri, "--name", "s"], tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "By technique" in out.stdout
    groups = pd.read_csv(tmp_path / "runs" / "s" / "summary" / "by_technique.csv")
    techniques = set(STUDIES["gan_stabilisers"].axes["technique"].values)
    assert set(groups["technique"]) == techniques and (groups["trials"] == 1).all()
    _, children = study_runs(uri, "gan_stabilisers")
    by_name = {r.data.params["technique"]: r for r in children}
    assert set(by_name) == techniques
    expected = {
        "nadam": ("optimizer", "nadam"), "rmsprop": ("optimizer", "rmsprop"),
        "equalized_lr": ("equalized_lr", "True"), "pixelnorm": ("pixelnorm", "True"),
        "progressive": ("progressive", "True"), "style": ("arch", "style"),
        "mbdisc": ("mbdisc", "True"), "conditional": ("conditional", "True"),
    }  # fmt: skip
    for name, (key, value) in expected.items():
        assert by_name[name].data.params[key] == value, name
    for run in children:
        assert run.data.params["lr_g"] == run.data.params["lr_d"] == "0.001"
        assert (run.data.params["optimizer_d"], run.data.params["momentum"]) == ("sgd", "0.5")
        assert run.data.tags["outcome"] in ("ok", "collapsed") and "fid" in run.data.metrics
        labelled = run.data.params["technique"] == "conditional"
        assert ("class_accuracy" in run.data.metrics) == labelled
    per_sampler = {
        f"{m}_{psi}" for m in ("fid", "recall", "coverage") for psi in ("psi1", "psi0.7")
    }
    assert per_sampler <= set(by_name["style"].data.metrics)
