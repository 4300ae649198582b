"""The coordinator's side of the non-private logistic regression: federated Newton's
method (iteratively reweighted least squares) to the pooled optimum."""

from __future__ import annotations

import numpy as np

from pipeline.features import FeatureEncoder
from pipeline.federation.rounds import summed_release
from pipeline.models.logistic import LogisticModel
from pipeline.strategies.base import RoundLogger, TrainingJob
from pipeline.strategies.logistic.newton import newton_step

TOLERANCE = 1e-12  # Newton decrement below which the rounds stop


def train(job: TrainingJob) -> LogisticModel:
    """L2-regularised logistic regression by Newton rounds: each round the sites return
    their gradient and Hessian sums, and the coordinator takes the exact Newton step on
    the pooled objective ``mean log-loss + l2 / 2 * ||w||^2`` (intercept unpenalised).
    The objective is convex and the step is the one pooled training would take, so the
    weights converge (quadratically) to the pooled optimum on the same rows; rounds stop
    once the Newton decrement (twice the objective's expected decrease) is below
    :data:`TOLERANCE`, far under the secure sum's fixed-point resolution of the
    objective, or after ``settings.rounds``."""
    settings = job.settings
    secure = job.secure_session()
    logger = RoundLogger(job, settings.rounds)
    weights = np.zeros(FeatureEncoder(job.contract).n_features_out + 1)
    for round_ in range(settings.rounds):
        ask = job.asker("newton_statistics", job.job_id, weights)
        stats, count, sites = summed_release(job.runtime, secure, round_, job.quorum, ask)
        step, decrement = newton_step(weights, stats, count, settings.l2)
        weights = weights - step
        logger(round_, weights, sites)
        if decrement < TOLERANCE:
            break
    logger.finished()
    if secure is not None:
        job.tracker.metrics({"secure_dropouts": secure.dropouts})
    return LogisticModel(job.contract, weights)
