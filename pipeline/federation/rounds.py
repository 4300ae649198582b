"""The coordinator's round, written once: ask every active site for a release and sum it,
through the secure sum when the job uses it.

The loop owns quorum and dropouts; what a site computes is its strategy's site handler,
the arithmetic on the sum is the strategy's, and the masks are :mod:`pipeline.protocol.
secure_sum`'s. Nothing here sees a row, and nothing here knows which strategy asks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.federation.runtime import Replies, SiteRuntime

if TYPE_CHECKING:
    from pipeline.protocol.secure_sum import VerifiedRoster

log = logging.getLogger(__name__)

RoundCallback = Callable[[int, np.ndarray, list[str]], None]  # (round, weights, sites)
Ask = Callable[[dict | None], Replies]  # one request to every active site, given `secure`


@dataclass
class SecureSession:
    """Secure aggregation state for one job: the signed job-key roster (verified once,
    against the identities offered to the sites), and how many sites dropped out of a
    round."""

    job_id: str
    roster: dict
    pinned: dict[str, str]
    verified: VerifiedRoster
    dropouts: int = 0


def open_secure_session(runtime: SiteRuntime, job_id: str, quorum: int) -> SecureSession:
    """Collect each site's signed per-job key, and the identity keys to offer the sites:
    the config's pins, else each site's own answer. A site checks them against its own
    pins (trust on first use only where its policy allows), never takes them on trust."""
    from pipeline.protocol.secure_sum import verify_roster

    pins = dict(runtime.pins)
    unpinned = [s for s in runtime.active if s not in pins]
    if unpinned:
        log.info("identity keys not in the config for %s: asking the sites", unpinned)
        got = runtime.call("identity_key", sites=unpinned, raw=True)
        pins.update(got.ok)
    keys = runtime.call("public_key", job_id)
    runtime.require_quorum(quorum, "secure aggregation key exchange")
    roster = {site: reply.signed_key for site, reply in keys.ok.items()}
    identities = {s: bytes.fromhex(k) for s, k in pins.items()}
    return SecureSession(job_id, roster, pins, verify_roster(roster.values(), identities, job_id))


def secure_sum_round(
    runtime: SiteRuntime,
    session: SecureSession,
    round_: int,
    quorum: int,
    ask: Ask,
    *,
    stage: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One secure-sum round (:mod:`pipeline.protocol.secure_sum`): set-up, `ask(secure)`
    for the masked inputs, confirmation of who sent one, reveal. Returns the unmasked sum
    of the inputs that arrived and those replies, by site. A site lost at any step is
    recovered from the others' shares while a threshold of the job's sites (more than
    half, and at least three) remains; no site is asked twice."""
    from pipeline.protocol.secure_sum import unmask

    where = stage or f"round {round_}"
    floor = max(quorum, 3)
    roster = list(session.roster.values())
    runtime.require_quorum(floor, f"{where}: secure aggregation needs at least 3 sites;")
    setups = runtime.call(
        "secure_setup", session.job_id, round_, roster=roster, identities=session.pinned
    )
    runtime.require_quorum(floor, f"{where} (set-up)")
    keys = {s: r.key for s, r in setups.ok.items()}
    shares = {to: {s: r.shares[to] for s, r in setups.ok.items() if to in r.shares} for to in keys}
    replies = ask({"round": round_, "keys": keys, "shares": shares})
    runtime.require_quorum(floor, f"{where} (inputs)")
    masked = {s: r.masked for s, r in replies.ok.items() if s in keys}
    survivors, dropped = sorted(masked), sorted(set(keys) - set(masked))
    confirmed = runtime.call("secure_confirm", session.job_id, round_, survivors=survivors)
    reveals = runtime.call(
        "secure_reveal",
        session.job_id,
        round_,
        survivors=survivors,
        dropped=dropped,
        confirmations=confirmed.ok,
        sites=list(confirmed.ok),
    )
    lost = {*dropped, *confirmed.failed, *reveals.failed}
    if lost:
        session.dropouts += len(lost)
        log.warning("%s: recovered without %s", where, sorted(lost))
    total = unmask(masked, session.verified, round_, keys, reveals.ok)
    return total, {s: replies.ok[s] for s in survivors}


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
