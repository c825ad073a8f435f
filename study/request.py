"""`StudyRequest`: everything a user asks of one study run, typed. The CLI
builds one from its arguments; notebooks and benchmarks build one directly
and pass it to `study.run_study`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from study.studies import defaults as d


@dataclass(kw_only=True)
class StudyRequest:
    study: str | None = field(kw_only=False)  # the one positional: StudyRequest("gan_stability")
    dataset: str | None = None  # None: the study's
    data_dir: str = d.DATA_DIR
    num_samples: int | None = None  # configurations; None: the study's
    seeds: int | None = None  # None: the study's
    pack: int = 1  # seeds of a configuration trained as one fused model (a seed pack)
    confirm: int | None = None  # best configurations re-run on fresh seeds; None: the study's
    confirm_seeds: int | None = None  # fresh seeds each; None: the study's
    epochs: int | None = None  # shorthand for sets["epochs"]
    sets: dict[str, str] = field(default_factory=dict)  # --set KEY=VALUE
    sweeps: dict[str, list[str]] = field(default_factory=dict)  # --sweep KEY=V1,V2
    objectives: list[str] = field(default_factory=list)  # --objectives M1,M2: a Pareto search
    search: str | None = None  # None: the study's
    scheduler: str = d.SCHEDULER
    cpus_per_trial: float = d.CPUS_PER_TRIAL
    gpus_per_trial: float = d.GPUS_PER_TRIAL
    max_concurrent: int | None = None  # None: as many as the cluster fits
    address: str | None = None  # Ray cluster; None: a local one
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI or MLflow's default
    experiment: str | None = None  # None: the study name
    storage: str = d.STORAGE
    name: str | None = None  # run folder under storage; None: STUDY-DATE-TIME
    optuna_storage: str | None = None  # the searcher's history; None: a file in the run folder
    resume: bool = False
    smoke: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudyRequest:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_argv(self) -> list[str]:
        """The equivalent `python -m study.run` arguments (for the record)."""
        argv = [self.study or ""]
        defaults = StudyRequest(self.study)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("study", "sets", "sweeps", "objectives"):
                continue
            if value == getattr(defaults, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            argv += [flag] if value is True else [flag, str(value)]
        for k, v in self.sets.items():
            argv += ["--set", f"{k}={v}"]
        for k, values in self.sweeps.items():
            argv += ["--sweep", f"{k}={','.join(values)}"]
        if self.objectives:
            argv += ["--objectives", ",".join(self.objectives)]
        return argv
