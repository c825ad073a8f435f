"""Analysis of what studies wrote to MLflow: runs and histories as pandas
DataFrames, stability statistics, seaborn figures and the HTML report
(`python -m analysis.report STUDY`). Reads the study registry and scoring;
nothing below it imports analysis.

    from analysis import load_runs, config_stats
    runs = load_runs("gan_stability")
    config_stats(runs, ["fid"])
    survival("gan_collapse", by="lr_g")  # Kaplan-Meier of the time to collapse
    early_warning("gan_collapse")  # which indicator warns first, how early
    variance_sources("seed_variance", "fid")  # the spread's share by seed source
    iqm(runs); probability_of_improvement(runs, "a1b2", "c3d4")  # few-run aggregates
    schedules(runs, ["lr_g", "lr_d"])  # a PBT member's settings over epochs, from its lineage
"""

from analysis.confirm import confirmation, rank_confidence, search_phase
from analysis.few_runs import iqm, performance_profiles, probability_of_improvement
from analysis.front import family_samplers
from analysis.importance import importance, optuna_importance
from analysis.plots import PLOTS, View, figures, sampler_table
from analysis.population import schedules
from analysis.runs import AnalysisError, load_history, load_modes, load_runs
from analysis.spaces import classifier_spaces
from analysis.stats import budget_curve, config_stats, knobs, stability_map
from analysis.survival import survival
from analysis.variance import variance_sources
from analysis.warning import early_warning
from scoring.registry import evaluate_samples

__all__ = [
    "PLOTS",
    "AnalysisError",
    "View",
    "budget_curve",
    "classifier_spaces",
    "config_stats",
    "confirmation",
    "early_warning",
    "evaluate_samples",
    "figures",
    "importance",
    "iqm",
    "knobs",
    "load_history",
    "load_modes",
    "load_runs",
    "optuna_importance",
    "performance_profiles",
    "probability_of_improvement",
    "rank_confidence",
    "sampler_table",
    "schedules",
    "family_samplers",
    "search_phase",
    "stability_map",
    "survival",
    "variance_sources",
]
