"""The one Ray Tune trainable: runs any family through the trial contract.

Seeds everything, loads the data once onto the trial's device, trains epoch by
epoch, evaluates every `eval_every` epochs and at the end, and at each
evaluation writes the buffered MLflow metrics, then reports to Tune with a
checkpoint. A non-finite or exploding loss ends the trial as `diverged`; final
samples covering under half the classes, or reconstructions hardly better than
the mean image, end it as `collapsed`.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from socket import gethostname
from typing import Any

import numpy as np
import ray
import torch
from mlflow import MlflowClient
from ray import tune
from ray.tune.search.repeater import TRIAL_INDEX

from analysis.metrics import collapse_reason, evaluate_samples, provenance
from models import FAMILIES, Family
from study.data import Dataset, load_dataset
from study.sample_grid import save_samples_png
from study.spec import TrialConfig, config_id, split_settings
from study.studies import STUDIES
from study.tracking import TrialRun

STATE_FILE = "state.pt"


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def trial_device() -> torch.device:
    # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU share, if it has one
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def read_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """Device tensors to floats with one host sync for the whole dict."""
    tensors = {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    out = {k: float(v) for k, v in metrics.items() if k not in tensors}
    if tensors:
        values = torch.stack([t.detach().float().reshape(()) for t in tensors.values()])
        out |= dict(zip(tensors, values.tolist(), strict=True))
    return out


def speed_ups(family: Family, cfg: TrialConfig, device: torch.device):
    """Opt-in GPU speed-ups. `compile` compiles each network of the family in
    place (state_dict keys stay the same, so checkpoints do not change);
    `bf16` returns an autocast context for the training step. On a CPU
    without bf16 units both cost more than they give (README: Performance)."""
    if cfg.compile:
        for module in vars(family).values():
            if isinstance(module, torch.nn.Module):
                module.compile()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)


def divergence(metrics: dict[str, float], max_loss: float) -> str | None:
    for k, v in metrics.items():
        if not math.isfinite(v):
            return f"non-finite {k}"
        if "loss" in k and abs(v) > max_loss:
            return f"|{k}| = {abs(v):.3g} exceeds max_loss {max_loss:g}"
    return None


def run_name(values: dict[str, Any], searched: tuple[str, ...], seed: int) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.2g}" if isinstance(v, float) else str(v)

    return " ".join([*(f"{k}={fmt(values[k])}" for k in searched), f"seed={seed}"])


# what is logged per sampler variant (e.g. fid_ddim10_eta0) besides the main one
VARIANT_METRICS = ("fid", "kid", "precision", "recall", "modes_covered", "sample_seconds")


def _evaluate(
    family: Family, data: Dataset, cfg: TrialConfig, seed: int
) -> tuple[dict, torch.Tensor | None]:
    metrics = dict(family.evaluate())
    if not family.generates:
        return metrics, None
    # a family may score several samplers; the first is its main one
    variants = family.sample_variants() if hasattr(family, "sample_variants") else {"": {}}
    main = None
    for name, kwargs in variants.items():
        # the same latent noise at every evaluation: grids are comparable over epochs
        gen = torch.Generator(device=data.train_x.device).manual_seed(seed + 1)
        t0 = time.perf_counter()
        samples = family.sample(cfg.eval_samples, generator=gen, **kwargs)
        if samples.is_cuda:
            torch.cuda.synchronize()
        scored = {"sample_seconds": (time.perf_counter() - t0) * 1000 / cfg.eval_samples}
        scored |= evaluate_samples(samples, data.name, inception_weights=cfg.inception_weights)
        if main is None:
            metrics |= scored
            main = samples
        if name:
            metrics |= {f"{k}_{name}": scored[k] for k in VARIANT_METRICS if k in scored}
    return metrics, main


def train(config: dict[str, Any], ctx: TrialContext) -> None:
    study = STUDIES[ctx.study]
    sampled = {k: v for k, v in config.items() if k != TRIAL_INDEX}
    values = {**ctx.fixed, **sampled}
    trial_cfg, family_cfg = split_settings(study, values)
    seed = trial_cfg.seed + int(config.get(TRIAL_INDEX, 0))
    # the full resolved config, defaults included: what the params record and
    # what the configuration id is a hash of
    resolved = {**asdict(trial_cfg), **asdict(family_cfg), "dataset": ctx.dataset}
    cid = config_id(resolved)
    torch.set_num_threads(ctx.threads)
    seed_everything(seed)
    device = trial_device()

    data = load_dataset(ctx.dataset, ctx.data_dir)
    if trial_cfg.train_size:
        data = data.subset(trial_cfg.train_size)
    data = data.to(device)

    params = {
        **resolved,
        "seed": seed,
        "config_id": cid,
        "dataset": ctx.dataset,
        "family": study.family,
        "device": str(device),
        "threads": ctx.threads,
        **(provenance(ctx.dataset, str(device)) if FAMILIES[study.family].generates else {}),
    }
    client = MlflowClient(ctx.tracking_uri)
    trial_id = tune.get_context().get_trial_id()
    run = TrialRun.open(
        client,
        ctx.experiment_id,
        ctx.parent_run_id,
        trial_id,
        run_name(values, ctx.searched, seed),
        params,
    )
    # where this attempt runs; a retry may land elsewhere, so a tag, not a param
    run.set_tags({"ray_node": ray.get_runtime_context().get_node_id(), "host": gethostname()})
    try:
        _train_loop(study, trial_cfg, family_cfg, data, seed, cid, run)
    except Exception as e:
        run.finish("failed", f"{type(e).__name__}: {e}"[:5000], status="FAILED")
        run.log_json({"traceback": traceback.format_exc()}, "failure.json")
        raise


def _train_loop(
    study, trial_cfg: TrialConfig, family_cfg, data: Dataset, seed: int, cid: str, run: TrialRun
) -> None:
    family = FAMILIES[study.family](family_cfg, data.train_x, data.test_x)
    autocast = speed_ups(family, trial_cfg, data.train_x.device)
    start, last_eval = 1, {}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(
                Path(d) / STATE_FILE, map_location=data.train_x.device, weights_only=True
            )
        run.set_tags({"restored_from_epoch": str(state["epoch"])})  # a retry, visible in MLflow
        if state["result"]["outcome"] != "running":
            # it had ended, but died before Tune recorded the end: close and re-report
            run.finish(state["result"]["outcome"], state["reason"])
            tune.report(state["result"])
            return
        family.load_state_dict(state["family"])
        torch.set_rng_state(state["rng"])
        start, last_eval, clock = state["epoch"] + 1, state["last_eval"], state["clock"]
    else:
        clock = {"train_seconds": 0.0, "eval_seconds": 0.0}

    penalty = 1e6 if study.mode == "min" else -1e6
    clock["started_at"] = time.time()  # when training (re)starts: after every set-up cost
    base, loop_start = dict(clock), time.perf_counter()
    for epoch in range(start, trial_cfg.epochs + 1):
        with autocast:
            train_metrics = read_scalars(family.train_epoch())
        run.add(epoch, train_metrics)
        reason = divergence(train_metrics, trial_cfg.max_loss)
        final = reason is not None or epoch == trial_cfg.epochs
        if not (final or epoch % trial_cfg.eval_every == 0):
            continue
        t_eval = time.perf_counter()
        if reason is None:
            last_eval, samples = _evaluate(family, data, trial_cfg, seed)
            run.add(epoch, last_eval)
            if samples is not None:
                with tempfile.TemporaryDirectory() as d:
                    png = Path(d) / f"samples_epoch{epoch:04d}.png"
                    save_samples_png(samples, png, data.modes)
                    run.log_file(png, "samples")
        clock["eval_seconds"] += time.perf_counter() - t_eval
        outcome = "running"
        if final:
            if reason is not None:
                outcome = "diverged"
            elif reason := collapse_reason(last_eval, data.n_classes):
                outcome = "collapsed"
            else:
                outcome, reason = "ok", ""
        score = last_eval.get(study.metric, penalty)
        objective = score if outcome != "diverged" and math.isfinite(score) else penalty
        # training time is all loop time but evaluation: it includes the harness's
        # own work (metric reads, logging, flushes, the earlier checkpoints)
        spent = time.perf_counter() - loop_start - (clock["eval_seconds"] - base["eval_seconds"])
        clock["train_seconds"] = base["train_seconds"] + spent
        result = {
            **train_metrics,
            **last_eval,
            **clock,
            "epoch": epoch,
            "objective": objective,
            "outcome": outcome,
            "config_id": cid,
            "seed": seed,
        }
        if final:
            run.log_json(result, "final_metrics.json")
            run.finish(outcome, reason or "")
        else:
            run.flush()
        with tempfile.TemporaryDirectory() as d:
            torch.save(
                {
                    "family": family.state_dict(),
                    "rng": torch.get_rng_state(),
                    "epoch": epoch,
                    "last_eval": last_eval,
                    "clock": clock,
                    "result": result,
                    "reason": reason or "",
                },
                Path(d) / STATE_FILE,
            )
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
        if final:
            return


__all__ = ["TrialContext", "train"]
