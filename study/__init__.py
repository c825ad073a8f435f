"""Studies, in four rooms that import one way (each only those above it):

    studies/   the study definitions, pure data: axes, settings, STUDIES
    tracking/  what a study writes: the MLflow store, a seed's run, Optuna storage
    trial/     one trial on whatever node: set-up, the epoch loop, probes, pictures
    runner/    the command line, validation and resume, Ray Tune, the end tables

and beside them `request.py` (what a user asks), `plan.py` (the validated
plan, the one shape of a trial's settings), `errors.py` and `internals.py`
(every workaround for a library's internals, checked at start-up). Builds on
`models`, `datasources` and `scoring`; `analysis` reads what studies wrote
through `study.tracking` and the definitions in `study.studies`.

    from study import StudyRequest, run_study
    result = run_study(StudyRequest("gan_stability", smoke=True))
    result.table  # one row per configuration, best first
"""

from typing import Any

__all__ = ["StudyRequest", "StudyResult", "run_study"]


def __getattr__(name: str) -> Any:
    # lazily, so `from study.studies import STUDIES` does not import Ray
    if name == "StudyRequest":
        from study.request import StudyRequest

        return StudyRequest
    if name in ("StudyResult", "run_study"):
        from study.runner import api

        return getattr(api, name)
    raise AttributeError(f"module 'study' has no attribute {name!r}")
