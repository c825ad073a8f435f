"""How much a study's numbers owe to the feature space they were scored in.

Trials run with eval_classifiers = K score their final samples in the
spaces of K classifiers trained with seeds 0 .. K-1 (the first is the
shipped one): fid in space 0, fid_classifier1 .. in the others.
`classifier_spaces` sets the configurations' mean fids side by side, space
by space, and says how far the ranking moves (Kendall's tau against space 0,
and whether the best configuration stays best).
"""

from __future__ import annotations

import pandas as pd
from scipy.stats import kendalltau

from scoring.registry import METRICS


def space_columns(runs: pd.DataFrame, metric: str = "fid") -> list[str]:
    """The metric's column in each classifier space these runs were scored in."""
    others = sorted(
        (c for c in runs.columns if c.startswith(f"{metric}_classifier") and c[-1].isdigit()),
        key=lambda c: int(c.removeprefix(f"{metric}_classifier")),
    )
    return [metric, *others] if others and metric in runs else []


def classifier_spaces(runs: pd.DataFrame, metric: str = "fid") -> pd.DataFrame | None:
    """One row per configuration (final evaluations of finished runs): its
    mean over seeds in each space (`space 0` .. `space K-1`), their relative
    spread (std / mean) and its rank in each space. attrs["spaces"]: per
    space, Kendall's tau of its ranking against space 0 and whether it
    names the same best configuration. None without classifier spaces."""
    cols = space_columns(runs, metric)
    if not cols:
        return None
    done = runs.dropna(subset=cols)
    if done["config_id"].nunique() < 2:
        return None
    means = done.groupby("config_id")[cols].mean()
    means.columns = [f"space {i}" for i in range(len(cols))]
    ascending = METRICS[metric].mode == "min"
    ranks = means.rank(ascending=ascending)
    table = means.assign(
        spread=means.std(axis=1) / means.mean(axis=1).abs(),
        **{f"rank {i}": ranks[f"space {i}"] for i in range(len(cols))},
    )
    best = ranks["space 0"].idxmin()
    table.attrs["spaces"] = pd.DataFrame(
        [
            {
                "space": i,
                "kendall_tau": kendalltau(ranks["space 0"], ranks[f"space {i}"]).statistic,
                "same_best": ranks[f"space {i}"].idxmin() == best,
            }
            for i in range(1, len(cols))
        ]
    )
    return table.reset_index()
