"""How much each knob explains a metric across configurations, and how sure
that is: a random forest's permutation importance with a bootstrap interval
over configurations, and Optuna's own evaluators (fANOVA, PED-ANOVA) on the
same trials, as optuna-dashboard shows them.

A few configurations cannot rank many knobs: the forest then spreads the
importance over whatever happens to correlate with the metric. `importance`
says so (attrs["verdict"]) instead of printing a ranking that would not
survive another draw of configurations."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import optuna
import pandas as pd

from analysis.runs import AnalysisError
from analysis.stats import knobs
from study.studies import STUDIES

RESAMPLES = 30  # forests refitted on configurations drawn again: about 0.2 s each
FEW_VALUES = 5  # a knob seen at no more values than this, without an axis: categorical
CONFIGS_PER_KNOB = 2  # fewer configurations than this a knob (or under 10): too few to rank
EVALUATORS = {
    "fanova": lambda seed: optuna.importance.FanovaImportanceEvaluator(seed=seed),
    "ped_anova": lambda seed: optuna.importance.PedAnovaImportanceEvaluator(),
}


def _forest_importance(data: pd.DataFrame, metric: str, params: list[str], seed: int,
                       trees: int = 200, repeats: int = 20) -> pd.Series:  # fmt: skip
    """Permutation importance of a forest on the knobs (categoricals
    one-hot, summed back per knob), normalised to sum to 1."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    x = pd.get_dummies(data[params].astype({p: str for p in params if data[p].dtype == bool}))
    y = data[metric].to_numpy(float)
    forest = RandomForestRegressor(n_estimators=trees, random_state=seed, min_samples_leaf=2)
    forest.fit(x, y)
    result = permutation_importance(forest, x, y, n_repeats=repeats, random_state=seed)
    per_column = pd.Series(np.clip(result.importances_mean, 0, None), index=x.columns)
    owner = {c: next(p for p in params if c == p or c.startswith(f"{p}_")) for c in x.columns}
    total = per_column.groupby(owner).sum().reindex(params).fillna(0.0)
    return total / total.sum() if total.sum() > 0 else total


def importance(
    runs: pd.DataFrame,
    metric: str,
    params: Sequence[str] | None = None,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> pd.DataFrame:
    """param, importance (sums to 1) and its 95% interval (low, high) over
    `resamples` bootstrap draws of the configurations (a configuration's
    seeds travel together), most important first. attrs["verdict"]: why
    the knobs cannot be ranked, or which ones cannot be told apart; empty
    when the top knob's interval clears the next one's. Trials without the
    metric are left out."""
    params = list(params) if params is not None else knobs(runs, [metric])
    data = runs.dropna(subset=[metric])
    if len(data) < 4 or not params:
        out = pd.DataFrame({"param": params, "importance": np.nan, "low": np.nan, "high": np.nan})
        out.attrs["verdict"] = f"{len(data)} trials with {metric}: too few to rank any knob"
        return out
    point = _forest_importance(data, metric, params, seed)
    configs = data["config_id"].unique()
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples if len(configs) >= 4 else 0):
        picked = rng.choice(configs, len(configs))
        sample = pd.concat([data[data["config_id"] == c] for c in picked], ignore_index=True)
        draws.append(_forest_importance(sample, metric, params, seed, trees=50, repeats=3))
    boot = pd.DataFrame(draws, columns=params)
    out = pd.DataFrame({"param": params, "importance": point.to_numpy(),
                        "low": boot.quantile(0.025).reindex(params).to_numpy(),
                        "high": boot.quantile(0.975).reindex(params).to_numpy()})  # fmt: skip
    out = out.sort_values("importance", ascending=False).reset_index(drop=True)
    out.attrs["verdict"] = _verdict(out, len(configs))
    return out


def _verdict(table: pd.DataFrame, configs: int) -> str:
    needed = max(10, CONFIGS_PER_KNOB * len(table))
    if configs < needed:
        return (
            f"{configs} configurations for {len(table)} knobs: too few to rank them (at least "
            f"{needed}); the importances and their intervals show what these configurations "
            "happen to correlate with"
        )
    if len(table) > 1 and table["low"].iloc[0] <= table["high"].iloc[1]:
        return (
            f"{table['param'].iloc[0]} and {table['param'].iloc[1]} cannot be told apart: "
            "their intervals overlap"
        )
    return ""


def optuna_importance(
    runs: pd.DataFrame,
    metric: str,
    evaluator: str = "fanova",
    params: Sequence[str] | None = None,
    mode: str = "min",
    seed: int = 0,
) -> pd.DataFrame:
    """param, importance by Optuna's `evaluator` ("fanova" or "ped_anova")
    over one trial per configuration (its mean over seeds), most important
    first. Each knob's distribution is the study's axis where it has one,
    else the values seen."""
    if evaluator not in EVALUATORS:
        choose = ", ".join(EVALUATORS)
        raise AnalysisError(f"unknown evaluator '{evaluator}'; choose from: {choose}")
    params = list(params) if params is not None else knobs(runs, [metric])
    data = runs.dropna(subset=[metric])
    agg = {**dict.fromkeys(params, "first"), metric: "mean"}
    means = data.groupby("config_id", sort=False).agg(agg)
    if len(means) < 2 or not params:
        raise AnalysisError(f"{len(means)} configurations with {metric}: nothing to compare")
    dists = _distributions(runs, params)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line
    try:
        with warnings.catch_warnings():  # PED-ANOVA is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
            for _, row in means.iterrows():
                values = {p: _plain(row[p]) for p in params}
                trial = optuna.trial.create_trial(
                    params=values, distributions=dists, value=float(row[metric])
                )
                study.add_trial(trial)
            rater = EVALUATORS[evaluator](seed)
            found = optuna.importance.get_param_importances(study, evaluator=rater)
    except (RuntimeError, ValueError) as e:
        raise AnalysisError(f"{evaluator} cannot rate these {len(means)} trials: {e}") from e
    finally:
        optuna.logging.set_verbosity(verbosity)
    return pd.DataFrame({"param": list(found), "importance": list(found.values())})


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def _distributions(runs: pd.DataFrame, params: list[str]) -> dict:
    axes = STUDIES[runs.attrs["study"]].axes if runs.attrs.get("study") in STUDIES else {}
    out = {}
    for p in params:
        seen = runs[p].dropna()
        if p in axes:
            out[p] = axes[p].optuna()
        elif (
            pd.api.types.is_bool_dtype(seen)
            or not pd.api.types.is_numeric_dtype(seen)
            or (seen.nunique() <= FEW_VALUES)
        ):
            values = tuple(sorted({_plain(v) for v in seen}, key=str))
            out[p] = optuna.distributions.CategoricalDistribution(values)
        else:  # a --sweep or older runs: a range, on a log scale where it spans decades
            low, high = float(seen.min()), float(seen.max())
            log = low > 0 and high / low >= 100
            out[p] = optuna.distributions.FloatDistribution(low, high, log=log)
    return out
