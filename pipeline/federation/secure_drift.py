"""Drift measured across the sites through the secure sum: the coordinator decodes only
the pooled histograms of the reference and the new months, and each site's own PSI per
feature (a number, suppressed at the site when its bins would be too small)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.contract import Contract
from pipeline.evaluation.drift import psi_by_feature, vector_length
from pipeline.federation.rounds import open_secure_session, secure_sum_round
from pipeline.federation.runtime import SiteRuntime


@dataclass(frozen=True)
class DriftReport:
    """PSI per feature for every site (its new months against its reference months) and
    for the federation (pooled new months against pooled reference months)."""

    sites: dict[str, dict[str, float | None]]
    pooled: dict[str, float | None]

    def to_dict(self) -> dict:
        return {"sites": self.sites, "pooled": self.pooled}


def measure_drift(
    runtime: SiteRuntime,
    contract: Contract,
    *,
    drift_id: str,
    quorum: int,
) -> DriftReport:
    """Ask every active site for its drift between the months it last trained on and its
    closed months since (each site's own record), summed securely (at least three
    sites)."""
    session = open_secure_session(runtime, drift_id, quorum)
    total, replies = secure_sum_round(
        runtime,
        session,
        0,
        quorum,
        lambda secure: runtime.call("drift", drift_id, secure=secure),
        stage="drift",
    )
    width = vector_length(contract)
    pooled = psi_by_feature(total[:width], total[width:], contract)
    return DriftReport(sites={s: dict(r.psi) for s, r in replies.items()}, pooled=pooled)
