"""The one Ray Tune trainable: runs any family through the trial contract.

Seeds everything, loads the data once onto the trial's device, trains epoch by
epoch, evaluates every `eval_every` epochs and at the end, and at each
evaluation writes the buffered MLflow metrics, then reports with a
checkpoint. A non-finite or exploding loss ends the trial as `diverged`; the
collapse rules of scoring.outcomes may end it as `collapsed`.
"""

from __future__ import annotations

import random
import time
import traceback
from dataclasses import asdict, dataclass, field
from functools import cache
from socket import gethostname
from typing import Any

import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from ray.tune.search.repeater import TRIAL_INDEX

from datasources import Dataset, load_dataset
from datasources.cache import install
from models import FAMILIES, Family, encodes, generates
from models.pack import Pack, fuse
from scoring.registry import METRICS, evaluate_samples, pixel_probe, provenance
from study.clock import Clock
from study.probes import latent_probes
from study.session import TrialSession, TuneSession
from study.spec import TrialConfig, axis_labels, config_id, split_settings
from study.studies import STUDIES
from study.tracking import TrialRun
from study.trial import Member, Trial, read_scalars


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one invocation shares (passed with tune.with_parameters)."""

    study: str
    dataset: str
    data_dir: str
    fixed: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    threads: int
    searched: tuple[str, ...]  # the axes, to name runs by what varies
    phase: str = "search"  # or "confirm": the search's best on fresh seeds
    # this phase's seed indices are seed_base .. seed_base + seeds - 1; a
    # trial trains `pack` of them at once (a seed pack) or one
    seed_base: int = 0
    seeds: int = 1
    pack: int = 1
    # cache entries (the feature classifier) the driver built, name -> bytes:
    # installed on whatever node a trial runs, so one study scores in one
    # feature space whatever each node's own cache holds
    cache_files: dict[str, bytes] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def trial_device() -> torch.device:
    # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU share, if it has one
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def speed_ups(family: Family, cfg: TrialConfig, device: torch.device):
    """Opt-in GPU speed-ups. `compile` compiles each network of the family in
    place (state_dict keys stay the same, so checkpoints do not change);
    `bf16` returns an autocast context for the training step. On a CPU
    without bf16 units both cost more than they give (docs/performance.md)."""
    if cfg.compile:
        for module in vars(family).values():
            if isinstance(module, torch.nn.Module):
                module.compile()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)


@cache
def tracking_client(uri: str) -> MlflowClient:
    """One client per process and store: a reused trial process keeps its
    connection pool (a sqlite engine, or HTTP sessions) from trial to trial."""
    return MlflowClient(uri)


def scored_with(
    family: str, data: Dataset, ctx: TrialContext, probe_labels: int, device: torch.device
) -> dict[str, str]:
    """What the params record about how the trial is scored: the feature
    extractor of the sample metrics, and an encoder's baseline, the linear
    probe on raw pixels of the same labelled images."""
    out = provenance(ctx.dataset, str(device)) if generates(FAMILIES[family]) else {}
    if encodes(FAMILIES[family]) and data.is_image:
        n = min(probe_labels, len(data.train_x))
        out["probe_pixels_accuracy"] = f"{pixel_probe(ctx.dataset, n, ctx.data_dir):.4f}"
    return out


def run_name(values: dict[str, Any], searched: tuple[str, ...], seed: int) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.2g}" if isinstance(v, float) else str(v)

    return " ".join([*(f"{k}={fmt(values[k])}" for k in searched), f"seed={seed}"])


def evaluate(
    family: Family, data: Dataset, cfg: TrialConfig, seed: int
) -> tuple[dict[str, float], dict[str, tuple[torch.Tensor, int]]]:
    """The family's own metrics; for a generating family every registered
    sample metric of each of its samplers (the first also unsuffixed); for
    one with a latent space its probes. Pictures: kind -> (images, per row)."""
    metrics = dict(family.evaluate())
    probed, pictures = latent_probes(family, data, cfg.eval_samples, cfg.probe_labels, seed)
    metrics |= probed
    if not generates(type(family)):
        return metrics, pictures
    for name in family.samplers() or ("",):
        # the same latent noise at every evaluation: grids are comparable over epochs
        gen = torch.Generator(device=data.train_x.device).manual_seed(seed + 1)
        t0 = time.perf_counter()
        samples = family.sample(cfg.eval_samples, generator=gen, sampler=name or None)
        if samples.is_cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - t0) * 1000 / cfg.eval_samples
        scored = evaluate_samples(
            samples,
            data.name,
            inception_weights=cfg.inception_weights,
            seconds=seconds,
            labels=family.sample_labels(cfg.eval_samples),
        )
        if "samples" not in pictures:
            metrics |= scored
            pictures["samples"] = (samples, 8)
        if name:
            metrics |= {f"{k}_{name}": v for k, v in scored.items() if METRICS[k].per_sampler}
    return metrics, pictures


def train(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Ray Tune trainable."""
    run_trial(config, ctx, TuneSession())


def run_trial(config: dict[str, Any], ctx: TrialContext, session: TrialSession) -> None:
    clock = Clock()
    clock.stamp("entered_at")
    clock.seconds["process_seconds"] = session.process_seconds
    study = STUDIES[ctx.study]
    values = {**ctx.fixed, **{k: v for k, v in config.items() if k != TRIAL_INDEX}}
    trial_cfg, family_cfg = split_settings(study, values)
    seeds = [trial_cfg.seed + i for i in member_indices(ctx, int(config.get(TRIAL_INDEX, 0)))]
    # the full resolved config, defaults included: what the params record and
    # what the configuration id is a hash of
    resolved = {
        **asdict(trial_cfg),
        **asdict(family_cfg),
        **axis_labels(study, values),  # a technique's name beside its settings
        "dataset": ctx.dataset,
    }
    cid = config_id(resolved)
    torch.set_num_threads(ctx.threads)
    device = trial_device()
    with clock.phase("data_seconds"):
        for name, blob in ctx.cache_files.items():
            install(name, blob)
        data = load_dataset(ctx.dataset, ctx.data_dir)
        if trial_cfg.train_size:
            data = data.subset(trial_cfg.train_size)
        data = data.to(device)
        scored_in = scored_with(study.family, data, ctx, trial_cfg.probe_labels, device)
    params = {
        **resolved,
        "config_id": cid,
        "family": study.family,
        "device": str(device),
        "threads": ctx.threads,
        **scored_in,
    }
    with clock.phase("mlflow_seconds"):
        names = [run_name(values, ctx.searched, seed) for seed in seeds]
        runs = open_runs(ctx, session, params, dict(zip(seeds, names, strict=True)))
    try:
        with clock.phase("model_seconds"):
            pack = build(study.family, family_cfg, data, seeds)
            autocast = speed_ups(pack.leader, trial_cfg, device)
        members = [
            Member(i, family, seed, run)
            for i, (family, seed, run) in enumerate(zip(pack.members, seeds, runs, strict=True))
        ]
        Trial(study, trial_cfg, data, cid, pack, members, session, clock, evaluate).run(autocast)
    except MlflowException:
        # MLflow itself failed (past the client's retries: an outage); writing
        # the failure there would wait out the retries again. The driver
        # closes the runs, or --resume continues them.
        raise
    except Exception as e:
        for run in runs:
            run.finish("failed", f"{type(e).__name__}: {e}"[:5000], status="FAILED")
            run.log_json({"traceback": traceback.format_exc()}, "failure.json")
        raise


def open_runs(
    ctx: TrialContext, session: TrialSession, params: dict[str, Any], names: dict[int, str]
) -> list[TrialRun]:
    """The run of each seed the trial trains (`names`: seed -> run name;
    `params` the trial's, each run's with its seed), found again on a retry by
    the trial's id and, in a seed pack, the member's place in it."""
    # where this attempt runs; a retry may land elsewhere, so tags, not params
    tags = {"ray_node": session.node_id, "host": gethostname(), "phase": ctx.phase}
    if len(names) > 1:
        tags["pack"] = str(len(names))
    return [
        TrialRun.open(
            tracking_client(ctx.tracking_uri),
            ctx.experiment_id,
            ctx.parent_run_id,
            session.trial_id,
            name,
            params | {"seed": seed},
            tags=tags,
            member="" if len(names) == 1 else str(i),
        )
        for i, (seed, name) in enumerate(names.items())
    ]


def member_indices(ctx: TrialContext, index: int) -> range:
    """The seed indices a trial trains: the `index`-th pack of this phase's
    seeds (one seed when packs are off)."""
    first = ctx.seed_base + index * ctx.pack
    return range(first, min(first + ctx.pack, ctx.seed_base + ctx.seeds))


def build(family: str, cfg: Any, data: Dataset, seeds: list[int]) -> Pack:
    """The trial's members: one family, or a fused pack of one per seed. Each
    is seeded right before it is built, after every set-up step, so what a
    process loaded or cached earlier (a reused one) cannot shift its streams."""

    def make(seed: int) -> Family:
        seed_everything(seed)
        return FAMILIES[family](cfg, data.train_x, data.test_x, data.train_y)

    if len(seeds) == 1:
        return Pack([make(seeds[0])])
    return Pack(fuse(make, seeds, data.train_x.device))


__all__ = ["TrialContext", "evaluate", "read_scalars", "run_trial", "train"]
