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
from typing import Any

from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.repeater import Repeater

SPREAD_ATTRS = ("objective_std", "objective_stderr", "seeds")


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
    if n < 2:
        return {"objective_std": math.nan, "objective_stderr": math.nan, "seeds": n}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"objective_std": std, "objective_stderr": std / math.sqrt(n), "seeds": n}


class SeedRepeater(Repeater):
    """Repeater that also passes the configuration's spread over its seeds
    to the searcher, beside its mean."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, **kwargs: Any) -> None:
        group = self._trial_id_to_group.get(trial_id)
        if group is not None and isinstance(self.searcher, SpreadOptunaSearch):
            # the seeds so far; the searcher reads them once the group's last trial ends
            group.seed_objectives = [
                *getattr(group, "seed_objectives", []),
                *seed_objectives(result, self.searcher.metric),
            ]
            self.searcher.pending_spread[group.primary_trial_id] = spread(group.seed_objectives)
        super().on_trial_complete(trial_id, result, **kwargs)


class SpreadOptunaSearch(OptunaSearch):
    """OptunaSearch that stores a configuration's spread over seeds as user
    attributes of its Optuna trial, just before telling Optuna its value
    (a finished Optuna trial takes no more attributes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending_spread: dict[str, dict[str, float]] = {}

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        attrs = self.pending_spread.pop(trial_id, None)
        trial = self._ot_trials.get(trial_id)
        if attrs and trial is not None and trial_id not in self._completed_trials:
            for key, value in attrs.items():
                trial.set_user_attr(key, None if math.isnan(value) else value)
        super().on_trial_complete(trial_id, result, error)
