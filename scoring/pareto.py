"""The Pareto front: the points no other point beats on every objective."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def non_dominated(values: np.ndarray, modes: list[str]) -> np.ndarray:
    """Which rows of `values` (points x objectives) are on the front, each
    objective minimised or maximised as `modes` says ("min"/"max"). A row is
    dominated when another is at least as good on every objective and better
    on one; a row with a NaN is never on the front. O(n^2): fronts here hold
    tens of points."""
    signs = np.array([1.0 if m == "min" else -1.0 for m in modes])
    v = np.asarray(values, dtype=float) * signs
    finite = ~np.isnan(v).any(axis=1)
    front = finite.copy()
    for i in np.flatnonzero(finite):
        others = v[finite]
        beaten = (others <= v[i]).all(axis=1) & (others < v[i]).any(axis=1)
        front[i] = not beaten.any()
    return front


def on_front(table: pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> pd.Series:
    """Per row of a per-configuration table (`METRIC_mean` columns), whether
    its means are on the Pareto front of these (metric, direction) pairs."""
    means = table[[f"{m}_mean" for m, _ in objectives]].to_numpy(float)
    return pd.Series(non_dominated(means, [d for _, d in objectives]), index=table.index)
