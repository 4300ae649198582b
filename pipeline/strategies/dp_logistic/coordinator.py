"""The coordinator's side of the one-shot DP logistic regression: every site fits once,
the coordinator takes the example-weighted mean (one-shot parameter averaging, as in
Zinkevich et al. 2010 / McMahan et al. 2017). Sites too small for their epsilon are named
in a warning."""

from __future__ import annotations

import logging

from pipeline.errors import QuorumError
from pipeline.federation.aggregate import weighted_average
from pipeline.models.logistic import LogisticModel
from pipeline.privacy.scales import column_centres, contract_scales
from pipeline.strategies.base import TrainingJob
from pipeline.strategies.dp_logistic.plan import ONE_SHOT_NOISE_LIMIT, DPLogisticPlan
from pipeline.strategies.recalibration import recalibrated

log = logging.getLogger(__name__)


def train(job: TrainingJob, plan: DPLogisticPlan) -> LogisticModel:
    """``dp-logistic``: one perturbed fit per site, example-weighted average."""
    if plan.too_small:
        worst = max(plan.noise_to_signal[s] for s in plan.too_small)
        message = (
            f"dp-logistic: sites {', '.join(plan.too_small)} are too small for epsilon "
            f"{plan.epsilon:g}: the noise of their one-shot fit is up to {worst:.2f} of the "
            f"largest gradient their rows can carry (more than {ONE_SHOT_NOISE_LIMIT:g}), "
            "so their models are mostly noise; dp-fedavg spends the same budget on the "
            "sum over sites instead"
        )
        log.warning(message)
        job.tracker.tags({"dp_logistic_too_small": ",".join(plan.too_small)})
    job.say("one-shot DP logistic regression at each site")
    replies = job.ask("fit_dp_logistic", job.job_id, **plan.site_request())
    job.runtime.require_quorum(job.quorum, "one-shot DP logistic regression")
    if not replies.ok:
        raise QuorumError("no site returned a model")
    weights = weighted_average([(r.vector, r.n) for r in replies.ok.values()])
    weights = recalibrated(
        job,
        weights,
        plan,
        scales=contract_scales(job.contract),
        centres=column_centres(job.contract),
        secure=None,
    )
    return LogisticModel(job.contract, weights)
