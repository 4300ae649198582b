"""The job's privacy stage: the strategy's plan from the admitted sites' row counts and
the contract, and every taking-part site's spend written to the ledger before any noise
exists (invariant 3). A strategy that adds no noise plans nothing and spends nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.config import FederationConfig
from pipeline.errors import BudgetError
from pipeline.federation.runtime import SiteRuntime
from pipeline.protocol.messages import SiteInfo
from pipeline.stages.context import JobContext
from pipeline.strategies.base import PrivacyPlan, PrivacyTerms, Strategy


def privacy_terms(cfg: FederationConfig, rounds: int) -> PrivacyTerms:
    """What a private strategy plans from, out of the federation's privacy settings."""
    p = cfg.privacy
    return PrivacyTerms(
        epsilon=p.epsilon_per_job,
        delta=p.delta,
        max_rounds=rounds,
        noise_to_signal=p.noise_to_signal,
        clip=p.clip_norm,
        noise_shares=cfg.noise_shares(),
        collusion_threshold=p.collusion_threshold,
    )


def plan_and_reserve(
    ctx: JobContext, sites: Mapping[str, SiteInfo]
) -> tuple[PrivacyPlan | None, dict[str, tuple[float, float]]]:
    """The strategy's privacy plan for the loaded `sites` and each site's reserved
    (epsilon, delta); (None, {}) for a strategy that adds no noise. The plan and its
    parameters go on the run."""
    counts = {s: i.n_train for s, i in sites.items()}
    plan = ctx.strategy.plan(privacy_terms(ctx.cfg, ctx.settings.rounds), counts, ctx.contract)
    if plan is None:
        return None, {}
    spend = reserve_privacy(ctx.cfg, ctx.job_id, ctx.strategy, ctx.runtime, plan)
    ctx.tracker.params(
        {
            "epsilon_per_site": plan.epsilon,
            "delta": plan.delta,
            "noise_multiplier": plan.noise_multiplier,
            "clip": plan.clip,
        }
    )
    values = plan.as_dict()
    ctx.tracker.json(values, "privacy_plan.json")
    ctx.tracker.params(
        {f"plan_{k}": v for k, v in values.items() if isinstance(v, int | float) and k != "epsilon"}
    )
    ctx.say(plan.describe())
    ctx.say(
        f"privacy reserved: epsilon {plan.epsilon:g} per site, sigma {plan.noise_multiplier:.2f}"
    )
    return plan, spend


def reserve_privacy(
    cfg: FederationConfig,
    job_id: str,
    strategy: Strategy[Any],
    runtime: SiteRuntime,
    plan: PrivacyPlan,
) -> dict[str, tuple[float, float]]:
    """Write the job's planned spend for every taking-part site before any noise exists.

    A site whose budget (or own per-job limit) cannot pay for the job is left out with
    that reason while the quorum holds; otherwise the job is refused with a
    :class:`BudgetError` before any noise is drawn. The ledger checks again in the same
    transaction that writes, so a concurrent spend cannot slip between check and write.
    Each site's ledger row names the mechanism its spend rests on, under its policy."""
    from pipeline.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(cfg.privacy.ledger)
    eps = plan.epsilon
    short: dict[str, str] = {}
    for site in runtime.active:
        limit = cfg.site(site).policy.max_epsilon_per_job
        left = ledger.remaining(site, cfg.site_budget(site))
        if eps > limit + 1e-12:
            short[site] = (
                f"site {site} allows at most epsilon {limit:g} per job; the job plans {eps:g}"
            )
        elif eps > left + 1e-12:
            short[site] = (
                f"site {site}'s privacy budget is exhausted: {left:g} of "
                f"{cfg.site_budget(site):g} left, the job plans {eps:g}"
            )
    if len(runtime.active) - len(short) < cfg.quorum:
        raise BudgetError(
            f"job {job_id!r} refused before any noise was drawn: only "
            f"{len(runtime.active) - len(short)} site(s) can pay for it, the quorum is "
            f"{cfg.quorum}; " + "; ".join(short.values())
        )
    for site, why in short.items():
        runtime.drop(site, f"left out: {why}")
    sites = runtime.active
    per_site = {s: (eps, plan.delta) for s in sites}
    ledger.reserve(
        job_id,
        per_site,
        {s: cfg.site_budget(s) for s in sites},
        mechanism={s: strategy.ledger_mechanism(plan, cfg.site(s).policy) for s in sites},
    )
    return per_site
