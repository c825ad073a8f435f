"""The searcher a study's configurations come from: Optuna (through Ray
Tune's OptunaSearch) behind Tune's Repeater, which asks for each
configuration once and runs it as one trial per seed, or per seed pack.

Both are extended so the searcher sees a configuration's uncertainty: when
its last trial ends, the Optuna trial gets user attributes with the spread of
the objective over the configuration's seeds (`objective_std`,
`objective_stderr`, `seeds`; a diverged seed counts as the penalty, as in the
mean), which optuna-dashboard shows beside the value. The mean told to
Optuna is Repeater's own, unchanged. Each class uses one private field of
its base (registered in study.internals, checked at start-up).

Imported only once Ray is: the CLI refuses bad input before that."""

from __future__ import annotations

import math
import statistics
from typing import Any

from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.repeater import Repeater


def seed_objectives(result: dict | None, metric: str) -> list[float]:
    """The objective of each seed of one trial's final result: a pack's
    members', or the lone seed's."""
    if not result:
        return []
    members = result.get("members") or [result]
    return [float(m[metric]) for m in members if m.get(metric) is not None]


def spread(values: list[float]) -> dict[str, float]:
    """Sample standard deviation and standard error of the mean over seeds
    (NaN for one seed), and how many seeds."""
    n = len(values)
    std = statistics.stdev(values) if n > 1 else math.nan
    return {"objective_std": std, "objective_stderr": std / math.sqrt(n or 1), "seeds": n}


class SeedRepeater(Repeater):
    """Repeater that also hands the searcher the objectives of a
    configuration's seeds so far; the searcher reads them once the
    configuration's last trial has ended."""

    searcher: SpreadOptunaSearch

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs: Any) -> None:
        group = self._trial_id_to_group.get(trial_id)
        if group is not None:
            seeds = self.searcher.seed_values.setdefault(group.primary_trial_id, [])
            seeds += seed_objectives(result, self.searcher.metric)
        super().on_trial_complete(trial_id, result, **kwargs)


class SpreadOptunaSearch(OptunaSearch):
    """OptunaSearch that stores a configuration's spread over seeds as user
    attributes of its Optuna trial, just before telling Optuna its value
    (a finished Optuna trial takes no more attributes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # a configuration's (its first trial's id) seed objectives so far
        self.seed_values: dict[str, list[float]] = {}

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        seeds = self.seed_values.pop(trial_id, None)
        trial = self._ot_trials.get(trial_id)
        if seeds is not None and trial is not None and trial_id not in self._completed_trials:
            for key, value in spread(seeds).items():
                trial.set_user_attr(key, None if math.isnan(value) else value)
        super().on_trial_complete(trial_id, result, error)
