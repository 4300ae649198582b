"""The coordinator's side of federated XGBoost: the collective's parameters from the
sites' counts, the watched collective (:mod:`~pipeline.strategies.xgboost.watchdog`), and
what the run records of the trees it agreed on."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pipeline.evaluation.plots import plot_importance
from pipeline.models import trees
from pipeline.models.tree_model import TreeModel
from pipeline.protocol.collective_masks import fixed_point_scale
from pipeline.protocol.secure_sum import MIN_SITES
from pipeline.splits import VALID_FRACTION
from pipeline.strategies.base import TrainingJob
from pipeline.strategies.xgboost.watchdog import (
    AggregatorSettings,
    CollectiveError,
    CollectiveResult,
    resolve_communicator,
    server_host,
    train_collective,
)

# The largest magnitude any row adds to a SUM of the collective: a gradient (at most 1),
# a hessian (at most 1/4), a count or weight (1), a log-loss term (at most 36.8, XGBoost's
# probabilities being clipped at 1e-16), with headroom. Times the rows of every site, it
# bounds every sum, so the fixed point never overflows.
SUM_BOUND_PER_ROW = 64.0


def train(job: TrainingJob) -> TreeModel:
    """Every active site joins one XGBoost collective as a worker.

    Global quantities come from aggregates only: the base score is the prevalence over
    the starting sites' label counts, summed through the secure sum once per job (a
    retry without a lost site keeps it: asking the others again would isolate that
    site's count)."""
    from pipeline.federation.rounds import summed_release

    settings, x, tracker = job.settings, job.settings.xgboost, job.tracker
    communicator = resolve_communicator(x.communicator)
    if communicator == "secure" and len(job.runtime.active) < MIN_SITES:
        raise CollectiveError(
            f"secure XGBoost needs at least {MIN_SITES} sites, {len(job.runtime.active)} "
            "left: with two, each site learns the other's histograms from their sum"
        )
    host = server_host(x.server_host)
    positives, n, _ = summed_release(
        job.runtime,
        job.secure_session(),
        0,
        job.quorum,
        job.asker("label_counts", job.job_id),
        stage="label counts",
    )
    base_score = trees.global_base_score(int(round(positives[0])), int(round(n)))

    def params_for(sites: list[str]) -> dict[str, Any]:
        return trees.booster_params(
            base_score=base_score,
            max_depth=x.max_depth,
            learning_rate=x.learning_rate,
            seed=settings.seed,
            nthread=x.threads,
        )

    scale = fixed_point_scale(SUM_BOUND_PER_ROW * sum(i.n_train for i in job.sites.values()))
    tracker.params(
        {
            "xgboost_communicator": communicator,
            "xgboost_fixed_point_scale": scale if communicator == "secure" else "none",
            "xgboost_call_deadline_s": x.call_deadline_s,
            "xgboost_max_rounds": x.rounds,
            "xgboost_max_depth": x.max_depth,
            "xgboost_learning_rate": x.learning_rate,
            "xgboost_early_stopping_rounds": x.early_stopping_rounds,
            "xgboost_max_bin": x.max_bin,
            "xgboost_threads_per_site": x.threads or "all cores of the site",
            "xgboost_timeout_s": x.timeout_s,
            "xgboost_server_host": host,
            "xgboost_valid_fraction": VALID_FRACTION,
        }
    )
    result = train_collective(
        job.runtime,
        job.job_id,
        strategy=job.strategy,
        communicator=communicator,
        quorum=job.quorum,
        params_for=params_for,
        train_kwargs={
            "num_boost_round": x.rounds,
            "max_bin": x.max_bin,
            "early_stopping_rounds": x.early_stopping_rounds,
            "valid_fraction": VALID_FRACTION,
            "seed": settings.seed,
        },
        timeout_s=x.timeout_s,
        say=job.say,
        host=host,
        aggregator=AggregatorSettings(scale=scale, deadline_s=x.call_deadline_s),
        reload=lambda sites: job.runtime.call(
            "load", job.job_id, job.strategy, settings.test_fraction, settings.seed, sites=sites
        ),
    )
    model = TreeModel(job.contract, result.booster)
    _record(job, model, result, params_for(result.sites)["base_score"])
    job.say(
        f"xgboost: {model.booster_.num_boosted_rounds()} trees from {len(result.sites)} "
        f"sites in {result.seconds:.1f} s ({communicator}, {result.attempts} attempt(s))"
    )
    model.training_ = result
    return model


def _record(job: TrainingJob, model: TreeModel, result: CollectiveResult, base: float) -> None:
    """What the run keeps of the collective and of the trees: retries, lost sites, the
    grid's digest, early stopping, the validation history and the feature importance."""
    tracker, booster = job.tracker, model.booster_
    tracker.params(
        {
            "xgboost_retries": result.attempts - 1,
            "xgboost_ranks": len(result.sites),
            "xgboost_base_score": base,
        }
    )
    tracker.tags(
        {
            "xgboost_boosters_identical": "true",
            "xgboost_dropped": ",".join(sorted(result.lost)) or "none",
            trees.GRID_ATTR: booster.attr(trees.GRID_ATTR) or "",
        }
    )
    best = booster.attr("best_iteration")
    tracker.metrics(
        {
            "xgboost_train_seconds": result.seconds,
            "xgboost_trees": booster.num_boosted_rounds(),
            **({"xgboost_best_iteration": float(best)} if best is not None else {}),
            **(
                {"xgboost_best_valid_logloss": float(booster.attr("best_score"))}
                if booster.attr("best_score") is not None
                else {}
            ),
        }
    )
    history = booster.attr(trees.EVALS_ATTR)
    if history:
        tracker.json(json.loads(history), "xgboost_valid_history.json")
    importance = model.feature_importance()
    tracker.json(importance, "feature_importance.json")
    with tempfile.TemporaryDirectory() as tmp:
        tracker.artifact(plot_importance(importance, Path(tmp) / "feature_importance.png"), "plots")
