"""Where a metric's spread comes from: the configuration, each seed source
(init, data order, training noise, evaluation draw) and what is left.

Method: a random-effects ANOVA of main effects, estimated by the method of
moments. For each factor with levels l (n_l runs, mean m_l), SS = sum n_l
(m_l - m)^2 on L - 1 degrees of freedom; the residual is what the factors
leave. Its variance component is (MS - MS_residual) / n0, with n0 = (N -
sum n_l^2 / N) / (L - 1) (N / L when balanced), clipped at zero; a share is
a component over their sum. For a balanced crossed design (a study whose
sources are crossed axes) this is the classical unbiased estimator, in
closed form: no fit that can fail to converge, which a mixed model with
crossed random effects (statsmodels' MixedLM) often does on a few dozen
runs. Interactions are pooled into the residual.

Intervals: the pigeonhole bootstrap for crossed random effects (Owen 2007):
each replicate resamples the levels of every factor independently, and a run
counts as often as its levels were drawn. Resampling runs alone would hide
that a factor seen at three levels is known only from those three: its
interval stays as wide as three levels allow.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd

from analysis.runs import AnalysisError, load_runs
from study.studies.spec import SEED_SOURCES

N_BOOT = 1000
COLUMNS = ["source", "levels", "variance", "share", "ci_low", "ci_high"]


def variance_sources(
    study: str,
    metric: str,
    tracking_uri: str | None = None,
    *,
    runs: pd.DataFrame | None = None,
    experiment: str | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> pd.DataFrame:
    """The share of `metric`'s variance over a study's finished runs due to
    the configuration (config_id), each seed source the study varied, and the
    residual: columns source, levels, variance, share and a 95% interval of
    the share (ci_low, ci_high). A study that set no source apart varies
    them all at once: one source, `seed`. A factor with one level is left out."""
    runs = runs if runs is not None else load_runs(study, tracking_uri, experiment)
    if metric not in runs:
        raise AnalysisError(f"no run logged '{metric}'")
    ok = runs[np.isfinite(pd.to_numeric(runs[metric], errors="coerce"))]
    factors = _factors(ok)
    if not factors:
        raise AnalysisError("neither the configuration nor any seed varies across the runs")
    codes = np.stack(list(factors.values()))
    y = ok[metric].to_numpy(float)
    table = pd.DataFrame(
        {
            "source": [*factors, "residual"],
            "levels": [*(int(c.max()) + 1 for c in codes), len(y)],
            "variance": components(y, codes, np.ones(len(y))),
        }
    )
    table["share"] = _shares(table["variance"].to_numpy())
    boots = _bootstrap(y, codes, n_boot, seed)
    table["ci_low"], table["ci_high"] = np.nanpercentile(boots, [2.5, 97.5], axis=0)
    table.attrs |= {"metric": metric, "runs": len(y), "dropped": len(runs) - len(y)}
    return table[COLUMNS]


def _factors(runs: pd.DataFrame) -> dict[str, np.ndarray]:
    """Level codes of config_id and of each seed source with more than one
    value. Columns that split the runs the same way cannot be told apart and
    count as one source, named for the sources among them; where every
    source followed the seed, `seed` (init, data order, noise and draw at once)."""
    found: dict[tuple, list[str]] = {}
    for c in ("config_id", *SEED_SOURCES, "seed"):
        if c in runs and runs[c].nunique() > 1:
            codes = pd.factorize(runs[c])[0]
            found.setdefault(tuple(codes), []).append(c)
    named = {}
    for codes, names in found.items():
        sources = [n for n in names if n != "seed"]
        name = "seed" if set(SEED_SOURCES) <= set(names) or not sources else "+".join(sources)
        named[name] = np.array(codes)
    return named


def components(y: np.ndarray, codes: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Variance components (one a factor, then the residual) of y with
    frequency weights w; codes: one row of level codes a factor."""
    n = w.sum()
    mean = (w * y).sum() / n
    total = (w * (y - mean) ** 2).sum()
    ms, n0, ss_left, df_left = [], [], total, n - 1
    for c in codes:
        counts = np.bincount(c, weights=w)
        seen = counts > 0
        means = np.bincount(c, weights=w * y)[seen] / counts[seen]
        ss, df = (counts[seen] * (means - mean) ** 2).sum(), seen.sum() - 1
        ms.append(ss / df if df > 0 else np.nan)
        n0.append((n - (counts[seen] ** 2).sum() / n) / df if df > 0 else np.nan)
        ss_left, df_left = ss_left - ss, df_left - df
    if df_left < 1:
        raise AnalysisError(
            f"{int(n)} runs leave no degrees of freedom for the residual: more seeds are needed"
        )
    ms_res = max(ss_left, 0.0) / df_left
    sigma = [
        max((m - ms_res) / k, 0.0) if np.isfinite(m) else 0.0 for m, k in zip(ms, n0, strict=True)
    ]
    return np.array([*sigma, ms_res])


def _shares(variance: np.ndarray) -> np.ndarray:
    total = variance.sum()
    return variance / total if total > 0 else np.full_like(variance, np.nan)


def _bootstrap(y: np.ndarray, codes: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Shares of n_boot pigeonhole replicates (rows: replicates)."""
    rng = np.random.default_rng(seed)
    out = np.full((n_boot, len(codes) + 1), np.nan)
    for b in range(n_boot):
        w = np.ones(len(y))
        for c in codes:  # each factor's levels drawn with replacement
            levels = int(c.max()) + 1
            w *= np.bincount(rng.integers(levels, size=levels), minlength=levels)[c]
        # a replicate with too few runs left counts as unknown (NaN)
        with contextlib.suppress(AnalysisError):
            if w.sum() >= 2:
                out[b] = _shares(components(y, codes, w))
    return out
