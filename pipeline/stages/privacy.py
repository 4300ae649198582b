"""The job's privacy stage: the strategy's plan from the admitted sites' row counts and
the contract, and every taking-part site's spend written to the ledger before any noise
exists (invariant 3). A strategy that adds no noise plans nothing and spends nothing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _SiteShares:
    """A site's answer on noise shares, as a plan's ledger wording asks it."""

    shares: bool

    def accepts_shares(self, collusion_threshold: int) -> bool:
        return self.shares


def reserve_privacy(
    cfg: FederationConfig,
    job_id: str,
    strategy: Strategy[Any],
    runtime: SiteRuntime,
    plan: PrivacyPlan,
) -> dict[str, tuple[float, float]]:
    """Reserve the job's planned spend at every taking-part site before any noise exists.

    Each site reserves in its own ledger under its own policy and budget, and refuses
    (saying why) what it cannot pay for; the coordinator's ledger then records the sites'
    answers, checked again against its own view of their budgets in the same transaction
    that writes. A site that refuses, or that the coordinator's view finds short, is left
    out while the quorum holds; otherwise the job is refused with a :class:`BudgetError`
    before any noise is drawn (the sites give back what they reserved when the job
    ends)."""
    from pipeline.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(cfg.privacy.ledger)
    eps = plan.epsilon
    short: dict[str, str] = {}
    for site in runtime.active:
        left = ledger.remaining(site, cfg.site_budget(site))
        if eps > left + 1e-12:
            short[site] = (
                f"site {site}'s privacy budget is exhausted: {left:g} of "
                f"{cfg.site_budget(site):g} left, the job plans {eps:g}"
            )
    asked = [s for s in runtime.active if s not in short]
    answers = runtime.call(
        "reserve",
        job_id,
        strategy.name,
        epsilon=eps,
        delta=plan.delta,
        collusion_threshold=cfg.privacy.collusion_threshold,
        sites=asked,
        drop_failed=False,
    )
    short.update(answers.failed)
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
        mechanism={
            s: strategy.ledger_mechanism(plan, _SiteShares(answers.ok[s].shares)) for s in sites
        },
    )
    return per_site
