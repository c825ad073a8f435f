"""The one Ray Tune trainable: runs any family through the trial contract.

Seeds everything, loads the data once onto the trial's device, trains epoch by
epoch, evaluates every `eval_every` epochs and at the end, and at each
evaluation writes the buffered MLflow metrics, then reports with a
checkpoint. A non-finite or exploding loss ends the trial as `diverged`; the
collapse rules of scoring.outcomes may end it as `collapsed`.
"""

from __future__ import annotations

import random
import traceback
from dataclasses import asdict
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
from models import FAMILIES, Family, encodes, generates, main_sampler
from models.pack import Pack, fuse
from scoring.registry import pixel_probe, provenance
from study.internals import mlflow_environment
from study.plan import Plan
from study.studies import TrialConfig, axis_labels, config_id, split_settings
from study.tracking.lineage import Lineage
from study.tracking.trial_run import TrialRun
from study.trial.clock import Clock
from study.trial.course import Course
from study.trial.evaluation import evaluate
from study.trial.loop import Member, Trial, read_scalars
from study.trial.seeds import SeedSources
from study.trial.session import TrialSession, TuneSession


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
    family: str, data: Dataset, plan: Plan, probe_labels: int, device: torch.device
) -> dict[str, str]:
    """What the params record about how the trial is scored: the feature
    extractor of the sample metrics, and an encoder's baseline, the linear
    probe on raw pixels of the same labelled images."""
    out = provenance(plan.dataset, str(device)) if generates(FAMILIES[family]) else {}
    if encodes(FAMILIES[family]) and data.is_image:
        n = min(probe_labels, len(data.train_x))
        out["probe_pixels_accuracy"] = f"{pixel_probe(plan.dataset, n, plan.data_dir):.4f}"
    return out


def run_name(values: dict[str, Any], searched: tuple[str, ...], seed: int) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.2g}" if isinstance(v, float) else str(v)

    return " ".join([*(f"{k}={fmt(values[k])}" for k in searched), f"seed={seed}"])


def train(config: dict[str, Any], plan: Plan, phase: str, cache_files: dict[str, bytes]) -> None:
    """The Ray Tune trainable. `cache_files`: cache entries (the feature
    classifier) the driver built, name -> bytes, installed on whatever node
    the trial runs, so one study scores in one feature space."""
    for name, blob in cache_files.items():
        install(name, blob)
    run_trial(config, plan, phase, TuneSession())


def run_trial(config: dict[str, Any], plan: Plan, phase: str, session: TrialSession) -> None:
    """One trial of `phase` ("search" or "confirm"): Tune's `config` holds the
    searched values and, with several trials a configuration, its index."""
    mlflow_environment(plan.tracking_env)
    clock = Clock()
    clock.stamp("entered_at")
    clock.seconds["process_seconds"] = session.process_seconds
    study = plan.study
    values = {**plan.resolved.fixed, **{k: v for k, v in config.items() if k != TRIAL_INDEX}}
    family = study.family_of(values)
    trial_cfg, family_cfg = split_settings(study, values)
    members = plan.phase(phase).members(int(config.get(TRIAL_INDEX, 0)))
    seeds = [trial_cfg.seed + i for i in members]
    sources = {seed: SeedSources.of(trial_cfg, seed) for seed in seeds}
    # the full resolved config, defaults included: what the params record and
    # what the configuration id is a hash of
    resolved = {
        **asdict(trial_cfg),
        **asdict(family_cfg),
        **axis_labels(study, values),  # a technique's name beside its settings
        "dataset": plan.dataset,
    }
    cid = config_id(resolved)
    torch.set_num_threads(plan.threads)
    device = trial_device()
    with clock.phase("data_seconds"):
        data = load_dataset(plan.dataset, plan.data_dir)
        if trial_cfg.train_size:
            data = data.subset(trial_cfg.train_size)
        if trial_cfg.anomaly_class >= 0:  # checked by the driver: a reconstructing family
            data = data.without_class(trial_cfg.anomaly_class)
        data = data.to(device)
        scored_in = scored_with(family, data, plan, trial_cfg.probe_labels, device)
    params = {
        **resolved,
        "config_id": cid,
        "family": family,
        "device": str(device),
        "threads": plan.threads,
        "train_samples": len(data.train_x),  # after train_size and anomaly_class
        **scored_in,
    }
    state = session.restore(device)  # a retry's, or under PBT a clone's
    lineage = Lineage.of(state, session.trial_id)
    with clock.phase("mlflow_seconds"):
        names = [run_name(values, plan.searched, seed) for seed in seeds]
        named = dict(zip(seeds, names, strict=True))
        kept = lineage if plan.population else None
        runs = open_runs(plan, phase, session, params, named, sources, lineage=kept)
    try:
        with clock.phase("model_seconds"):
            pack = build(family, family_cfg, data, list(sources.values()))
            autocast = speed_ups(pack.leader, trial_cfg, device)
        built: dict[str, Any] = {"param_count": param_count(pack.members[0])}
        if sampler := main_sampler(pack.leader):  # the one the unsuffixed metrics are of
            built["sampler"] = sampler
        for run in runs:  # known once built: one member's size, the main sampler's name
            run.log_params(built)
        members = [
            Member(index=i, family=member, seed=seed, eval_seed=sources[seed].eval_seed, run=run,
                   course=Course(sources[seed].eval_seed))
            for i, (member, seed, run) in enumerate(zip(pack.members, seeds, runs, strict=True))
        ]  # fmt: skip
        trial = Trial(
            study=study, cfg=trial_cfg, data=data, cid=cid, pack=pack, members=members,
            session=session, clock=clock, evaluate=evaluate, objectives=plan.objectives,
            state=state, lineage=lineage,
        )  # fmt: skip
        trial.run(autocast)
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
    plan: Plan,
    phase: str,
    session: TrialSession,
    params: dict[str, Any],
    names: dict[int, str],
    sources: dict[int, SeedSources],
    *,
    lineage: Lineage | None = None,
) -> list[TrialRun]:
    """The run of each seed the trial trains (`names`: seed -> run name;
    `params` the trial's, each run's with its seed and what it set), found
    again on a retry by the trial's id and, in a seed pack, the member's place;
    under PBT (`lineage`), a new run after each clone."""
    # where this attempt runs; a retry may land elsewhere, so tags, not params
    tags = {"ray_node": session.node_id, "host": gethostname(), "phase": phase}
    tags["seed_streams"] = "split" if next(iter(sources.values())).split else "one"
    if len(names) > 1:
        tags["pack"] = str(len(names))
    return [
        TrialRun.open(
            tracking_client(plan.tracking_uri),
            experiment_id=plan.experiment_id,
            parent_run_id=plan.parent_run_id,
            trial_id=session.trial_id,
            name=name,
            params=params | {"seed": seed} | sources[seed].params(),
            tags=tags,
            member="" if len(names) == 1 else str(i),
            lineage=lineage.params(i) if lineage else None,
        )
        for i, (seed, name) in enumerate(names.items())
    ]


def param_count(member: Family) -> int:
    """The parameters of a model's networks (a GAN's G and D together)."""
    nets = member.networks().values()
    return sum(p.numel() for net in nets for p in net.parameters())


def build(family: str, cfg: Any, data: Dataset, sources: list[SeedSources]) -> Pack:
    """The trial's members: one family, or a fused pack of one per seed. Each
    is seeded right before it is built, after every set-up step, so what a
    process loaded or cached earlier (a reused one) cannot shift its streams;
    its training streams are seeded right after (study/trial/seeds.py)."""
    device = data.train_x.device

    def make(src: SeedSources) -> Family:
        seed_everything(src.init_seed)
        member = FAMILIES[family](cfg, data.train_x, data.test_x, data.train_y)
        member.engine.data_generator = src.seed_training(device)
        return member

    if len(sources) == 1:
        return Pack([make(sources[0])])
    return Pack(fuse(make, sources, device))


__all__ = ["evaluate", "read_scalars", "run_trial", "train"]
