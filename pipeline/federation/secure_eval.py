"""Federated evaluation through the secure sum: every model judged on the same held-out
rows of the same sites, and only pooled statistics decoded.

A promotion gate compares a challenger with the champion; that comparison is only fair on
the same patients, so both are evaluated in one request to each site, under one set of
secure-aggregation masks (keys of their own, ``<job>:eval``, never the training keys).
Each site's reply is a masked vector (random-looking alone) plus its own AUC per model,
suppressed at the site when it is too small; the coordinator decodes only the sum.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.contract import Contract
from pipeline.errors import DataError
from pipeline.evaluation import (
    Evaluation,
    Suppressed,
    group_width,
    pooled_metrics,
    split_groups,
)
from pipeline.federation.rounds import open_secure_session, secure_sum_round
from pipeline.federation.runtime import SiteRuntime


def evaluate_models(
    runtime: SiteRuntime,
    contract: Contract,
    models: Mapping[str, dict],
    *,
    eval_id: str,
    quorum: int,
) -> dict[str, Evaluation]:
    """Evaluate every model (name -> site payload, as ``model.site_payload()`` gives it)
    on the held-out rows of the runtime's active sites. Needs at least three sites (with
    two, each would learn the other's statistics from the sum): a job left with fewer
    stops here with a :class:`QuorumError`."""
    names = list(models)
    session = open_secure_session(runtime, eval_id, quorum)
    total, replies = secure_sum_round(
        runtime,
        session,
        0,
        quorum,
        lambda secure: runtime.call("evaluate_models", eval_id, dict(models), secure=secure),
        stage="evaluation",
    )
    groups = contract.subgroup_names
    width = (len(groups) + 1) * group_width()
    if total.shape != (width * len(names),):
        raise DataError(
            f"evaluation statistics have {total.size} values, expected {width * len(names)}: "
            "do all sites use the same contract version?"
        )
    out = {}
    for i, name in enumerate(names):
        blocks = split_groups(total[i * width : (i + 1) * width], len(groups))
        overall = pooled_metrics(blocks[0])
        if isinstance(overall, Suppressed):
            raise DataError(
                "the sites' held-out rows hold fewer than 11 patients in a class: "
                "no metric can be reported"
            )
        sites = {
            site: (Suppressed() if reply.auc.get(name) is None else float(reply.auc[name]))
            for site, reply in replies.items()
        }
        out[name] = Evaluation(
            overall=overall,
            subgroups={g: pooled_metrics(b) for g, b in zip(groups, blocks[1:], strict=True)},
            sites=sites,
        )
    return out
