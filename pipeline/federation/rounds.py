"""The coordinator's round, written once: ask every active site for a release and sum it,
through the secure sum when the job uses it.

The loop owns quorum and dropouts; what a site computes is its strategy's site handler,
the arithmetic on the sum is the strategy's, and the masks are :mod:`pipeline.protocol.
secure_sum`'s. Nothing here sees a row, and nothing here knows which strategy asks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.federation.runtime import Replies, SiteRuntime

log = logging.getLogger(__name__)

RoundCallback = Callable[[int, np.ndarray, list[str]], None]  # (round, weights, sites)
Ask = Callable[[dict | None], Replies]  # one request to every active site, given `secure`


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
    pins = dict(runtime.pins)
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
    ask: Ask,
    *,
    stage: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One secure-sum round: `ask(secure)` asks the sites for masked replies; returns
    the unmasked sum and the replies it summed, by site. Restarts with fresh masks
    without any site that dropped."""
    from pipeline.protocol.secure_sum import VerifiedRoster, unmask_sum, verify_roster

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
        replies = ask(secure)
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
    ask: Ask,
    *,
    stage: str | None = None,
) -> tuple[np.ndarray, float, list[str]]:
    """One release by every active site, summed: through secure aggregation with
    `secure` (the coordinator decodes only the sum; the row count rides as the last
    entry), else in the clear. `ask(secure)` makes the request. Returns the summed
    vector, the rows it covers and the sites summed (`sum_round` numbers the secure sum's
    masks)."""
    if secure is not None:
        total, summed = secure_sum_round(
            runtime, secure, sum_round, quorum, ask, stage=stage or f"round {sum_round}"
        )
        return total[:-1], float(total[-1]), list(summed)
    replies = ask(None)
    runtime.require_quorum(quorum, stage or f"round {sum_round}")
    rows = float(sum(r.n for r in replies.ok.values()))
    return sum(r.vector for r in replies.ok.values()), rows, list(replies.ok)
