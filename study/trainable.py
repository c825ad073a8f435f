"""The one Ray Tune trainable: runs any family through the trial contract.

Seeds everything, loads the data once onto the trial's device, trains epoch by
epoch, evaluates every `eval_every` epochs and at the end, and at each
evaluation writes the buffered MLflow metrics, then reports with a
checkpoint. A non-finite or exploding loss ends the trial as `diverged`; the
collapse rules of scoring.outcomes may end it as `collapsed`.
"""

from __future__ import annotations

import math
import random
import time
import traceback
from dataclasses import asdict, dataclass
from socket import gethostname
from typing import Any

import numpy as np
import torch
from mlflow import MlflowClient
from ray.tune.search.repeater import TRIAL_INDEX

from datasources import Dataset, load_dataset
from models import FAMILIES, Family, generates
from scoring.outcomes import RUNNING, divergence, final_outcome
from scoring.registry import METRICS, evaluate_samples, provenance
from study.defaults import PENALTY
from study.sample_grid import log_samples
from study.session import TrialSession, TuneSession
from study.spec import Study, TrialConfig, config_id, split_settings
from study.studies import STUDIES
from study.tracking import TrialRun


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
    without bf16 units both cost more than they give (docs/performance.md)."""
    if cfg.compile:
        for module in vars(family).values():
            if isinstance(module, torch.nn.Module):
                module.compile()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)


def run_name(values: dict[str, Any], searched: tuple[str, ...], seed: int) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.2g}" if isinstance(v, float) else str(v)

    return " ".join([*(f"{k}={fmt(values[k])}" for k in searched), f"seed={seed}"])


def evaluate(
    family: Family, data: Dataset, cfg: TrialConfig, seed: int
) -> tuple[dict[str, float], torch.Tensor | None]:
    """The family's own metrics, and for a generating family every registered
    sample metric of each of its samplers (the first also unsuffixed); the
    main sampler's samples come back for the picture."""
    metrics = dict(family.evaluate())
    if not generates(type(family)):
        return metrics, None
    main = None
    for name in family.samplers() or ("",):
        # the same latent noise at every evaluation: grids are comparable over epochs
        gen = torch.Generator(device=data.train_x.device).manual_seed(seed + 1)
        t0 = time.perf_counter()
        samples = family.sample(cfg.eval_samples, generator=gen, sampler=name or None)
        if samples.is_cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - t0) * 1000 / cfg.eval_samples
        scored = evaluate_samples(
            samples, data.name, inception_weights=cfg.inception_weights, seconds=seconds
        )
        if main is None:
            metrics |= scored
            main = samples
        if name:
            metrics |= {f"{k}_{name}": v for k, v in scored.items() if METRICS[k].per_sampler}
    return metrics, main


def train(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Ray Tune trainable."""
    run_trial(config, ctx, TuneSession())


def run_trial(config: dict[str, Any], ctx: TrialContext, session: TrialSession) -> None:
    study = STUDIES[ctx.study]
    values = {**ctx.fixed, **{k: v for k, v in config.items() if k != TRIAL_INDEX}}
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
        "family": study.family,
        "device": str(device),
        "threads": ctx.threads,
        **(provenance(ctx.dataset, str(device)) if generates(FAMILIES[study.family]) else {}),
    }
    name = run_name(values, ctx.searched, seed)
    client = MlflowClient(ctx.tracking_uri)
    run = TrialRun.open(
        client, ctx.experiment_id, ctx.parent_run_id, session.trial_id, name, params
    )
    # where this attempt runs; a retry may land elsewhere, so a tag, not a param
    run.set_tags({"ray_node": session.node_id, "host": gethostname()})
    try:
        _train_loop(study, trial_cfg, family_cfg, data, seed, cid, run, session)
    except Exception as e:
        run.finish("failed", f"{type(e).__name__}: {e}"[:5000], status="FAILED")
        run.log_json({"traceback": traceback.format_exc()}, "failure.json")
        raise


@dataclass
class _Progress:
    """What a checkpoint carries besides the model: where the trial is."""

    epoch: int = 0
    last_eval: dict[str, float] | None = None
    clock: dict[str, float] | None = None


def _restore(
    family: Family, device: torch.device, run: TrialRun, session: TrialSession
) -> _Progress | None:
    """Continue from the session's checkpoint; None when the trial had ended
    (it died before its end was recorded: the end is reported again)."""
    state = session.restore(device)
    if state is None:
        return _Progress(clock={"train_seconds": 0.0, "eval_seconds": 0.0}, last_eval={})
    run.set_tags({"restored_from_epoch": str(state["epoch"])})  # a retry, visible in MLflow
    if state["result"]["outcome"] != RUNNING:
        run.finish(state["result"]["outcome"], state["reason"])
        session.report(state["result"], None)
        return None
    family.load_state_dict(state["family"])
    torch.set_rng_state(state["rng"])
    return _Progress(state["epoch"], state["last_eval"], state["clock"])


def _train_loop(
    study: Study,
    trial_cfg: TrialConfig,
    family_cfg: Any,
    data: Dataset,
    seed: int,
    cid: str,
    run: TrialRun,
    session: TrialSession,
) -> None:
    family = FAMILIES[study.family](family_cfg, data.train_x, data.test_x)
    autocast = speed_ups(family, trial_cfg, data.train_x.device)
    progress = _restore(family, data.train_x.device, run, session)
    if progress is None:
        return
    clock, last_eval = progress.clock, progress.last_eval
    clock["started_at"] = time.time()  # when training (re)starts: after every set-up cost
    base, loop_start = dict(clock), time.perf_counter()
    for epoch in range(progress.epoch + 1, trial_cfg.epochs + 1):
        with autocast:
            train_metrics = read_scalars(family.train_epoch())
        run.add(epoch, train_metrics)
        diverged = divergence(train_metrics, trial_cfg.max_loss)
        final = diverged is not None or epoch == trial_cfg.epochs
        if not (final or epoch % trial_cfg.eval_every == 0):
            continue
        t_eval = time.perf_counter()
        if diverged is None:
            last_eval, samples = evaluate(family, data, trial_cfg, seed)
            run.add(epoch, last_eval)
            if samples is not None:
                log_samples(run, samples, epoch, data.modes)
        clock["eval_seconds"] += time.perf_counter() - t_eval
        outcome, reason = (
            final_outcome(diverged, last_eval, data.n_classes) if final else (RUNNING, "")
        )
        # training time is all loop time but evaluation: it includes the harness's
        # own work (metric reads, logging, flushes, the earlier checkpoints)
        spent = time.perf_counter() - loop_start - (clock["eval_seconds"] - base["eval_seconds"])
        clock["train_seconds"] = base["train_seconds"] + spent
        result = {
            **train_metrics,
            **last_eval,
            **clock,
            "epoch": epoch,
            "outcome": outcome,
            "objective": _objective(study, last_eval, outcome),
            "config_id": cid,
            "seed": seed,
        }
        state = {
            "family": family.state_dict(),
            "rng": torch.get_rng_state(),
            "epoch": epoch,
            "last_eval": last_eval,
            "clock": clock,
            "result": result,
            "reason": reason,
        }
        _record(run, session, result, state, final)
        if final:
            return


def _objective(study: Study, last_eval: dict[str, float], outcome: str) -> float:
    """What the searcher sees: the study's metric, or the penalty when the
    trial diverged or the metric is missing or not finite."""
    penalty = PENALTY if study.mode == "min" else -PENALTY
    score = last_eval.get(study.metric, penalty)
    return score if outcome != "diverged" and math.isfinite(score) else penalty


def _record(run: TrialRun, session: TrialSession, result: dict, state: dict, final: bool) -> None:
    """Write MLflow first, then report with the checkpoint: a trial restored
    from this checkpoint never finds epochs missing from MLflow."""
    if final:
        run.log_json(result, "final_metrics.json")
        run.finish(result["outcome"], state["reason"])
    else:
        run.flush()
    session.report(result, state)


__all__ = ["TrialContext", "evaluate", "run_trial", "train"]
