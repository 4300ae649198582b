"""The sites of a job: their actors placed on their nodes, their extracts validated in
place (only redacted summaries come back), the valid ones admitted and loaded."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.config import FederationConfig, SiteConfig
from pipeline.extract import current_month
from pipeline.failpoints import stop_point
from pipeline.federation.runtime import Placement, SiteRuntime
from pipeline.protocol.messages import SiteInfo
from pipeline.site.actor import SiteActor
from pipeline.stages.context import JobContext
from pipeline.strategies.base import Strategy
from pipeline.validation import ValidationSummary, admit


def placements(
    sites: Sequence[SiteConfig], contract: str | Path, before_month: str | None = None
) -> list[Placement]:
    """How each site's actor is made: from its config, the contract, the data window
    (partitions whose follow-up closed before `before_month`) and, where the config
    states one, its view of the site's policy (the site enforces its own). The key of
    each placement holds the contract's bytes, so an actor made from a contract file that
    changed since does not serve again."""
    contract = str(contract)
    digest = hashlib.sha256(Path(contract).read_bytes()).hexdigest()
    return [
        Placement(
            name=s.name,
            args=(s.name, str(s.path), contract, s.policy.model_dump() if s.policy else None),
            kwargs={
                "before_month": before_month,
                "test_extract": str(s.test_path) if s.test_path else None,
            },
            resource=s.resource,
            identity_key=s.identity_key,
            key=(
                s.model_dump_json(),
                contract,
                digest,
                before_month,
            ),
        )
        for s in sites
    ]


def runtime_for(
    sites: Sequence[SiteConfig],
    contract: str | Path,
    job_id: str,
    *,
    before_month: str | None = None,
    timeout_s: float = 120.0,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    allow_unauthenticated: bool = False,
) -> SiteRuntime:
    """A runtime of site actors for these sites (use as a context manager)."""
    return SiteRuntime(
        placements(sites, contract, before_month),
        SiteActor,
        job_id,
        timeout_s=timeout_s,
        ray_address=ray_address,
        num_cpus=num_cpus,
        allow_unauthenticated=allow_unauthenticated,
    )


def site_runtime(cfg: FederationConfig, job_id: str, ray_address: str | None = None) -> SiteRuntime:
    """The sites' actors for a job, reading only partitions whose follow-up has closed."""
    return runtime_for(
        cfg.sites,
        cfg.contract,
        job_id,
        before_month=current_month(),
        timeout_s=cfg.training.round_timeout_s,
        ray_address=ray_address or cfg.ray.address,
        num_cpus=cfg.ray.num_cpus,
        allow_unauthenticated=cfg.ray.allow_unauthenticated,
    )


def validate_sites(
    runtime: SiteRuntime,
    cfg: FederationConfig,
    on_site: Callable[[str], None] | None = None,
    *,
    job_id: str | None = None,
    prepare_for: Strategy[Any] | None = None,
    fresh: bool = False,
) -> dict[str, ValidationSummary]:
    """Validation runs inside each site; only redacted summaries come back.
    `on_site(site)` is called as each site finishes, for a progress bar. With
    `prepare_for` (the strategy job `job_id` will train; the runtime's job by default),
    a site first checks that its policy serves it, and sites that pass keep the
    validated rows for the job's ``load``. `fresh`: every site validates again, whatever
    its validation records say."""
    v = cfg.validation
    replies = runtime.call(
        "validate",
        job_id or runtime.job_id,
        prepare_for.name if prepare_for is not None else None,
        unknown_columns=v.unknown_columns,
        min_rows=v.min_rows,
        leakage_auc=v.leakage_auc,
        keep=prepare_for is not None,
        fresh=fresh,
        drop_failed=False,
        on_reply=on_site,
    )
    summaries = {site: ValidationSummary.from_dict(r.summary) for site, r in replies.ok.items()}
    for site, reason in replies.failed.items():
        summaries[site] = ValidationSummary(
            site=site, rows=0, passed=False, results=(), errors=(reason,)
        )
    return summaries


def admit_sites(
    ctx: JobContext,
) -> tuple[dict[str, ValidationSummary], list[str], dict[str, list[str]]]:
    """Validate at the sites and admit those that passed (the quorum rule); the others
    are quarantined with their reasons and leave the job."""
    ctx.say("validating extracts at the sites")
    summaries = validate_sites(
        ctx.runtime,
        ctx.cfg,
        lambda _site: stop_point("validation"),
        job_id=ctx.job_id,
        prepare_for=ctx.strategy,
    )
    ctx.tracker.json({s: v.to_dict() for s, v in summaries.items()}, "validation.json")
    admitted, quarantined = admit(list(summaries.values()), ctx.cfg.quorum)
    for site, reasons in quarantined.items():
        ctx.runtime.drop(site, "quarantined: " + "; ".join(reasons[:3]))
    ctx.say(f"admitted {admitted}; quarantined {sorted(quarantined)}")
    return summaries, admitted, quarantined


def load_sites(ctx: JobContext) -> dict[str, SiteInfo]:
    """Every admitted site splits the rows it kept at validation (or reads its extract
    again); the quorum must hold. Returns their counts, by site."""
    settings = ctx.settings
    infos = ctx.runtime.call(
        "load", ctx.job_id, ctx.strategy.name, settings.test_fraction, settings.seed
    )
    ctx.runtime.require_quorum(ctx.cfg.quorum, "loading extracts")
    ctx.tracker.json({s: vars(i) for s, i in infos.ok.items()}, "sites.json")
    return infos.ok
