"""Typed hyperparameter configs.

Each field of a config dataclass carries its accepted range or choices in its
metadata, so `--set key=value` parsing, validation, the search space checks and
the MLflow params all come from the one definition next to the model.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any


class ConfigError(ValueError):
    """A user-supplied value is unknown, of the wrong type or out of range."""


def param(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[Any, ...] | None = None,
    help: str = "",
    mutable: bool = False,
) -> Any:
    """A dataclass field with its accepted values attached (bounds inclusive).
    `mutable`: the setting may change mid-training (population-based
    training perturbs it): it shapes no weight, only how they are updated."""
    meta = {"low": low, "high": high, "choices": choices, "help": help, "mutable": mutable}
    return dataclasses.field(default=default, metadata=meta)


def mutable_keys(cls: type) -> tuple[str, ...]:
    """The fields of a config that may change mid-training (`param(mutable=True)`)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("mutable"))


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(cls: type, key: str, value: Any) -> Any:
    """Convert `value` (a string from the command line or a Python value) to the
    type of `cls.key` and check it against the field's range or choices."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise ConfigError(f"unknown key '{key}'; accepted: {', '.join(sorted(fields))}")
    kind = field_types(cls)[key]
    meta = fields[key].metadata
    try:
        out = _convert(kind, value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{key}={value!r} is not a valid {kind.__name__}{_accepted(meta)}"
        ) from None
    if meta.get("choices") is not None and out not in meta["choices"]:
        raise ConfigError(f"{key}={value!r} is not accepted; choose from {meta['choices']}")
    low, high = meta.get("low"), meta.get("high")
    if (low is not None and out < low) or (high is not None and out > high):
        raise ConfigError(f"{key}={value!r} is out of range{_accepted(meta)}")
    return out


def _convert(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(str(value).strip()) if isinstance(value, str) else int(value)
    if kind is float:
        if isinstance(value, bool):
            raise TypeError(value)
        out = float(value)
        if out != out or out in (float("inf"), float("-inf")):
            raise ValueError(value)
        return out
    if kind is str:
        return str(value)
    raise TypeError(f"unsupported config field type {kind}")


def _accepted(meta: dict) -> str:
    if meta.get("choices") is not None:
        return f" (choose from {meta['choices']})"
    low, high = meta.get("low"), meta.get("high")
    if low is not None or high is not None:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        return f" (accepted: {lo}..{hi})"
    return ""


def build(cls: type, values: dict[str, Any]) -> Any:
    """Instantiate `cls` from a dict, coercing and validating every value."""
    return cls(**{k: coerce(cls, k, v) for k, v in values.items()})


def keys(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def describe(cls: type) -> list[tuple[str, str, str, str]]:
    """(key, default, accepted values, help) of every field, for listings."""
    rows = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("choices") is not None:
            accepted = " | ".join(map(str, meta["choices"]))
        else:
            accepted = _accepted(meta).removeprefix(" (accepted: ").removesuffix(")")
        rows.append((f.name, repr(f.default), accepted, f.metadata.get("help", "")))
    return rows
