"""One attempt at a Tune trial, its set-up done: trains its members (one
seed, or a seed pack's K) epoch by epoch, evaluates, logs each member to its
own MLflow run, reports to Tune and checkpoints.

A member whose training loss diverges ends there (outcome `diverged`, its
networks frozen) while the others train on; the trial ends when every member
has. What Tune and the searcher see for a pack is the mean objective over its
members, a diverged one counting as the penalty."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from datasources import Dataset
from models import Family, main_sampler
from models.pack import Pack
from scoring.outcomes import RUNNING, divergence
from study.plan import RUNNING_EPOCH, objective_key
from study.studies import Study, TrialConfig
from study.studies.defaults import PENALTY
from study.tracking.lineage import Lineage
from study.tracking.store import FINAL_METRICS, SHARES_ARTIFACT
from study.tracking.trial_run import TrialRun
from study.trial.clock import Clock
from study.trial.course import Course
from study.trial.evaluation import Evaluation
from study.trial.sample_grid import log_picture
from study.trial.session import TrialSession

PACK_ENDED = "ended"  # a pack trial's own outcome once its members have all ended
Evaluate = Callable[..., Evaluation]


@dataclass(kw_only=True)
class Member:
    """One seed of the trial: its family, run and how far it got."""

    index: int
    family: Family
    seed: int
    eval_seed: int  # what draws the samples it is scored on (study/trial/seeds.py)
    run: TrialRun
    course: Course
    last_eval: dict[str, float] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    reason: str = ""
    ended: bool = False


@dataclass(kw_only=True)
class Trial:
    study: Study
    cfg: TrialConfig
    data: Dataset
    cid: str
    pack: Pack
    members: list[Member]
    session: TrialSession
    clock: Clock
    # evaluation.evaluate: (family, data, cfg, eval seed, spectral, final) -> Evaluation
    evaluate: Evaluate
    objectives: tuple[tuple[str, str], ...] = ()  # --objectives: (metric, direction) each
    state: dict[str, Any] | None = None  # the checkpoint it starts from (session.restore)
    lineage: Lineage = field(default_factory=Lineage)  # under PBT: which clone it continues
    _checkpointed: float = field(default=0.0, init=False)  # monotonic time of the last

    def run(self, autocast: Any) -> None:
        first = self._restore()
        if first is None:
            return
        self.clock.stamp("started_at")  # when training (re)starts: after every set-up cost
        self._checkpointed = time.monotonic()
        for epoch in range(first, self.cfg.epochs + 1):
            with self.clock.phase("train_seconds"), autocast:
                metrics = self.pack.train_epoch()
            if self._epoch(epoch, read_members(metrics)):
                return

    def _epoch(self, epoch: int, metrics: list[dict[str, float]]) -> bool:
        """Log, judge and (at evaluations) evaluate one epoch; True once the
        trial has ended."""
        live = [m for m in self.members if not m.ended]
        diverged = {}
        for m in live:
            m.train = metrics[m.index]
            m.run.add(epoch, m.train)
            diverged[m.index] = divergence(m.train, self.cfg.max_loss)
            if diverged[m.index] is not None:
                self.pack.freeze(m.index)
        evaluating = epoch == self.cfg.epochs or epoch % self.cfg.eval_every == 0
        if evaluating:
            self.pack.sync()
        for m in live:
            ends = diverged[m.index] is not None or epoch == self.cfg.epochs
            if ends or evaluating:
                self._judge(m, epoch, diverged[m.index], ends)
        final = all(m.ended for m in self.members)
        if final or evaluating:
            self._report(epoch, final)
        return final

    def _judge(self, m: Member, epoch: int, diverged: str | None, ends: bool) -> None:
        if diverged is None:
            m.last_eval = self._evaluate(m, epoch)
            m.course.judge(m.family, epoch, m.last_eval, self.data.n_classes)
        outcome, m.reason = m.course.end(diverged) if ends else (RUNNING, "")
        m.result = {
            **m.train,
            **m.last_eval,
            **m.course.summary(),
            "epoch": epoch,
            "outcome": outcome,
            "objective": objective(self.study.metric, self.study.mode, m.last_eval, outcome),
            **{
                objective_key(name): objective(name, mode, m.last_eval, outcome)
                for name, mode in self.objectives
            },
            "config_id": self.cid,
            "seed": m.seed,
            "sampler": main_sampler(m.family),
        }
        # MLflow first, then the report: a retry never finds epochs missing
        # from MLflow (those it redoes are there already and not written again)
        with self.clock.phase("log_seconds"):
            if ends:
                # the trial's training time (a pack's members share it), as a metric
                # beside sample_seconds: the trilemma's other speed
                m.run.add(epoch, {"train_seconds": self.clock.seconds["train_seconds"]})
                m.run.log_json(m.result, FINAL_METRICS)
                m.run.finish(outcome, m.reason, tags=m.course.tags(epoch))
                m.ended = True
            else:
                m.run.flush()

    def _evaluate(self, m: Member, epoch: int) -> dict[str, float]:
        with self.clock.phase("eval_seconds"):
            final = epoch == self.cfg.epochs
            ev = self.evaluate(m.family, self.data, self.cfg, m.eval_seed, m.course.spectral, final)
            if ev.modes is not None:
                device = str(self.data.train_x.device)
                ev.metrics |= m.course.modes_seen(epoch, ev.modes, self.data.name, device)
        m.run.add(epoch, ev.metrics)
        with self.clock.phase("log_seconds"):
            if ev.layers:  # which weight holds each network's sigma0, as of now
                m.run.tag({f"{k}_layer": v for k, v in ev.layers.items()})
            if m.course.shares:
                shares = {"modes": len(ev.modes.counts), "epochs": m.course.shares}
                m.run.log_json(shares, SHARES_ARTIFACT)
            for kind, (images, per_row) in ev.pictures.items():
                log_picture(m.run, images, kind, epoch, per_row, self.data.modes)
        return ev.metrics

    def result(self, final: bool) -> dict[str, Any]:
        """What Tune gets: a lone member's result; a pack's mean objective
        over its members, its first seed, and every member's result."""
        results = [m.result or {} for m in self.members]
        if len(results) == 1:
            return dict(results[0])
        return {
            "epoch": max(r.get("epoch", 0) for r in results),
            "outcome": PACK_ENDED if final else RUNNING,
            **{
                key: sum(r.get(key, penalty(mode)) for r in results) / len(results)
                for key, mode in self._objective_modes()
            },
            "config_id": self.cid,
            "seed": self.members[0].seed,
            "members": results,
        }

    def _objective_modes(self) -> list[tuple[str, str]]:
        """(Tune key, direction) of the study's objective and of --objectives."""
        named = [(objective_key(name), mode) for name, mode in self.objectives]
        return [("objective", self.study.mode), *named]

    def _report(self, epoch: int, final: bool) -> None:
        """Report to Tune, with a checkpoint at the end and whenever
        `checkpoint_seconds` have passed since the last one."""
        if final:
            self.clock.stamp("ended_at")
        result = self.result(final) | self.clock.as_dict()
        if not final:
            result[RUNNING_EPOCH] = epoch
        state = None
        if final or time.monotonic() - self._checkpointed >= self.cfg.checkpoint_seconds:
            state = {
                "family": self.pack.state_dict(),
                "rng": torch.get_rng_state(),
                "data_rng": [g.get_state() for g in self.pack.data_streams()],
                "epoch": epoch,
                "clock": self.clock.seconds,
                "result": result,
                "lineage": self.lineage.saved(
                    self.session.trial_id, [m.run.run_id for m in self.members]
                ),
                "members": [
                    {
                        "last_eval": m.last_eval,
                        "result": m.result,
                        "reason": m.reason,
                        "course": m.course.state(),
                    }
                    for m in self.members
                ],
            }
            self._checkpointed = time.monotonic()
        # this report's own time shows in the next result (the last's, nowhere)
        with self.clock.phase("report_seconds"):
            self.session.report(result, state)

    def _restore(self) -> int | None:
        """The first epoch to train from the session's checkpoint; None when
        the trial had ended (it, or the driver, died before Tune saved its
        end: the end is reported again, not retrained). A member whose run
        had ended stays ended."""
        for m in self.members:
            ended = m.run.recorded_end()
            if ended is not None:
                m.result, m.reason = ended
                m.ended = True
                m.run.set_tags({"restored_from_epoch": str(m.result["epoch"])})
        if all(m.ended for m in self.members):
            self.session.report(self.result(True) | self.clock.as_dict(), None)
            return None
        state = self.state
        if state is None:
            self._hold_ended()
            return 1
        for m, saved in zip(self.members, state["members"], strict=True):
            if not self.lineage.cloned:
                m.run.set_tags({"restored_from_epoch": str(state["epoch"])})  # a retry, visible
            m.last_eval = saved["last_eval"]
            if "course" in saved:  # a checkpoint from before courses were kept has none
                m.course.load(saved["course"])
            if not m.ended and saved["result"] and saved["result"]["outcome"] != RUNNING:
                m.result, m.reason, m.ended = saved["result"], saved["reason"], True
        if state["result"]["outcome"] != RUNNING:
            for m in self.members:
                m.run.finish(m.result["outcome"], m.reason)
            self.session.report(state["result"], None)
            return None
        if self.lineage.cloned:  # another member's weights, under this trial's settings
            self.pack.take_over(state["family"])
        else:
            self.pack.load_state_dict(state["family"])
        self._hold_ended()
        torch.set_rng_state(state["rng"])
        for g, saved_rng in zip(self.pack.data_streams(), state.get("data_rng", []), strict=True):
            g.set_state(saved_rng.cpu())
        self.clock.add(state["clock"])
        return state["epoch"] + 1

    def _hold_ended(self) -> None:
        for m in self.members:
            if m.ended:
                self.pack.freeze(m.index)


def read_scalars(metrics: dict[Any, Any]) -> dict[Any, float]:
    """Device tensors to floats with one host sync for the whole dict."""
    tensors = {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    out = {k: float(v) for k, v in metrics.items() if k not in tensors}
    if tensors:
        values = torch.stack([t.detach().float().reshape(()) for t in tensors.values()])
        out |= dict(zip(tensors, values.tolist(), strict=True))
    return out


def penalty(mode: str) -> float:
    """The objective of a seed that diverged: the worst a search can see."""
    return PENALTY if mode == "min" else -PENALTY


def read_members(metrics: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Every member's metrics as floats, with one host sync for them all."""
    flat = read_scalars({(i, k): v for i, m in enumerate(metrics) for k, v in m.items()})
    return [{k: flat[(i, k)] for k in m} for i, m in enumerate(metrics)]


def objective(metric: str, mode: str, last_eval: dict[str, float], outcome: str) -> float:
    """What the searcher sees of one seed: the metric, or the penalty when it
    diverged or the metric is missing or not finite."""
    score = last_eval.get(metric, penalty(mode))
    return score if outcome != "diverged" and math.isfinite(score) else penalty(mode)
