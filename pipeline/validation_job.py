"""`pipeline validate`: run validation at every site and apply the admission rule."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from pipeline.config import FederationConfig
from pipeline.errors import QuorumError
from pipeline.validation import ValidationSummary, admit


def run_validation(
    cfg: FederationConfig,
    *,
    ray_address: str | None = None,
    on_site: Callable[[str], None] | None = None,
    fresh: bool = False,
) -> tuple[dict[str, ValidationSummary], list[str], dict[str, list[str]]]:
    """Redacted summaries per site, the admitted sites, and the quarantined ones.
    `on_site(site)` is called as each site finishes; `fresh` ignores the sites'
    validation records."""
    from pipeline.stages.sites import site_runtime, validate_sites

    job_id = f"validate-{uuid.uuid4().hex[:10]}"
    with site_runtime(cfg, job_id, ray_address) as runtime:
        summaries = validate_sites(runtime, cfg, on_site, fresh=fresh)
    try:
        admitted, quarantined = admit(list(summaries.values()), cfg.quorum)
    except QuorumError:
        admitted = [s for s, v in summaries.items() if v.passed]
        quarantined = {s: v.reasons() for s, v in summaries.items() if not v.passed}
    return summaries, admitted, quarantined
