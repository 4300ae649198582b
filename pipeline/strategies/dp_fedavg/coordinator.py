"""The coordinator's side of DP-FedAvg: the planner's releases, in order.

One private feature-scale release (which also counts positives, privately), then the
planned rounds of clipped, noised gradient sums in standardized, centred coordinates
(:mod:`pipeline.privacy.scales`), summed over the sites (through the secure sum when the
job uses it) and stepped by the server's optimiser from the released prevalence's
log-odds: FedAvgM for a path of rounds (the model: the average of the second half's
weights), one damped Newton step for a plan of one round. Then, where the plan has it,
the recalibration (:mod:`pipeline.strategies.recalibration`).
Every privacy spend was reserved in the ledger before this runs; nothing here seeds or
logs noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.features import FeatureEncoder
from pipeline.federation.optimizers import DampedNewton, FedAvgM, ServerOptimizer
from pipeline.federation.rounds import RoundCallback, SecureSession, summed_release
from pipeline.link import sigmoid_scalar
from pipeline.models.logistic import LogisticModel
from pipeline.privacy.scales import column_centres, column_scales, released_log_odds
from pipeline.strategies.base import RoundLogger, TrainingJob
from pipeline.strategies.dp_fedavg.plan import DPFedAvgPlan
from pipeline.strategies.recalibration import recalibrated

SCALE_ROUND = 2**32  # the secure-sum round number of a job's scale release


@dataclass(frozen=True)
class GradientRounds:
    """What every site is asked to release per round, fixed before the rounds start.

    ``column_scale`` (from the job's private scale release) and ``column_centre`` put the
    rounds in standardized coordinates; ``sampling_rate`` below 1 makes them Poisson
    subsampled; ``noise_shares`` above 1 asks each site for a share of the noise
    (:mod:`pipeline.privacy.distributed`)."""

    rounds: int
    epsilon: float
    clip: float | None
    noise_multiplier: float
    column_scale: np.ndarray | None = None
    column_centre: np.ndarray | None = None
    sampling_rate: float = 1.0
    noise_shares: int = 1
    collusion_threshold: int = 0
    averaged: int = 0  # the model averages the weights after the last this many rounds

    def site_request(self) -> dict:
        """The keywords of every round's request to a site."""
        out: dict = {
            "epsilon": self.epsilon,
            "clip": self.clip,
            "noise_multiplier": self.noise_multiplier,
            "rounds": self.rounds,
        }
        for name in ("column_scale", "column_centre"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.sampling_rate < 1.0:
            out["sampling_rate"] = self.sampling_rate
        return out | shares_request(self.noise_shares, self.collusion_threshold)


def shares_request(noise_shares: int, collusion_threshold: int) -> dict[str, int]:
    """The distributed-noise keywords of a site request (none without shares)."""
    if noise_shares <= 1:
        return {}
    return {"noise_shares": noise_shares, "collusion_threshold": collusion_threshold}


def train(job: TrainingJob, plan: DPFedAvgPlan) -> LogisticModel:
    """``dp-fedavg`` by the plan: feature scales, then the planned gradient rounds."""
    contract = job.contract
    secure = job.secure_session()
    noisy_sum, rows = None, 0
    if plan.scale_noise_multiplier is not None:
        job.say("private feature scales at each site")
        noisy_sum, rows = release_scales(job, plan, secure)
    scales = column_scales(contract, noisy_sum, rows)
    initial = np.zeros(len(scales) + 1)
    if noisy_sum is not None:
        initial[-1] = released_log_odds(noisy_sum, rows)
    rounds = GradientRounds(
        rounds=plan.rounds,
        epsilon=plan.epsilon,
        clip=plan.clip,
        noise_multiplier=plan.noise_multiplier,
        column_scale=scales,
        column_centre=column_centres(contract),
        sampling_rate=plan.sampling_rate,
        noise_shares=plan.noise_shares,
        collusion_threshold=plan.collusion_threshold,
        averaged=plan.averaged_rounds,
    )
    weights = gradient_rounds(
        job,
        optimizer=server_optimizer(plan, initial[-1]),
        plan=rounds,
        secure=secure,
        on_round=RoundLogger(job, plan.rounds),
        initial=initial,
    )
    weights = recalibrated(
        job, weights, plan, scales=scales, centres=column_centres(contract), secure=secure
    )
    if secure is not None:
        job.tracker.metrics({"secure_dropouts": secure.dropouts})
    return LogisticModel(contract, weights)


def release_scales(
    job: TrainingJob, plan: DPFedAvgPlan, secure: SecureSession | None
) -> tuple[np.ndarray, int]:
    """The job's feature-scale release: every site's noisy, clipped sum of numeric
    deviations, summed. Returns (sum, rows)."""
    ask = job.asker(
        "release_deviation",
        job.job_id,
        epsilon=plan.epsilon,
        noise_multiplier=plan.scale_noise_multiplier,
        bound=plan.scale_bound,
        **shares_request(plan.noise_shares, plan.collusion_threshold),
    )
    total, rows, _ = summed_release(
        job.runtime, secure, SCALE_ROUND, job.quorum, ask, stage="feature scales"
    )
    return total, int(round(rows))


def gradient_rounds(
    job: TrainingJob,
    *,
    optimizer: ServerOptimizer,
    plan: GradientRounds,
    secure: SecureSession | None = None,
    on_round: RoundCallback | None = None,
    initial: np.ndarray | None = None,
) -> np.ndarray:
    """Federated full-batch gradient descent on the logistic loss (FedSGD with a server
    optimiser), from `initial` weights (default zeros). Returns the final weights (last
    entry: intercept) over the encoder's columns; with ``plan.column_scale`` (and
    ``column_centre``) the rounds, and `initial`, are in standardized coordinates and
    the weights are mapped back at the end. With ``plan.averaged`` the result is the
    mean of the weights after each of the last that many rounds."""
    dim = FeatureEncoder(job.contract).n_features_out
    weights = np.zeros(dim + 1) if initial is None else np.array(initial, dtype=np.float64)
    request = plan.site_request()
    averaged = min(plan.averaged, plan.rounds)
    total = np.zeros_like(weights)
    for round_ in range(plan.rounds):
        ask = job.asker("logistic_gradient", job.job_id, weights, round_=round_, **request)
        grad_sum, count, sites = summed_release(job.runtime, secure, round_, job.quorum, ask)
        gradient = grad_sum / max(count * plan.sampling_rate, 1.0)
        weights = optimizer.step(weights, gradient)
        if round_ >= plan.rounds - averaged:
            total += weights
        if on_round is not None:
            on_round(round_, weights, sites)
    if averaged:
        weights = total / averaged
    return to_encoder_weights(weights, plan.column_scale, plan.column_centre)


def to_encoder_weights(
    weights: np.ndarray, scale: np.ndarray | None, centre: np.ndarray | None
) -> np.ndarray:
    """Weights over standardized columns ((x - centre) / scale) as weights over the
    encoder's own columns: the same predictions for every row."""
    coef = weights[:-1] if scale is None else weights[:-1] / scale
    intercept = weights[-1] if centre is None else weights[-1] - float(coef @ centre)
    return np.append(coef, intercept)


def server_optimizer(plan: DPFedAvgPlan, intercept: float) -> ServerOptimizer:
    """FedAvgM for a path of rounds; one damped Newton step when the plan has one round,
    from the start's prevalence (the sigmoid of its intercept)."""
    if plan.rounds == 1:
        p = sigmoid_scalar(intercept)
        return DampedNewton(curvature=p * (1.0 - p), gradient_scale=plan.clip_fraction)
    return FedAvgM(learning_rate=plan.learning_rate, momentum=plan.momentum)
