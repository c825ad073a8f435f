"""Driver-side Tune callbacks: one readable progress line instead of Tune's
tables, and closing the MLflow runs of trials that ended without closing their
own (stopped early by a scheduler, or killed)."""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from ray import tune

from scoring.outcomes import RUNNING, SCORED, ended, seed_results
from study.plan import Plan
from study.runner import live
from study.runner.eta import Running, describe, estimate, population
from study.studies import TrialConfig, own_settings
from study.studies.defaults import HEARTBEAT_SECONDS
from study.tracking.lineage import REPLACED_TRIAL
from study.tracking.store import children, close_run, trial_runs

EPOCHS_SHOWN = 8  # running trials whose epoch the heartbeat names


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class Progress(tune.Callback):
    """Prints a line when a trial ends, and a heartbeat every `interval` seconds:
    trials done (by outcome) / running / left, the best score so far, elapsed,
    the epoch each running trial has reached and when the phase should end
    (`eta`). On a terminal the heartbeat is a live bar instead (`live`)."""

    def __init__(
        self, total: int, plan: Plan, phase: str, interval: float = HEARTBEAT_SECONDS, *,
        slots: int = 1,
    ) -> None:  # fmt: skip
        """`total`: the seeds the phase trains, counted one by one (a seed
        pack's trial trains several); `slots`: trials that run at once."""
        self.total, self.plan, self.interval, self.slots = total, plan, interval, slots
        self.metric, self.pack = plan.study.metric, plan.phase(phase).pack
        self.setup()

    def setup(self, **info: Any) -> None:
        """Called by Tune at every start, a --resume included (this object is
        then unpickled from the first run): counts start afresh."""
        self.start = self.last = time.monotonic()
        self.outcomes: Counter[str] = Counter()
        self.best: tuple[float, str] | None = None
        self.resumed = False
        self.durations: list[float] = []  # of the trials that ended, in seconds
        self.ended_trials = 0
        self.live = live.LiveBar(self.total) if live.wanted(sys.stdout) else None

    def _status(self, trials: list, ended: Any = None) -> tuple[int, str]:
        """(seeds ended, the rest of the line after "N/M done")."""
        done = sum(self.outcomes.values())
        under_way = [t for t in trials if t.status == "RUNNING" and t is not ended]
        running = self.pack * len(under_way)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        best = f" | best {self.metric} {self.best[0]:.4g} ({self.best[1]})" if self.best else ""
        progress = [self._running(t) for t in under_way]
        epochs = " ".join(f"{r.epoch}/{r.epochs}" for r in progress[:EPOCHS_SHOWN])
        epochs += " ..." if len(progress) > EPOCHS_SHOWN else ""
        queued = max(0, self.total // self.pack - self.ended_trials - len(under_way))
        if self.plan.population:  # members pause at each meeting: the population's pace
            ends = [t.status in ("TERMINATED", "ERROR") or t is ended for t in trials]
            elapsed = time.monotonic() - self.start
            when = describe(population(elapsed, [self._running(t) for t in trials], ends))
        else:
            when = describe(estimate(self.durations, progress, queued, self.slots))
        return done, (
            f"{f' ({counts})' if counts else ''} | {running} running"
            f"{f' (epochs {epochs})' if epochs else ''} | "
            f"{max(self.total - done - running, 0)} left{best} | {when}"
        )

    def _running(self, trial: Any) -> Running:
        """How far a running trial is: its last report, and the time since."""
        r = trial.last_result or {}
        values = own_settings(self.plan.study, {**self.plan.resolved.fixed, **trial.config})
        epochs = values.get("epochs", TrialConfig().epochs)
        seconds = r.get("time_total_s", 0.0) + max(0.0, time.time() - r.get("timestamp", 0))
        return Running(seconds if r else 0.0, int(r.get("epoch", 0)), int(epochs))

    def _line(self, trials: list, event: str = "", ended: Any = None) -> None:
        """The heartbeat: a line, or on a terminal the live bar redrawn; an
        event (trials that ended) above it."""
        done, rest = self._status(trials, ended)
        if self.live:
            if event:
                self.live.write(f"           {event}")
            self.live.show(done, rest)
        else:
            elapsed = int(time.monotonic() - self.start)
            line = f"[{elapsed // 60:3d}m{elapsed % 60:02d}s] {done}/{self.total} done{rest}"
            print(line + (f"\n           {event}" if event else ""), flush=True)
        self.last = time.monotonic()

    def _count(self, trial: Any) -> list[tuple[str, Any, Any]]:
        """(outcome, score, seed) of each seed the trial trained, counted."""
        self.ended_trials += 1
        if (trial.last_result or {}).get("time_total_s") is not None:
            self.durations.append(float(trial.last_result["time_total_s"]))
        out = []
        for r in seed_results(trial.last_result):
            outcome = ended(r.get("outcome"))
            self.outcomes[outcome] += 1
            score = r.get(self.metric)
            if outcome in SCORED and isinstance(score, float) and math.isfinite(score):
                better = self.best is None or (
                    score < self.best[0] if self.plan.study.mode == "min" else score > self.best[0]
                )
                if better:
                    self.best = (score, f"config {r.get('config_id')}, seed {r.get('seed')}")
            out.append((outcome, score, r.get("seed", "?")))
        return out

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        what = " ".join(f"{k}={_fmt(trial.config.get(k))}" for k in self.plan.searched)
        lines = []
        for outcome, score, seed in self._count(trial):
            detail = f"{self.metric}={_fmt(score)}" if score is not None else ""
            lines.append(f"{outcome:9s} {detail:14s} {what} seed={seed}")
        self._line(trials, "\n           ".join(lines), ended=trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # a pack's trial fails all its seeds
        self.ended_trials += 1
        self.outcomes["failed"] += min(self.pack, max(1, self.total - sum(self.outcomes.values())))
        self._line(
            trials,
            f"failed    trial {trial.trial_id} (see its error file under the storage folder)",
            ended=trial,
        )

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.resumed:  # once: on --resume, count the trials that had ended
            self.resumed = True
            ended = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
            for t in ended:
                self._count(t)
            if ended:
                self._line(trials, f"resumed: {len(ended)} trials had ended before")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.live:
            self.live.show(*self._status(trials), now=False)
        elif time.monotonic() - self.last >= self.interval:
            self._line(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.live:  # the tables print below the bar's last state
            self.live.close()


class CloseRuns(tune.Callback):
    """A trial closes its own MLflow run. One stopped by the scheduler, or whose
    process died, cannot: the driver closes it so no run stays RUNNING. One
    per phase of a study (`phase`: the trials' tag; each phase is a Tuner)."""

    def __init__(self, plan: Plan, phase: str) -> None:
        self.plan, self.phase = plan, phase

    def _tracked(self, what: str, write: Callable[[MlflowClient], None]) -> None:
        """One write to MLflow; past the client's retries (an outage) a
        warning, not a crash of the study: what is left undone, --resume does."""
        try:
            write(MlflowClient(self.plan.tracking_uri))
        except (MlflowException, OSError) as e:
            why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            if "Max retries exceeded" in why:
                why = "no answer within the client's retries"
            print(f"warning: could not {what} in MLflow ({why})", file=sys.stderr, flush=True)

    def _close(self, trial: Any, outcome: str, reason: str, status: str) -> None:
        def close(client: MlflowClient) -> None:
            # one run, or one per member of a seed pack
            for run in trial_runs(
                client, self.plan.experiment_id, self.plan.parent_run_id, trial.trial_id
            ):
                if run.info.status == "RUNNING":
                    close_run(client, run.info.run_id, outcome, reason, status)

        self._tracked(f"close the run of trial {trial.trial_id}", close)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        if r.get("outcome") == RUNNING:
            reason = f"stopped early by the scheduler at epoch {r.get('epoch')}"
            self._close(trial, "stopped", reason, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "failed", "trial process failed (see the Tune error file)", "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Delete the runs of this phase's trials Tune has no record of:
        started after its last saved state when the driver died, they were run
        again under new ids on --resume, and each trial must appear in MLflow
        once. (Runs from before phases were tagged are the search's.)"""
        known = {t.trial_id for t in trials}

        def delete_unknown(client: MlflowClient) -> None:
            for run in children(client, self.plan.experiment_id, self.plan.parent_run_id):
                tags = run.data.tags
                trial = tags.get("trial_id") or tags.get(REPLACED_TRIAL)  # a PBT clone's past
                if tags.get("phase", "search") == self.phase and trial not in known:
                    client.delete_run(run.info.run_id)

        self._tracked("delete the runs of trials Tune does not know", delete_unknown)
