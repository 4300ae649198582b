"""Federated evaluation: metrics from the sites' sufficient statistics, never per-row
predictions (:mod:`~pipeline.evaluation.statistics`), what they report
(:mod:`~pipeline.evaluation.metrics`), the plots a job logs
(:mod:`~pipeline.evaluation.plots`) and the drift of the case mix
(:mod:`~pipeline.evaluation.drift`)."""

from pipeline.evaluation.metrics import MIN_CELL, Evaluation, Metrics, Suppressed
from pipeline.evaluation.statistics import (
    group_width,
    pooled_metrics,
    site_auc,
    split_groups,
    stats_vector,
)

__all__ = [
    "MIN_CELL",
    "Evaluation",
    "Metrics",
    "Suppressed",
    "group_width",
    "pooled_metrics",
    "site_auc",
    "split_groups",
    "stats_vector",
]
