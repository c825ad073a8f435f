"""The study definitions, pure data: a study is code (a sweep over a product
of axes and seeds). `spec.py` holds the axes, the harness's trial settings
(`TrialConfig`), `Study` and how `--set`/`--sweep` resolve against it;
`catalog.py` the registry `STUDIES`, one `register(Study(...))` per study;
`defaults.py` every harness default, `--smoke` included."""

from study.studies.catalog import STUDIES, register
from study.studies.spec import (
    FAMILY,
    Axis,
    Bundles,
    Choice,
    LogUniform,
    Resolved,
    Study,
    Tied,
    TrialConfig,
    Uniform,
    axis_labels,
    config_id,
    describe_study,
    mutable_axes,
    own_settings,
    resolve,
    split_settings,
)

__all__ = [
    "FAMILY", "STUDIES", "Axis", "Bundles", "Choice", "LogUniform", "Resolved", "Study", "Tied",
    "TrialConfig", "Uniform", "axis_labels", "config_id", "describe_study", "mutable_axes",
    "own_settings", "register", "resolve", "split_settings",
]  # fmt: skip
