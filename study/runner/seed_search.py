"""The searcher a study's configurations come from: Optuna (through Ray
Tune's OptunaSearch) behind Tune's Repeater, which asks for each
configuration once and runs it as one trial per seed, or per seed pack.

Both are extended so the searcher sees a configuration's uncertainty: when
its last trial ends, the Optuna trial gets user attributes with the spread of
the objective over the configuration's seeds (`objective_std`,
`objective_stderr`, `seeds`; a diverged seed counts as the penalty, as in the
mean), which optuna-dashboard shows beside the value. The mean told to
Optuna is Repeater's own, unchanged. With several objectives
(`--objectives`), Repeater (which averages one metric) is bypassed: each
objective is averaged over the configuration's trials here, and each gets
its own attributes (`objective_fid_std`, ...). Each class uses private
fields of its base (registered in study.internals, checked at start-up).

Imported only once Ray is: the CLI refuses bad input before that."""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.repeater import Repeater


def seed_objectives(result: dict | None, metric: str) -> list[float]:
    """The objective of each seed of one trial's final result: a pack's
    members', or the lone seed's."""
    if not result:
        return []
    members = result.get("members") or [result]
    return [float(m[metric]) for m in members if m.get(metric) is not None]


def spread(values: list[float], name: str = "objective") -> dict[str, float]:
    """Sample standard deviation and standard error of the mean over seeds
    (NaN for one seed), and how many seeds."""
    n = len(values)
    std = statistics.stdev(values) if n > 1 else math.nan
    return {f"{name}_std": std, f"{name}_stderr": std / math.sqrt(n or 1), "seeds": n}


def metrics_of(searcher: OptunaSearch) -> list[str]:
    """The searcher's objectives: one metric, or several (--objectives)."""
    metric = searcher.metric
    return list(metric) if isinstance(metric, list) else [metric]


class SeedRepeater(Repeater):
    """Repeater that also hands the searcher the objectives of a
    configuration's seeds so far; the searcher reads them once the
    configuration's last trial has ended."""

    searcher: SpreadOptunaSearch

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs: Any) -> None:
        group = self._trial_id_to_group.get(trial_id)
        metrics = metrics_of(self.searcher)
        if group is not None:
            seeds = self.searcher.seed_values.setdefault(group.primary_trial_id, {})
            for metric in metrics:
                seeds.setdefault(metric, []).extend(seed_objectives(result, metric))
        if len(metrics) == 1:
            super().on_trial_complete(trial_id, result, **kwargs)
            return
        # several objectives: Repeater averages one metric; each is averaged here
        if group is None:
            return
        values = tuple((result or {}).get(m, math.nan) for m in metrics)
        group.report(trial_id, values)
        if group.finished_reporting():
            means = [float(np.nanmean(v)) for v in zip(*group.scores(), strict=True)]
            self.searcher.on_trial_complete(
                group.primary_trial_id, result=dict(zip(metrics, means, strict=True)), **kwargs
            )


class SpreadOptunaSearch(OptunaSearch):
    """OptunaSearch that stores a configuration's spread over seeds as user
    attributes of its Optuna trial, just before telling Optuna its value
    (a finished Optuna trial takes no more attributes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # a configuration's (its first trial's id) seed objectives so far, per metric
        self.seed_values: dict[str, dict[str, list[float]]] = {}

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        seeds = self.seed_values.pop(trial_id, None)
        trial = self._ot_trials.get(trial_id)
        if seeds is not None and trial is not None and trial_id not in self._completed_trials:
            many = len(seeds) > 1  # several objectives: each its own attributes
            for metric, values in seeds.items():
                for key, value in spread(values, metric if many else "objective").items():
                    trial.set_user_attr(key, None if math.isnan(value) else value)
        super().on_trial_complete(trial_id, result, error)
