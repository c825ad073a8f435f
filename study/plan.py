"""`Plan`: a validated request, the one shape of a study's settings. It is
built once, after every check (`study.runner.prepare`), and shipped to each
trial as it is (`tune.with_parameters`), so no field is copied from one
object into the next on the way. Pure data: it imports only the study
definitions, so the runner and the trial both build on it.

    plan.phase("search")  # the seeds a phase trains and how they pack
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from study.request import StudyRequest
from study.studies import FAMILY, Resolved, Study, TrialConfig, split_settings
from study.studies.spec import SEED_SOURCES

PHASES = ("search", "confirm")  # the search, then its best on fresh seeds
# the epoch of a result whose trial trains on (a last result has none):
# population-based training's clock
RUNNING_EPOCH = "running_epoch"


def objective_key(metric: str) -> str:
    """The Tune result key of one of several objectives."""
    return f"objective_{metric}"


@dataclass(frozen=True, kw_only=True)
class Phase:
    """The seeds one phase trains: indices `seed_base` .. `seed_base + seeds
    - 1` of every configuration, `pack` of them to a trial (a seed pack)."""

    name: str
    seed_base: int
    seeds: int
    pack: int

    @property
    def packs(self) -> int:
        """Trials a configuration takes in this phase."""
        return math.ceil(self.seeds / self.pack)

    def members(self, index: int) -> range:
        """The seed indices of the `index`-th trial of a configuration."""
        first = self.seed_base + index * self.pack
        return range(first, min(first + self.pack, self.seed_base + self.seeds))


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Everything a run needs, nothing started yet. `experiment_id` and
    `parent_run_id` are filled in (`dataclasses.replace`) once the study's
    MLflow parent run is open; a resumed plan knows its parent from the start."""

    request: StudyRequest
    study: Study
    resolved: Resolved
    dataset: str
    data_dir: str  # absolute: trials run in other working directories
    search: str
    configs: int
    seeds: int
    confirm: int = 0  # best configurations re-run on fresh seeds after the search
    confirm_seeds: int = 0
    tracking_uri: str
    experiment: str
    run_dir: Path
    parent_run_id: str | None = None
    experiment_id: str | None = None
    optuna_url: str | None = None  # the searcher's history; None when nothing is searched
    # --objectives: (metric, "min" or "max") each, searched at once; () for the study's metric
    objectives: tuple[tuple[str, str], ...] = ()
    # --scheduler pbt or pb2: the searched settings it changes mid-training; () otherwise
    population: tuple[str, ...] = ()
    # the driver's MLflow client settings (retries), which its trials take
    tracking_env: tuple[tuple[str, str], ...] = ()

    @property
    def searched(self) -> tuple[str, ...]:
        return tuple(self.resolved.axes)

    @property
    def knobs(self) -> tuple[str, ...]:
        """The searched axes that make configurations: a seed source searched
        as an axis is a seed, pooled over in the tables (not a column)."""
        return tuple(k for k in self.searched if k not in SEED_SOURCES)

    @property
    def classifier_spaces(self) -> int:
        """The most classifier spaces a trial scores in (eval_classifiers,
        fixed or searched): the driver prepares them all before any trial."""
        axis = self.resolved.axes.get("eval_classifiers")
        if axis is not None and hasattr(axis, "values"):
            return max(int(v) for v in axis.values)
        return int(self.resolved.fixed.get("eval_classifiers", 1))

    @property
    def trial_configs(self) -> list[TrialConfig]:
        """The fixed trial settings of each family the study trains (a study
        spanning families may set epochs or eval_every per family)."""
        fixed = self.resolved.fixed
        return [split_settings(self.study, fixed | {FAMILY: f})[0] for f in self.study.families]

    @property
    def eval_every(self) -> int:
        """Epochs between evaluations (the shortest, across families):
        population-based training's interval."""
        return min(c.eval_every for c in self.trial_configs)

    @property
    def threads(self) -> int:
        """Torch threads of one trial: the CPUs it was given."""
        return max(1, int(self.request.cpus_per_trial))

    def phase(self, name: str) -> Phase:
        if name not in PHASES:
            raise ValueError(f"unknown phase '{name}'; one of {', '.join(PHASES)}")
        seeds = self.seeds if name == "search" else self.confirm_seeds
        base = 0 if name == "search" else self.seeds
        return Phase(
            name=name, seed_base=base, seeds=seeds, pack=max(1, min(self.request.pack, seeds))
        )

    @property
    def trials(self) -> int:
        """Tune trials of the search."""
        return self.configs * self.phase("search").packs

    @property
    def confirm_trials(self) -> int:
        return self.confirm * self.phase("confirm").packs if self.confirm else 0

    @property
    def confirm_dir(self) -> Path:
        """Tune's state of the confirmation phase, inside the run's folder."""
        return self.run_dir / "confirm"

    @property
    def summary_dir(self) -> Path:
        """The end-of-study tables, beside Tune's state."""
        return self.run_dir / "summary"

    @property
    def objective_keys(self) -> tuple[str, ...]:
        """What a trial reports to Tune per objective (its mean over a pack)."""
        return tuple(objective_key(m) for m, _ in self.objectives)

    def resume_hint(self) -> str:
        return (
            f"python -m study.run {self.study.name} --resume --name {self.run_dir.name} "
            f"--storage {self.run_dir.parent}"
        )
