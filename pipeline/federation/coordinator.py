"""The coordinator's round loops: written once, calling the sites and a server optimiser.

The loop owns quorum and dropouts; the arithmetic is in `aggregate`, the server rule in
`strategy`, the secure sum in `secure_sum`, and what a site may release in the site
actor. Nothing here sees a row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import QuorumError
from pipeline.federation.aggregate import weighted_average
from pipeline.federation.runtime import Replies, SiteRuntime
from pipeline.federation.strategy import ServerOptimizer

log = logging.getLogger(__name__)

RoundCallback = Callable[[int, np.ndarray, list[str]], None]


@dataclass(frozen=True)
class GradientPlan:
    """What every site is asked to release per round, fixed before the job starts.

    ``column_scale`` (from the job's private scale release, :func:`release_scales`) and
    ``column_centre`` put the rounds in standardized coordinates; ``sampling_rate`` below
    1 makes them Poisson subsampled; ``noise_shares`` above 1 asks each site for a share of
    the noise (:mod:`pipeline.privacy.distributed`)."""

    strategy: str
    rounds: int
    epsilon: float
    clip: float | None
    noise_multiplier: float
    column_scale: np.ndarray | None = None
    column_centre: np.ndarray | None = None
    sampling_rate: float = 1.0
    noise_shares: int = 1
    collusion_threshold: int = 0


def _shares(noise_shares: int, collusion_threshold: int) -> dict[str, int]:
    """The distributed-noise keywords of a site request (none without shares)."""
    if noise_shares <= 1:
        return {}
    return {"noise_shares": noise_shares, "collusion_threshold": collusion_threshold}


SCALE_ROUND = 2**32  # the secure-sum round number of a job's scale release


@dataclass
class SecureSession:
    """Secure aggregation state for one job: the signed key roster and restarts."""

    job_id: str
    roster: dict = field(default_factory=dict)
    pinned: dict[str, str] = field(default_factory=dict)
    restarts: int = 0


def open_secure_session(runtime: SiteRuntime, job_id: str, quorum: int) -> SecureSession:
    """Collect each site's signed per-job key. Identity keys not pinned in the config are
    taken on first use (logged), which protects against everything but a coordinator that
    lies at this very step; pin them for a real deployment."""
    session = SecureSession(job_id=job_id)
    pins = {s.name: s.identity_key for s in runtime.sites if s.identity_key}
    unpinned = [s for s in runtime.active if s not in pins]
    if unpinned:
        log.warning("identity keys not pinned for %s: trusting them on first use", unpinned)
        got = runtime.call("identity_key", sites=unpinned, raw=True)
        pins.update(got.ok)
    session.pinned = pins
    keys = runtime.call("public_key", job_id)
    runtime.require_quorum(quorum, "secure aggregation key exchange")
    session.roster = {site: reply.signed_key for site, reply in keys.ok.items()}
    return session


def secure_sum_round(
    runtime: SiteRuntime,
    session: SecureSession,
    round_: int,
    quorum: int,
    call: Callable[[dict | None], Replies],
    *,
    stage: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One secure-sum round: `call(secure)` asks the sites for masked replies; returns
    the unmasked sum and the replies it summed, by site. Restarts with fresh masks
    without any site that dropped."""
    from pipeline.federation.secure_sum import VerifiedRoster, unmask_sum, verify_roster

    attempt = 0
    while True:
        runtime.require_quorum(
            max(quorum, 3),
            f"{stage or f'round {round_}'}: secure aggregation needs at least 3 sites;",
        )
        sites = runtime.active
        roster = [session.roster[s] for s in sites]
        verified: VerifiedRoster = verify_roster(
            roster, {s: bytes.fromhex(session.pinned[s]) for s in sites}, session.job_id
        )
        secure = {"roster": roster, "pinned": session.pinned, "round": round_, "attempt": attempt}
        replies = call(secure)
        if not replies.failed and set(replies.ok) == set(sites):
            masked = {s: r.masked for s, r in replies.ok.items()}
            return unmask_sum(masked, verified), replies.ok
        session.restarts += 1
        attempt += 1
        log.warning("round %d: restarting without %s", round_, sorted(replies.failed))


def summed_release(
    runtime: SiteRuntime,
    secure: SecureSession | None,
    sum_round: int,
    quorum: int,
    method: str,
    /,
    *args: Any,
    stage: str | None = None,
    **kwargs: Any,
) -> tuple[np.ndarray, float, list[str]]:
    """One release of `method` by every active site, summed: through secure aggregation
    with `secure` (the coordinator decodes only the sum), else in the clear. Returns the
    summed vector, the rows it covers and the sites summed (`sum_round` numbers the
    secure sum's masks; keyword arguments go to the sites)."""
    if secure is not None:
        total, summed = secure_sum_round(
            runtime,
            secure,
            sum_round,
            quorum,
            lambda sec: runtime.call(method, *args, secure=sec, **kwargs),
            stage=stage,
        )
        return total[:-1], float(total[-1]), list(summed)
    replies = runtime.call(method, *args, **kwargs)
    runtime.require_quorum(quorum, stage or f"round {sum_round}")
    rows = float(sum(r.n for r in replies.ok.values()))
    return sum(r.vector for r in replies.ok.values()), rows, list(replies.ok)


def gradient_rounds(
    runtime: SiteRuntime,
    *,
    job_id: str,
    dim: int,
    optimizer: ServerOptimizer,
    plan: GradientPlan,
    quorum: int,
    secure: SecureSession | None = None,
    on_round: RoundCallback | None = None,
    initial: np.ndarray | None = None,
) -> np.ndarray:
    """Federated full-batch gradient descent on the logistic loss (FedSGD with a server
    optimiser), from `initial` weights (default zeros). Returns the final weights (last
    entry: intercept) over the encoder's columns; with ``plan.column_scale`` (and
    ``column_centre``) the rounds, and `initial`, are in standardized coordinates and
    the weights are mapped back at the end."""
    weights = np.zeros(dim + 1) if initial is None else np.array(initial, dtype=np.float64)
    kwargs: dict = {
        "strategy": plan.strategy,
        "epsilon": plan.epsilon,
        "clip": plan.clip,
        "noise_multiplier": plan.noise_multiplier,
        "rounds": plan.rounds,
    }
    for name in ("column_scale", "column_centre"):
        if getattr(plan, name) is not None:
            kwargs[name] = getattr(plan, name)
    if plan.sampling_rate < 1.0:
        kwargs["sampling_rate"] = plan.sampling_rate
    kwargs.update(_shares(plan.noise_shares, plan.collusion_threshold))
    for round_ in range(plan.rounds):
        grad_sum, count, sites = summed_release(
            runtime,
            secure,
            round_,
            quorum,
            "logistic_gradient",
            job_id,
            weights,
            round_=round_,
            **kwargs,
        )
        gradient = grad_sum / max(count * plan.sampling_rate, 1.0)
        weights = optimizer.step(weights, gradient)
        if on_round is not None:
            on_round(round_, weights, sites)
    return to_encoder_weights(weights, plan.column_scale, plan.column_centre)


def to_encoder_weights(
    weights: np.ndarray, scale: np.ndarray | None, centre: np.ndarray | None
) -> np.ndarray:
    """Weights over standardized columns ((x - centre) / scale) as weights over the
    encoder's own columns: the same predictions for every row."""
    coef = weights[:-1] if scale is None else weights[:-1] / scale
    intercept = weights[-1] if centre is None else weights[-1] - float(coef @ centre)
    return np.append(coef, intercept)


def release_scales(
    runtime: SiteRuntime,
    *,
    job_id: str,
    strategy: str,
    epsilon: float,
    noise_multiplier: float,
    bound: float,
    quorum: int,
    secure: SecureSession | None = None,
    noise_shares: int = 1,
    collusion_threshold: int = 0,
) -> tuple[np.ndarray, int]:
    """The job's feature-scale release: every site's noisy, clipped sum of numeric
    deviations (:meth:`SiteActor.release_deviation`), summed. Returns (sum, rows)."""
    kwargs = {
        "strategy": strategy,
        "epsilon": epsilon,
        "noise_multiplier": noise_multiplier,
        "bound": bound,
        **_shares(noise_shares, collusion_threshold),
    }
    total, rows, _ = summed_release(
        runtime,
        secure,
        SCALE_ROUND,
        quorum,
        "release_deviation",
        job_id,
        stage="feature scales",
        **kwargs,
    )
    return total, int(round(rows))


def newton_rounds(
    runtime: SiteRuntime,
    *,
    job_id: str,
    dim: int,
    l2: float,
    max_rounds: int,
    quorum: int,
    secure: SecureSession | None = None,
    on_round: RoundCallback | None = None,
    tol: float = 1e-12,
) -> np.ndarray:
    """Federated Newton's method (iteratively reweighted least squares) for L2-regularised
    logistic regression: each round the sites return their gradient and Hessian sums
    (:meth:`SiteActor.newton_statistics`), and the coordinator takes the exact Newton
    step on the pooled objective ``mean log-loss + l2 / 2 * ||w||^2`` (intercept
    unpenalised). The objective is convex and the step is the one pooled training would
    take, so the weights converge (quadratically) to the pooled optimum on the same rows;
    rounds stop once the Newton decrement (twice the objective's expected decrease) is
    below `tol`, far under the secure sum's fixed-point resolution of the objective.
    Returns the weights (last: intercept)."""
    from pipeline.federation.aggregate import newton_step

    weights = np.zeros(dim + 1)
    for round_ in range(max_rounds):
        stats, count, sites = summed_release(
            runtime, secure, round_, quorum, "newton_statistics", job_id, weights
        )
        step, decrement = newton_step(weights, stats, float(count), l2)
        weights = weights - step
        if on_round is not None:
            on_round(round_, weights, sites)
        if decrement < tol:
            break
    return weights


def one_shot_average(
    runtime: SiteRuntime, *, job_id: str, quorum: int, **fit: float
) -> tuple[np.ndarray, list[str]]:
    """Each site fits a DP model once (:meth:`SiteActor.fit_dp_logistic` with `fit`);
    the coordinator takes the example-weighted mean (one-shot parameter averaging, as in
    Zinkevich et al. 2010 / McMahan et al. 2017)."""
    replies = runtime.call("fit_dp_logistic", job_id, **fit)
    runtime.require_quorum(quorum, "one-shot DP logistic regression")
    if not replies.ok:
        raise QuorumError("no site returned a model")
    updates = [(r.vector, r.n) for r in replies.ok.values()]
    return weighted_average(updates), list(replies.ok)
