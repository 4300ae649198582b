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
from pipeline.federation.aggregate import mean_gradient, weighted_average
from pipeline.federation.runtime import Replies, SiteRuntime
from pipeline.federation.strategy import ServerOptimizer

log = logging.getLogger(__name__)

RoundCallback = Callable[[int, np.ndarray, list[str]], None]


@dataclass(frozen=True)
class GradientPlan:
    """What every site is asked to release per round, fixed before the job starts."""

    strategy: str
    rounds: int
    epsilon: float
    clip: float | None
    noise_multiplier: float


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
) -> np.ndarray:
    """Federated full-batch gradient descent on the logistic loss (FedSGD with a server
    optimiser). Returns the final weights (last entry: intercept)."""
    weights = np.zeros(dim + 1)
    kwargs = {
        "strategy": plan.strategy,
        "epsilon": plan.epsilon,
        "clip": plan.clip,
        "noise_multiplier": plan.noise_multiplier,
        "rounds": plan.rounds,
    }
    for round_ in range(plan.rounds):
        if secure is not None:
            total, summed = secure_sum_round(
                runtime,
                secure,
                round_,
                quorum,
                lambda sec, w=weights, r=round_: runtime.call(
                    "logistic_gradient", job_id, w, round_=r, secure=sec, **kwargs
                ),
            )
            sites = list(summed)
            grad_sum, count = total[:-1], total[-1]
            gradient = grad_sum / max(count, 1.0)
        else:
            replies = runtime.call("logistic_gradient", job_id, weights, round_=round_, **kwargs)
            runtime.require_quorum(quorum, f"round {round_}")
            sites = list(replies.ok)
            gradient = mean_gradient(
                [r.vector for r in replies.ok.values()], [r.n for r in replies.ok.values()]
            )
        weights = optimizer.step(weights, gradient)
        if on_round is not None:
            on_round(round_, weights, sites)
    return weights


def one_shot_average(
    runtime: SiteRuntime, *, job_id: str, epsilon: float, quorum: int
) -> tuple[np.ndarray, list[str]]:
    """Each site fits a DP model once; the coordinator takes the example-weighted mean
    (one-shot parameter averaging, as in Zinkevich et al. 2010 / McMahan et al. 2017)."""
    replies = runtime.call("fit_dp_logistic", job_id, epsilon=epsilon)
    runtime.require_quorum(quorum, "one-shot DP logistic regression")
    if not replies.ok:
        raise QuorumError("no site returned a model")
    updates = [(r.vector, r.n) for r in replies.ok.values()]
    return weighted_average(updates), list(replies.ok)
