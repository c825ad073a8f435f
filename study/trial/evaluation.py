"""One evaluation of one seed: the family's own metrics, the sample metrics
of each of its samplers, the latent probes, the mode histogram of its main
sampler's samples and the weight diagnostics (sigma0 of each network)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from datasources import Dataset
from models import Family, generates
from scoring.few_labels import few_label_accuracies
from scoring.modes import ModeCounts
from scoring.registry import METRICS, drawn, in_spaces, score_samples
from scoring.spectral import TopSingular
from study.studies import TrialConfig
from study.trial.probes import arithmetic_probe, latent_probes
from study.trial.seeds import stream_seed


@dataclass
class Evaluation:
    metrics: dict[str, float]
    pictures: dict[str, tuple[Tensor, int]]  # kind -> (images, images per row)
    modes: ModeCounts | None = None  # the main sampler's mode histogram
    layers: dict[str, str] = field(default_factory=dict)  # sigma0_<net> -> its weight


def evaluate(
    family: Family,
    data: Dataset,
    cfg: TrialConfig,
    seed: int,
    spectral: TopSingular,
    final: bool = False,
) -> Evaluation:
    """The family's own metrics; for a generating family every registered
    sample metric of each of its samplers (the first also unsuffixed), and
    at the `final` evaluation its final stage and that stage's samplers,
    their noise over cfg.eval_draws draws and fid
    and modes_covered in cfg.eval_classifiers classifiers' spaces; for one
    with a latent space its probes (at the `final` evaluation latent
    arithmetic too), and at the `final` one, with
    cfg.finetune_labels, an encoder's few-label accuracies; sigma0 of every network (`spectral`
    keeps the seed's power-iteration vectors between evaluations). `seed`:
    the eval seed, which draws the samples scored."""
    metrics = dict(family.evaluate())
    probed, pictures = latent_probes(
        family, data, cfg.eval_samples, cfg.probe_labels, seed, cfg.anomaly_class
    )
    out = Evaluation(metrics | probed, pictures)
    if final:
        arithmetic, picture = arithmetic_probe(family, data, seed)
        out.metrics |= arithmetic
        out.pictures |= picture
    for net, module in family.networks().items():
        sigma, layer = spectral.top(net, module)
        if layer:
            out.metrics[f"sigma0_{net}"] = sigma
            out.layers[f"sigma0_{net}"] = layer
    if generates(type(family)):
        if final:  # a stage trained after the model (a learned prior), then scored
            out.metrics |= family.final_stage()
        score_samplers(family, data, cfg, seed, out, final)
        if final and cfg.eval_draws > 1:
            out.metrics |= draw_noise(family, data, cfg, seed, out.metrics)
        if final and cfg.eval_classifiers > 1 and data.is_image:
            samples, _ = out.pictures["samples"]
            out.metrics |= in_spaces(samples, data.name, cfg.eval_classifiers)
    if final and cfg.finetune_labels and (encoder := family.encoder_network()) is not None:
        n = cfg.finetune_labels  # checked by the driver: an encoder, labelled images, N of them
        few = (data.train_x[:n], data.train_y[:n])
        out.metrics |= few_label_accuracies(
            encoder, few, (data.test_x, data.test_y), data.n_classes, seed
        )
    return out


def draw_noise(
    family: Family, data: Dataset, cfg: TrialConfig, seed: int, first: dict[str, float]
) -> dict[str, float]:
    """<metric>_draws_mean and _draws_std (ddof 1) of the main sampler's
    sample metrics over cfg.eval_draws independent draws of samples: `first`
    (the evaluation's own, drawn from seed + 1) and eval_draws - 1 more, each
    from its own stream of the eval seed. A difference between configurations
    smaller than this spread is evaluation noise, not training."""
    device = data.train_x.device
    draws = [first]
    for r in range(1, cfg.eval_draws):
        gen = torch.Generator(device=device).manual_seed(stream_seed(seed, "eval_seed", r))
        samples = family.sample(cfg.eval_samples, generator=gen)
        scored, _ = score_samples(
            samples, data.name, inception_weights=cfg.inception_weights,
            labels=family.sample_labels(cfg.eval_samples),
        )  # fmt: skip
        draws.append(scored)
    out = {}
    for k in draws[1]:
        values = torch.tensor([d[k] for d in draws], dtype=torch.float64)
        out[drawn(k, "mean")], out[drawn(k, "std")] = float(values.mean()), float(values.std())
    return out


def score_samplers(
    family: Family, data: Dataset, cfg: TrialConfig, seed: int, out: Evaluation, final: bool
) -> None:
    names = family.samplers() or ("",)
    for name in names + (family.final_samplers() if final else ()):
        # the same latent noise at every evaluation: grids are comparable over epochs
        gen = torch.Generator(device=data.train_x.device).manual_seed(seed + 1)
        t0 = time.perf_counter()
        samples = family.sample(cfg.eval_samples, generator=gen, sampler=name or None)
        if samples.is_cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - t0) * 1000 / cfg.eval_samples
        scored, modes = score_samples(
            samples,
            data.name,
            inception_weights=cfg.inception_weights,
            seconds=seconds,
            labels=family.sample_labels(cfg.eval_samples),
        )
        if "samples" not in out.pictures:
            out.metrics |= scored
            out.pictures["samples"] = (samples, 8)
            out.modes = modes
        if name:
            out.metrics |= {f"{k}_{name}": v for k, v in scored.items() if METRICS[k].per_sampler}
