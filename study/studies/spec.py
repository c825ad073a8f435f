"""What a study is: a family, a dataset, fixed settings and searched axes.

A study is code (as in disentanglement_lib): a sweep over a product of axes and
seeds. `resolve` turns a study plus the user's `--set` overrides into the
validated fixed settings and the axes still searched; a key set by the user is
fixed, so `--set loss=hinge` takes loss out of the search.

A study may span families: its axis `family` chooses each trial's family, and
a key scoped `FAMILY.key` (`gan.lr_g`) holds one family's setting. Each
trial sees the unscoped settings with its own family's scoped ones on top;
the other families' are not its settings at all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from models import FAMILIES
from models.config import ConfigError, build, coerce, describe, keys, mutable_keys, param
from study.studies import defaults as d

# --- axes -------------------------------------------------------------------


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float

    def optuna(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.FloatDistribution(self.low, self.high, log=True)

    def tune(self) -> Any:
        """Ray Tune's domain: what population-based training draws and resamples."""
        from ray import tune

        return tune.loguniform(self.low, self.high)

    def grid(self) -> list[Any]:
        return [float(v) for v in np.geomspace(self.low, self.high, 3)]

    def extremes(self) -> list[Any]:
        return [self.low, self.high]

    def __str__(self) -> str:
        return f"log-uniform {self.low:g}..{self.high:g}"


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def optuna(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.FloatDistribution(self.low, self.high)

    def tune(self) -> Any:
        from ray import tune

        return tune.uniform(self.low, self.high)

    def grid(self) -> list[Any]:
        return [float(v) for v in np.linspace(self.low, self.high, 3)]

    def extremes(self) -> list[Any]:
        return [self.low, self.high]

    def __str__(self) -> str:
        return f"uniform {self.low:g}..{self.high:g}"


class _Discrete:
    """An axis over a finite tuple of `values`: every one in a grid."""

    values: tuple[Any, ...]

    def optuna(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.CategoricalDistribution(self.values)

    def tune(self) -> Any:
        from ray import tune

        return tune.choice(list(self.values))

    def grid(self) -> list[Any]:
        return list(self.values)

    def extremes(self) -> list[Any]:
        return list(self.values)

    def __str__(self) -> str:
        return "{" + ", ".join(map(str, self.values)) + "}"


@dataclass(frozen=True)
class Choice(_Discrete):
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Bundles(_Discrete):
    """An axis over named bundles of settings: one value (a technique) sets
    several keys at once. Trials record the name beside the settings."""

    options: dict[str, dict[str, Any]]

    @property
    def values(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.options)

    def settings(self, value: Any) -> dict[str, Any]:
        if value not in self.options:
            raise ConfigError(f"'{value}' is not one of {', '.join(self.options)}")
        return dict(self.options[value])


@dataclass(frozen=True)
class Tied(_Discrete):
    """An axis whose value is given to several keys (lr_g and lr_d equal)."""

    keys: tuple[str, ...]
    values: tuple[Any, ...]

    def settings(self, value: Any) -> dict[str, Any]:
        return dict.fromkeys(self.keys, value)

    def __str__(self) -> str:
        return f"{' = '.join(self.keys)} in {super().__str__()}"


Axis = LogUniform | Uniform | Choice | Bundles | Tied
FAMILY = "family"  # the axis of a study that spans families
DERIVED = (Bundles, Tied)  # axes that stand for settings of other keys


# --- harness settings of one trial ------------------------------------------

# what a seed sets, each settable apart (study/trial/seeds.py says how)
SEED_SOURCES = ("init_seed", "data_seed", "sample_seed", "eval_seed")


@dataclass(kw_only=True)
class TrialConfig:
    epochs: int = param(20, low=1, high=100_000, help="training epochs")
    eval_every: int = param(5, low=1, high=100_000, help="epochs between evaluations")
    checkpoint_seconds: float = param(
        10.0,
        low=0.0,
        high=1e9,
        help="checkpoint at an evaluation once this long has passed since the last (0: at every"
        " evaluation); a retry redoes at most this much work",
    )
    eval_samples: int = param(1000, low=10, high=1_000_000, help="samples scored per evaluation")
    probe_labels: int = param(
        500, low=10, high=10**7, help="labelled training images of the linear probe (encoders)"
    )
    train_size: int = param(0, low=0, high=10**9, help="use the first N training samples (0: all)")
    anomaly_class: int = param(
        -1,
        low=-1,
        high=10**6,
        help="leave this class out of training and log anomaly_auroc, the held-out "
        "reconstruction error as its anomaly score (-1: off; reconstructing families)",
    )
    finetune_labels: int = param(
        0,
        low=0,
        high=10**7,
        help="at the final evaluation, fine-tune the encoder with a linear head on the first N "
        "labelled training images, and train the same network from scratch on them: "
        "finetune_accuracy, scratch_accuracy (0: off; encoder families)",
    )
    max_loss: float = param(1e5, low=1e-12, high=1e30, help="|loss| above this counts as diverged")
    seed: int = param(0, low=0, high=2**31 - 1, help="base seed; repeat i uses seed + i")
    # SEED_SOURCES; -1: follows seed
    init_seed: int = param(-1, low=-1, high=2**31 - 1, help="weight initialisation (-1: seed)")
    data_seed: int = param(-1, low=-1, high=2**31 - 1, help="data order (-1: seed)")
    sample_seed: int = param(-1, low=-1, high=2**31 - 1, help="training noise (-1: seed)")
    eval_seed: int = param(-1, low=-1, high=2**31 - 1, help="samples scored (-1: seed)")
    eval_draws: int = param(
        1, low=1, high=100, help="the final evaluation's sample metrics on N draws: mean, std"
    )
    eval_classifiers: int = param(
        1,
        low=1,
        high=20,
        help="the final evaluation's fid and modes_covered also in the spaces of classifiers"
        " trained with seeds 1 .. N-1: each, mean, std",
    )
    inception_weights: str = param("", help="local Inception v3 weights file: adds fid_inception")
    bf16: bool = param(False, help="bfloat16 autocast in training steps (for GPUs that have it)")
    compile: bool = param(False, help="torch.compile the family's networks (pays off on GPUs)")


# --- studies ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Study:
    name: str
    description: str
    family: str = ""  # every trial's family; "" in a study with a `family` axis
    dataset: str
    metric: str  # the searcher's objective and the table's sort key
    mode: str  # "min" or "max"
    axes: dict[str, Axis]
    fixed: dict[str, Any] = field(default_factory=dict)  # trial and family settings
    num_samples: int = d.NUM_SAMPLES  # configurations
    seeds: int = d.SEEDS
    confirm: int = d.CONFIRM  # the best configurations re-run on fresh seeds after the search
    confirm_seeds: int = d.CONFIRM_SEEDS
    search: str = d.SEARCH  # "grid" where the axes are few and discrete
    smoke: dict[str, Any] = field(default_factory=dict)  # settings under --smoke
    table_metrics: tuple[str, ...] = ()  # reported with mean and std per configuration
    # an axis whose values (techniques) the study compares across the rest of
    # its grid: a table per value (stable share, best and median metric)
    group_by: str = ""

    @property
    def spans(self) -> bool:
        """Whether the study's trials train several families (a `family` axis)."""
        return FAMILY in self.axes

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self.axes[FAMILY].values) if self.spans else (self.family,)

    def family_of(self, values: dict[str, Any]) -> str:
        """The family of a trial with these settings."""
        return str(values.get(FAMILY, self.families[0])) if self.spans else self.family


def config_of(family: str) -> type:
    return FAMILIES[family].Config


@dataclass(frozen=True)
class Resolved:
    study: Study
    fixed: dict[str, Any]  # every setting not searched, validated and typed
    axes: dict[str, Axis]  # the axes still searched


def mutable_axes(study: Study, axes: dict[str, Axis]) -> tuple[str, ...]:
    """The searched axes that may change mid-training: each key they set is
    a `mutable` setting of its config (learning rates, beta1, what a family
    marks). A technique (Bundles) or the family is never one: it shapes the
    networks."""

    def sets(key: str, axis: Axis) -> tuple[str, ...]:
        return axis.keys if isinstance(axis, Tied) else (key,)

    def mutable(key: str) -> bool:
        return key != FAMILY and scope_of(key)[1] in mutable_keys(settings_owner(study, key))

    return tuple(
        k for k, a in axes.items()
        if not isinstance(a, Bundles) and all(mutable(x) for x in sets(k, a))
    )  # fmt: skip


def scope_of(key: str) -> tuple[str | None, str]:
    """'gan.lr_g' -> ('gan', 'lr_g'); 'epochs' -> (None, 'epochs')."""
    family, dot, name = key.partition(".")
    return (family, name) if dot else (None, key)


def settings_owner(study: Study, key: str) -> type:
    """The config class a key belongs to (trial settings or a family's
    config); a key of a family the study does not train, or of another
    family than its scope, is refused with a line that names both."""
    family, name = scope_of(key)
    if family is not None and family not in study.families:
        trains = f"study {study.name} trains {', '.join(study.families)}"
        if family not in FAMILIES:
            raise ConfigError(f"unknown family '{family}' in {key}; {trains}")
        raise ConfigError(f"{key}: {trains}, not {family}")
    if name in keys(TrialConfig):
        return TrialConfig
    own = family or (None if study.spans else study.family)
    if own is not None and name in keys(config_of(own)):
        return config_of(own)
    raise _not_a_setting(study, key, own)


def _not_a_setting(study: Study, key: str, own: str | None) -> ConfigError:
    """Why `key` is no setting of `own` (the study's family, or the key's
    scope): another family's (named with the one to give it to), or none."""
    name = scope_of(key)[1]
    owners = [f for f in FAMILIES if name in keys(config_of(f))]
    if owners and own is not None:
        accepted = ", ".join(sorted(keys(TrialConfig) | keys(config_of(own))))
        return ConfigError(
            f"{name} is a setting of {', '.join(owners)}, not of {own}; accepted: {accepted}"
        )
    trained = [f for f in owners if f in study.families]
    if trained:
        return ConfigError(
            f"{name} is a setting of {', '.join(trained)}: study {study.name} spans families, "
            f"so give it as {trained[0]}.{name}"
        )
    if owners:
        return ConfigError(
            f"{name} is a setting of {', '.join(owners)}, which study {study.name} does not train"
        )
    if name.endswith("_seed"):  # a seed source misspelt or invented: name the real ones
        return ConfigError(f"unknown seed source '{key}'; the sources: {', '.join(SEED_SOURCES)}")
    accepted = sorted(keys(TrialConfig) | set().union(*(_scoped(study, f) for f in study.families)))
    return ConfigError(
        f"unknown key '{key}' for study {study.name}; accepted: {', '.join(accepted)}"
    )


def _scoped(study: Study, family: str) -> set[str]:
    """A family's keys as a study takes them: scoped where it spans families."""
    own = keys(config_of(family))
    return {f"{family}.{k}" for k in own} if study.spans else set(own)


def _unscoped(study: Study, key: str) -> str:
    """A single-family study takes its own family's scope and drops it."""
    family, name = scope_of(key)
    return name if family == study.family and not study.spans else key


def resolve(
    study: Study,
    overrides: dict[str, str],
    smoke: bool = False,
    sweeps: dict[str, list[str]] | None = None,
) -> Resolved:
    """Settings and axes of one invocation: --set fixes a key (it leaves the
    search), --sweep makes any key an axis over the values given."""
    overrides = {_unscoped(study, k): v for k, v in overrides.items()}
    sweeps = {_unscoped(study, k): v for k, v in (sweeps or {}).items()}
    both = sorted(set(sweeps) & set(overrides))
    if both:
        raise ConfigError(f"{', '.join(both)} given to both --set and --sweep")
    values = _layered(study.fixed, study.smoke if smoke else {}, overrides, dict.fromkeys(sweeps))
    fixed = {k: _typed(study, k, v) for k, v in values.items() if k not in sweeps}
    axes = {k: a for k, a in study.axes.items() if k not in overrides}
    for key, given in sweeps.items():
        if isinstance(study.axes.get(key), DERIVED):
            raise ConfigError(f"{key} stands for several settings; --sweep its keys instead")
        axes[key] = Choice(tuple(_typed(study, key, v) for v in given))
    _check_family_sweeps(study, axes)
    for key, axis in axes.items():  # a study's own axes must fit its config's ranges
        for v in axis.extremes():
            for k, setting in expand(study, {key: v}).items():
                _typed(study, k, setting)
    return Resolved(study, fixed, axes)


def _layered(*layers: dict[str, Any]) -> dict[str, Any]:
    """The study's settings, then --smoke's, then the user's: a later layer
    wins, and its unscoped key (epochs) also wins over an earlier layer's
    scoped ones (vae.epochs), which are dropped."""
    out: dict[str, Any] = {}
    for layer in layers:
        plain = {k for k in layer if scope_of(k)[0] is None}
        out = {k: v for k, v in out.items() if scope_of(k)[1] not in plain} | layer
    return out


def _check_family_sweeps(study: Study, axes: dict[str, Axis]) -> None:
    """One family's knob swept while several families train would retrain
    every other family once per value: refused."""
    family_axis = axes.get(FAMILY)
    if family_axis is None or len(family_axis.grid()) < 2:
        return
    scoped = sorted(k for k in axes if scope_of(k)[0] is not None)
    if scoped:
        raise ConfigError(
            f"--sweep {scoped[0]}: study {study.name} trains several families, and each would "
            f"train again at every value; add --set family={scope_of(scoped[0])[0]} to sweep it"
        )


def _typed(study: Study, key: str, value: Any) -> Any:
    """A fixed setting checked and typed; a derived axis's value (--set
    technique=nadam) is checked through the settings it stands for."""
    if key == FAMILY and study.spans:
        if value not in study.families:
            raise ConfigError(
                f"family '{value}' is not trained by study {study.name}; its families: "
                + ", ".join(study.families)
            )
        return value
    axis = study.axes.get(key)
    if not isinstance(axis, DERIVED):
        return coerce(settings_owner(study, key), scope_of(key)[1], value)
    if isinstance(axis, Bundles):
        axis.settings(value)  # a known name
        return value
    typed = {k: coerce(settings_owner(study, k), k, v) for k, v in axis.settings(value).items()}
    return next(iter(typed.values()))


def expand(study: Study, values: dict[str, Any]) -> dict[str, Any]:
    """The study's derived axes (Bundles, Tied) replaced by the settings they
    stand for; those settings win over the same keys given otherwise."""
    out, derived = dict(values), {}
    for key, axis in study.axes.items():
        if isinstance(axis, DERIVED) and key in out:
            derived |= axis.settings(out.pop(key))
    return out | derived


def axis_labels(study: Study, values: dict[str, Any]) -> dict[str, Any]:
    """The derived axes' own values (a technique's name) and the family of a
    study that spans families, for the params and the configuration's id."""
    labels = {k: values[k] for k, a in study.axes.items() if isinstance(a, DERIVED) and k in values}
    return labels | ({FAMILY: study.family_of(values)} if study.spans else {})


def own_settings(study: Study, values: dict[str, Any]) -> dict[str, Any]:
    """The settings of one trial: the unscoped ones, its family's scoped
    ones on top (unscoped), no other family's; derived axes expanded."""
    family = study.family_of(values)
    own = {k: v for k, v in values.items() if scope_of(k)[0] is None and k != FAMILY}
    own |= {scope_of(k)[1]: v for k, v in values.items() if scope_of(k)[0] == family}
    return expand(study, own)


def split_settings(study: Study, values: dict[str, Any]) -> tuple[TrialConfig, Any]:
    """Typed (TrialConfig, family config) from one flat dict of settings."""
    config = config_of(study.family_of(values))
    values = own_settings(study, values)
    trial = {k: v for k, v in values.items() if k in keys(TrialConfig)}
    family = {k: v for k, v in values.items() if k not in trial}
    return build(TrialConfig, trial), build(config, family)


# seeds (every source of one), checkpoints, extra evaluation draws and
# classifier spaces do not make another configuration: the same model, trained the same way
NOT_IN_ID = ("seed", *SEED_SOURCES, "checkpoint_seconds", "eval_draws", "eval_classifiers")


def config_id(values: dict[str, Any]) -> str:
    """Stable id shared by the seeds of one configuration (how often a trial
    checkpoints does not make it another)."""
    rest = {k: v for k, v in sorted(values.items()) if k not in NOT_IN_ID}
    return hashlib.sha1(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:10]


def describe_study(study: Study) -> str:
    """What `--list STUDY` prints: the study, its axes, and every setting
    --set accepts with its default (the study's own where it fixes one),
    accepted values and meaning; scoped FAMILY.key where it spans families."""
    where = f"families {', '.join(study.families)}" if study.spans else f"family {study.family}"
    lines = [f"{study.name}: {study.description}", f"  {where} on {study.dataset}"]
    lines += [f"  axis {k}: {a}" for k, a in study.axes.items()]
    sections = [("trial settings", TrialConfig, "")]
    sections += [
        (f"{f} settings", config_of(f), f"{f}." if study.spans else "") for f in study.families
    ]
    for title, cls, prefix in sections:
        lines.append(f"\n{title} (--set key=value):")
        for key, default, accepted, help_ in describe(cls):
            key = prefix + key
            shown = f"{study.fixed[key]!r} (study)" if key in study.fixed else default
            lines.append(f"  {key:18s} {shown:15s} {accepted:30s} {help_}")
        trial_keys = keys(TrialConfig)
        for key in (k for k in study.fixed if prefix and k.startswith(prefix)):
            if scope_of(key)[1] in trial_keys:  # the study's own budget for this family
                lines.append(f"  {key:18s} {study.fixed[key]!r} (study)")
    if study.spans:
        lines.append("\n(a trial setting scoped FAMILY.key applies to that family alone)")
    return "\n".join(lines)
