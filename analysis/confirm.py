"""The confirmation phase read back from MLflow (rows of `load_runs`): the
confirmed configurations with their search and fresh-seed estimates side by
side, and how sure a ranking of configurations is. The statistics are
scoring.ranking's, the same as the end-of-study table's."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analysis.runs import AnalysisError
from analysis.stats import knobs
from scoring.ranking import RESAMPLES, confirmation_table, rank_table
from study.studies import STUDIES


def metric_mode(runs: pd.DataFrame, metric: str | None, mode: str | None) -> tuple[str, str]:
    study = STUDIES.get(runs.attrs.get("study", ""))
    if metric is None or mode is None:
        if study is None:
            raise AnalysisError("pass metric and mode: these runs do not say their study")
        metric, mode = metric or study.metric, mode or study.mode
    if metric not in runs:
        raise AnalysisError(f"no trial logged '{metric}'")
    return metric, mode


def search_phase(runs: pd.DataFrame) -> pd.DataFrame:
    """The search's trials (runs from before phases were tagged count as search)."""
    if "phase" not in runs:
        return runs
    return runs[runs["phase"].fillna("search") != "confirm"]


def rank_confidence(
    runs: pd.DataFrame,
    metric: str | None = None,
    mode: str | None = None,
    by: Sequence[str] | None = None,
    resamples: int = RESAMPLES,
) -> pd.DataFrame:
    """One row per configuration of `runs`, best mean first: its knobs, seeds,
    mean, std and 95% interval of `metric` (default: the study's), `p_best`
    (the share of bootstrap resamples of the seeds in which it is the best),
    `p_beats_next` and `diff_next` with its 95% interval (against the next
    configuration), and `spread_over_gap` where its seeds' spread is larger
    than the gap to the next mean."""
    metric, mode = metric_mode(runs, metric, mode)
    by = list(by) if by is not None else knobs(runs, [metric])
    return rank_table(runs, by, metric, mode, resamples)


def confirmation(
    runs: pd.DataFrame,
    metric: str | None = None,
    mode: str | None = None,
    study_run: str | None = None,
) -> pd.DataFrame:
    """The confirmed configurations of one invocation (`study_run`; default:
    the latest that has a confirmation phase), in their confirmed order:
    knobs, `search_*` (seeds, mean, 95% interval, rank among every searched
    configuration) beside `confirm_*` (the same on the fresh seeds, and the
    outcome shares), and the confirmed ranking's `p_best`, `p_beats_next`
    and `spread_over_gap`. The end-of-study confirmation table, from MLflow."""
    metric, mode = metric_mode(runs, metric, mode)
    phase = runs["phase"] if "phase" in runs else pd.Series(None, index=runs.index)
    confirmed = runs[phase == "confirm"]
    if confirmed.empty:
        raise AnalysisError("no trial of these runs is tagged phase=confirm (run with --confirm K)")
    if study_run is None:
        study_run = confirmed.sort_values("start_time")["study_run"].iloc[-1]
    one = runs[runs["study_run"] == study_run]
    if one.empty:
        raise AnalysisError(f"no invocation named '{study_run}' in these runs")
    return confirmation_table(one, knobs(one, [metric]), metric, mode)
