"""Studies: definitions (a registry), the CLI, validation and resume, the run
on Ray Tune, the one trainable, and MLflow bookkeeping. Builds on `models`,
`datasources` and `scoring`; `analysis` reads what it writes.

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
        from study import api

        return getattr(api, name)
    raise AttributeError(f"module 'study' has no attribute {name!r}")
