"""Population-based training on Ray Tune: PBT (Jaderberg et al. 2017) and
PB2 (Parker-Holder et al. 2020), synchronous, on `running_epoch`, a clock a
trial's last result lacks, so no member is cloned into, or from, an end.
Each clone is a new MLflow run (study/tracking/lineage.py).

Synchronous PBT waits at each meeting for every live member. Ray's waits
for ever when one ends before it arrives (diverged, or failed past its
retries: ray-project/ray#12122): `_Meeting` lets the meeting go on without
it (study/internals.py checks the fields it reads)."""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining

from study.plan import RUNNING_EPOCH, Plan
from study.studies import defaults as d


class _Meeting:
    """Ends a member's wait for one that has ended: the ended member counts
    as arrived and scores nothing, and if everyone else is there the
    meeting is held (replayed from a waiting member's result)."""

    def on_trial_complete(self, controller: Any, trial: Trial, result: dict) -> None:
        super().on_trial_complete(controller, trial, result)  # type: ignore[misc]
        self._left(controller, trial)

    def on_trial_error(self, controller: Any, trial: Trial) -> None:
        super().on_trial_error(controller, trial)  # type: ignore[misc]
        self._left(controller, trial)

    def _left(self, controller: Any, trial: Trial) -> None:
        states, due = self._trial_state, self._next_perturbation_sync  # type: ignore[attr-defined]
        if trial in states:
            states[trial].last_score = None  # neither cloned nor cloning
            states[trial].last_train_time = max(states[trial].last_train_time, due)
        others = [t for t in controller.get_live_trials() if t is not trial]
        waiting = [t for t in others if t.status == Trial.PAUSED and states[t].last_result]
        if waiting and all(states[t].last_train_time >= due for t in others):
            first = waiting[0]
            self.on_trial_result(controller, first, states[first].last_result)  # type: ignore[attr-defined]


class MeetingPBT(_Meeting, PopulationBasedTraining):
    pass


def _meeting(plan: Plan) -> dict[str, Any]:
    """What PBT and PB2 share: synchronous meetings at every evaluation, on
    the study's metric, the worst quarter cloning the best."""
    return {
        "time_attr": RUNNING_EPOCH,
        "metric": "objective",
        "mode": plan.study.mode,
        "perturbation_interval": plan.eval_every,
        "quantile_fraction": d.PBT_QUANTILE,
        "synch": True,
        "require_attrs": False,
    }


def pbt(plan: Plan) -> MeetingPBT:
    """Each clone's mutable settings are resampled from their axes (a
    quarter of the time) or scaled by 0.8 or 1.2."""
    return MeetingPBT(
        hyperparam_mutations={k: plan.resolved.axes[k].tune() for k in plan.population},
        resample_probability=d.PBT_RESAMPLE,
        **_meeting(plan),
    )


def pb2(plan: Plan) -> Any:
    """PBT whose clones take the settings a Gaussian-process bandit expects
    to improve the population fastest, within each continuous axis's bounds."""
    # imported here: PB2 imports scikit-learn, which sets KMP_* variables
    from ray.tune.schedulers.pb2 import PB2

    class MeetingPB2(_Meeting, PB2):
        pass

    axes = plan.resolved.axes
    bounds = {k: [axes[k].low, axes[k].high] for k in plan.population}
    return MeetingPB2(hyperparam_bounds=bounds, **_meeting(plan))
