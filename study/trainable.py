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
from scoring.outcomes import RUNNING, divergence, final_outcome
from scoring.registry import METRICS, evaluate_samples, pixel_probe, provenance
from study.clock import Clock
from study.defaults import PENALTY
from study.probes import latent_probes
from study.sample_grid import log_picture
from study.session import TrialSession, TuneSession
from study.spec import Study, TrialConfig, axis_labels, config_id, split_settings
from study.studies import STUDIES
from study.tracking import FINAL_METRICS, TrialRun


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
    seed = trial_cfg.seed + int(config.get(TRIAL_INDEX, 0))
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
        "seed": seed,
        "config_id": cid,
        "family": study.family,
        "device": str(device),
        "threads": ctx.threads,
        **scored_in,
    }
    with clock.phase("mlflow_seconds"):
        run = TrialRun.open(
            tracking_client(ctx.tracking_uri),
            ctx.experiment_id,
            ctx.parent_run_id,
            session.trial_id,
            run_name(values, ctx.searched, seed),
            params,
            # where this attempt runs; a retry may land elsewhere, so tags, not params
            tags={"ray_node": session.node_id, "host": gethostname(), "phase": ctx.phase},
        )
    trial = _Trial(study, trial_cfg, family_cfg, data, seed, cid, run, session, clock)
    try:
        trial.start()
    except MlflowException:
        # MLflow itself failed (past the client's retries: an outage); writing
        # the failure there would wait out the retries again. The driver
        # closes the run, or --resume continues it.
        raise
    except Exception as e:
        run.finish("failed", f"{type(e).__name__}: {e}"[:5000], status="FAILED")
        run.log_json({"traceback": traceback.format_exc()}, "failure.json")
        raise


@dataclass
class _Trial:
    """One attempt at a trial, its set-up done: builds (or restores) the
    model, then trains, evaluates, logs and checkpoints epoch by epoch."""

    study: Study
    cfg: TrialConfig
    family_cfg: Any
    data: Dataset
    seed: int
    cid: str
    run: TrialRun
    session: TrialSession
    clock: Clock
    _checkpointed: float = field(default=0.0, init=False)  # monotonic time of the last

    def start(self) -> None:
        with self.clock.phase("model_seconds"):
            # seeded after every set-up step, right before the model: what a
            # process loaded or cached earlier (a reused one) cannot shift its streams
            seed_everything(self.seed)
            family = FAMILIES[self.study.family](
                self.family_cfg, self.data.train_x, self.data.test_x, self.data.train_y
            )
            autocast = speed_ups(family, self.cfg, self.data.train_x.device)
            progress = self._restore(family)
        if progress is None:
            return
        first, last_eval = progress
        self.clock.stamp("started_at")  # when training (re)starts: after every set-up cost
        self._checkpointed = time.monotonic()
        for epoch in range(first, self.cfg.epochs + 1):
            with self.clock.phase("train_seconds"), autocast:
                train_metrics = read_scalars(family.train_epoch())
            self.run.add(epoch, train_metrics)
            diverged = divergence(train_metrics, self.cfg.max_loss)
            final = diverged is not None or epoch == self.cfg.epochs
            if not (final or epoch % self.cfg.eval_every == 0):
                continue
            if diverged is None:
                last_eval = self._evaluate(family, epoch)
            outcome, reason = (
                final_outcome(diverged, last_eval, self.data.n_classes) if final else (RUNNING, "")
            )
            result = {
                **train_metrics,
                **last_eval,
                "epoch": epoch,
                "outcome": outcome,
                "objective": _objective(self.study, last_eval, outcome),
                "config_id": self.cid,
                "seed": self.seed,
            }
            self._record(family, result, last_eval, reason, final)
            if final:
                return

    def _restore(self, family: Family) -> tuple[int, dict[str, float]] | None:
        """(first epoch, last evaluation) to continue from the session's
        checkpoint; None when the trial had ended (it, or the driver, died
        before Tune saved its end: the end is reported again, not retrained)."""
        ended = self.run.recorded_end()
        if ended is not None:
            result, reason = ended
            self.run.set_tags({"restored_from_epoch": str(result["epoch"])})
            self.session.report(result | self.clock.as_dict(), None)
            return None
        state = self.session.restore(self.data.train_x.device)
        if state is None:
            return 1, {}
        self.run.set_tags({"restored_from_epoch": str(state["epoch"])})  # a retry, visible
        if state["result"]["outcome"] != RUNNING:
            self.run.finish(state["result"]["outcome"], state["reason"])
            self.session.report(state["result"], None)
            return None
        family.load_state_dict(state["family"])
        torch.set_rng_state(state["rng"])
        self.clock.add(state["clock"])
        return state["epoch"] + 1, state["last_eval"]

    def _evaluate(self, family: Family, epoch: int) -> dict[str, float]:
        with self.clock.phase("eval_seconds"):
            metrics, pictures = evaluate(family, self.data, self.cfg, self.seed)
        self.run.add(epoch, metrics)
        with self.clock.phase("log_seconds"):
            for kind, (images, per_row) in pictures.items():
                log_picture(self.run, images, kind, epoch, per_row, self.data.modes)
        return metrics

    def _record(
        self, family: Family, result: dict, last_eval: dict, reason: str, final: bool
    ) -> None:
        """Write MLflow first, then report: a retry never finds epochs missing
        from MLflow (the ones it redoes are already there and not written
        again). The report carries a checkpoint at the end and whenever
        `checkpoint_seconds` have passed since the last one."""
        with self.clock.phase("log_seconds"):
            if final:
                self.run.log_json(result, FINAL_METRICS)
                self.run.finish(result["outcome"], reason)
            else:
                self.run.flush()
        if final:
            self.clock.stamp("ended_at")
        result |= self.clock.as_dict()
        due = final or time.monotonic() - self._checkpointed >= self.cfg.checkpoint_seconds
        state = None
        if due:
            state = {
                "family": family.state_dict(),
                "rng": torch.get_rng_state(),
                "epoch": result["epoch"],
                "last_eval": last_eval,
                "clock": self.clock.seconds,
                "result": result,
                "reason": reason,
            }
            self._checkpointed = time.monotonic()
        # this report's own time shows in the next result (the last's, nowhere)
        with self.clock.phase("report_seconds"):
            self.session.report(result, state)


def _objective(study: Study, last_eval: dict[str, float], outcome: str) -> float:
    """What the searcher sees: the study's metric, or the penalty when the
    trial diverged or the metric is missing or not finite."""
    penalty = PENALTY if study.mode == "min" else -PENALTY
    score = last_eval.get(study.metric, penalty)
    return score if outcome != "diverged" and math.isfinite(score) else penalty


__all__ = ["TrialContext", "evaluate", "run_trial", "train"]
