"""The job's evaluation stage: the job's model, and the champion beside it, scored on the
same held-out rows at every site through the secure sum; the metrics, the evaluation and
its plots logged on the run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pipeline.evaluation import Evaluation, Suppressed
from pipeline.evaluation.plots import plot_calibration, plot_roc, plot_sites, plot_subgroups
from pipeline.federation.secure_eval import evaluate_models
from pipeline.stages.context import JobContext
from pipeline.strategies.base import Tracker


def evaluate(ctx: JobContext, models: dict[str, dict]) -> dict[str, Evaluation]:
    """Evaluate `models` (name -> site payload) on the sites' held-out rows through the
    secure sum, and log the metrics, the evaluation and its plots on the run."""
    runtime, tracker = ctx.runtime, ctx.tracker
    evaluations = evaluate_models(
        runtime, ctx.contract, models, eval_id=f"{ctx.job_id}:eval", quorum=ctx.cfg.quorum
    )
    runtime.require_quorum(ctx.cfg.quorum, "evaluation")
    for name, ev in evaluations.items():
        prefix = "test_" if name == "challenger" else f"{name}_test_"
        tracker.metrics({k: v for k, v in ev.overall.as_dict(prefix).items() if np.isfinite(v)})
    challenger = evaluations["challenger"]
    for site, auc in challenger.sites.items():
        if not isinstance(auc, Suppressed):
            tracker.metrics({f"site_auc.{site}": auc})
    for group, m in challenger.subgroups.items():
        if not isinstance(m, Suppressed):
            key = group.replace(" ", "_").replace("<", "lt")
            tracker.metrics({f"group_auc.{key}": m.auc})
    tracker.json({n: ev.to_dict() for n, ev in evaluations.items()}, "evaluation.json")
    log_plots(tracker, evaluations)
    return evaluations


def log_plots(tracker: Tracker, evaluations: dict[str, Evaluation]) -> None:
    """ROC and calibration of every model evaluated, the challenger's AUC per site and
    per subgroup: the run's ``plots`` folder."""
    challenger = evaluations["challenger"]
    overall = {name: ev.overall for name, ev in evaluations.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        tracker.artifact(plot_roc(overall, tmp_path / "roc.png"), "plots")
        tracker.artifact(plot_calibration(overall, tmp_path / "calibration.png"), "plots")
        tracker.artifact(plot_sites(challenger.sites, tmp_path / "per_site_auc.png"), "plots")
        tracker.artifact(
            plot_subgroups(challenger.subgroups, tmp_path / "subgroup_auc.png"), "plots"
        )
