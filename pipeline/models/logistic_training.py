"""The coordinator's side of the logistic strategies: which rounds, in which order.

- ``logistic``: federated Newton's method on the sites' gradient and Hessian sums, the
  pooled optimum of the same objective (:func:`pipeline.federation.coordinator.newton_rounds`).
- ``dp-fedavg``: the planner's releases (:mod:`pipeline.privacy.planner`): one private
  feature-scale release (which also counts positives, privately), then the planned
  rounds of clipped, noised gradients in standardized, centred coordinates
  (:mod:`pipeline.privacy.scales`) with a FedAvgM server, from the released prevalence's
  log-odds.
- ``dp-logistic``: one objective-perturbation fit per site, averaged; sites too small
  for their epsilon are named in a warning.

Every privacy spend was reserved in the ledger (:func:`pipeline.job.reserve_privacy`)
before these run; nothing here seeds or logs noise.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.features import FeatureEncoder
from pipeline.models.logistic import LogisticModel
from pipeline.privacy.planner import ONE_SHOT_NOISE_LIMIT

if TYPE_CHECKING:
    from pipeline.context import JobContext
    from pipeline.federation.strategy import ServerOptimizer
    from pipeline.privacy.planner import DPFedAvgPlan, DPLogisticPlan

log = logging.getLogger(__name__)


class _RoundLogger:
    """Each round to the job's progress hook (a bar) and to the run's metrics."""

    def __init__(self, ctx: JobContext, rounds: int) -> None:
        self.ctx, self.rounds, self.done = ctx, rounds, 0

    def __call__(self, r: int, weights: np.ndarray, sites: list[str]) -> None:
        self.done = r + 1
        if self.ctx.on_round is not None:
            self.ctx.on_round(self.done, self.rounds)
        self.ctx.tracker.metrics(
            {"sites_in_round": len(sites), "weight_norm": float(np.linalg.norm(weights))}, step=r
        )

    def finished(self) -> None:
        """Rounds that stop early (a converged Newton method) end the bar where they did."""
        if self.ctx.on_round is not None and self.done < self.rounds:
            self.ctx.on_round(self.done, self.done)


def _secure(ctx: JobContext) -> Any:
    from pipeline.federation.coordinator import open_secure_session

    if not ctx.cfg.training.secure_aggregation:
        return None
    return open_secure_session(ctx.runtime, ctx.job_id, ctx.cfg.quorum)


def train_newton(ctx: JobContext, *, max_rounds: int) -> LogisticModel:
    """``logistic``: Newton rounds to the pooled optimum (stops once converged)."""
    from pipeline.federation.coordinator import newton_rounds

    cfg = ctx.cfg
    secure = _secure(ctx)
    logger = _RoundLogger(ctx, max_rounds)
    weights = newton_rounds(
        ctx.runtime,
        job_id=ctx.job_id,
        dim=FeatureEncoder(ctx.contract).n_features_out,
        l2=cfg.training.l2,
        max_rounds=max_rounds,
        quorum=cfg.quorum,
        secure=secure,
        on_round=logger,
    )
    logger.finished()
    if secure is not None:
        ctx.tracker.metrics({"secure_restarts": secure.restarts})
    return LogisticModel(ctx.contract, weights)


def train_dp_fedavg(ctx: JobContext, plan: DPFedAvgPlan) -> LogisticModel:
    """``dp-fedavg`` by the plan: feature scales, then the planned gradient rounds."""
    from pipeline.federation.coordinator import GradientPlan, gradient_rounds, release_scales
    from pipeline.privacy.scales import column_centres, column_scales, released_log_odds

    runtime, cfg, contract = ctx.runtime, ctx.cfg, ctx.contract
    secure = _secure(ctx)
    noisy_sum, rows = None, 0
    if plan.scale_noise_multiplier is not None:
        ctx.say("private feature scales at each site")
        noisy_sum, rows = release_scales(
            runtime,
            job_id=ctx.job_id,
            strategy="dp-fedavg",
            epsilon=plan.epsilon,
            noise_multiplier=plan.scale_noise_multiplier,
            bound=plan.scale_bound,
            quorum=cfg.quorum,
            secure=secure,
            noise_shares=plan.noise_shares,
            collusion_threshold=plan.collusion_threshold,
        )
    scales = column_scales(contract, noisy_sum, rows)
    initial = np.zeros(len(scales) + 1)
    if noisy_sum is not None:
        initial[-1] = released_log_odds(noisy_sum, rows)
    rounds = GradientPlan(
        strategy="dp-fedavg",
        rounds=plan.rounds,
        epsilon=plan.epsilon,
        clip=plan.clip,
        noise_multiplier=plan.noise_multiplier,
        column_scale=scales,
        column_centre=column_centres(contract),
        sampling_rate=plan.sampling_rate,
        noise_shares=plan.noise_shares,
        collusion_threshold=plan.collusion_threshold,
    )
    weights = gradient_rounds(
        runtime,
        job_id=ctx.job_id,
        dim=FeatureEncoder(contract).n_features_out,
        optimizer=_server_optimizer(plan, initial[-1]),
        plan=rounds,
        quorum=cfg.quorum,
        secure=secure,
        on_round=_RoundLogger(ctx, plan.rounds),
        initial=initial,
    )
    if secure is not None:
        ctx.tracker.metrics({"secure_restarts": secure.restarts})
    return LogisticModel(contract, weights)


def _server_optimizer(plan: DPFedAvgPlan, intercept: float) -> ServerOptimizer:
    """FedAvgM for a path of rounds; one damped Newton step when the plan has one round,
    from the start's prevalence (the sigmoid of its intercept)."""
    from pipeline.federation.strategy import DampedNewton, FedAvgM

    if plan.rounds == 1:
        p = 0.5 * (1.0 + math.tanh(0.5 * intercept))
        return DampedNewton(curvature=p * (1.0 - p), gradient_scale=plan.clip_fraction)
    return FedAvgM(learning_rate=plan.learning_rate, momentum=plan.momentum)


def train_dp_logistic(ctx: JobContext, plan: DPLogisticPlan) -> LogisticModel:
    """``dp-logistic``: one perturbed fit per site, example-weighted average."""
    from pipeline.federation.coordinator import one_shot_average

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
        ctx.tracker.tags({"dp_logistic_too_small": ",".join(plan.too_small)})
    ctx.say("one-shot DP logistic regression at each site")
    weights, _ = one_shot_average(
        ctx.runtime, job_id=ctx.job_id, quorum=ctx.cfg.quorum, **plan.site_request()
    )
    return LogisticModel(ctx.contract, weights)
