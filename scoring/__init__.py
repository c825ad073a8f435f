"""Scoring: metric arithmetic, feature extractors, the sample-metric registry,
outcome rules and per-configuration aggregation. Builds on `datasources`;
imports nothing of `study` or `analysis`, which both build on it."""

from scoring.aggregate import per_configuration
from scoring.outcomes import OUTCOMES, collapse_reason, divergence
from scoring.registry import METRICS, SampleMetric, evaluate_samples, provenance, register

__all__ = [
    "METRICS",
    "OUTCOMES",
    "SampleMetric",
    "collapse_reason",
    "divergence",
    "evaluate_samples",
    "per_configuration",
    "provenance",
    "register",
]
