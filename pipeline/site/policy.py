"""A site's own rules: which strategies it serves, how much epsilon one job may spend,
whether it adds only a share of a release's noise, and whether (and among how many sites)
it releases only through the secure sum. The coordinator cannot override them."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipeline.extract import beside
from pipeline.strategies import StrategyName, names


class SitePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategies: list[StrategyName] = Field(default_factory=lambda: list(names()))
    max_epsilon_per_job: float = Field(1.0, gt=0)
    epsilon_budget: float = Field(
        10.0, gt=0, description="lifetime epsilon, kept by the site's own ledger"
    )
    distributed_noise: bool = Field(
        False,
        description="add only a share of a dp-fedavg release's noise when the job uses "
        "distributed noise under secure aggregation (the guarantee then also rests on "
        "other sites adding theirs); false: always the full noise",
    )
    min_collusion_threshold: int = Field(
        1,
        ge=0,
        description="the fewest colluding sites a distributed-noise job must tolerate for "
        "this site to add a share; below it the site adds its full noise",
    )

    secure_aggregation: bool = Field(
        True,
        description="release updates, evaluation and drift statistics only masked by the "
        "secure sum; false only for sites inside one trusted cluster",
    )
    min_roster: int = Field(
        3,
        ge=3,
        description="the fewest sites a secure sum this site takes part in may cover",
    )

    site_metrics: bool = Field(
        True,
        description="release this site's own figures (its AUC, its PSI per feature), each "
        "suppressed below 11 patients per class; false: only pooled figures",
    )
    max_models_per_evaluation: int = Field(
        2, ge=1, description="models one job may score on this site's held-out rows"
    )
    max_nonprivate_jobs_per_day: int | None = Field(
        None,
        ge=0,
        description="jobs of strategies that add no noise this site serves in 24 hours; "
        "none: no cap",
    )
    trust_on_first_use: bool = Field(
        True,
        description="pin a site's identity key the first time it is offered; false: only "
        "keys the hospital wrote in its pins file are trusted",
    )

    def accepts_shares(self, collusion_threshold: int) -> bool:
        """Whether this site adds only a share of the noise in a job tolerating
        `collusion_threshold` colluding sites (otherwise it adds all of it)."""
        return self.distributed_noise and collusion_threshold >= self.min_collusion_threshold


def policy_path(extract: Path) -> Path:
    """The site's policy file, beside its extract."""
    return beside(extract, "policy.yaml")


def read_policy(extract: Path) -> SitePolicy:
    """The site's own policy, from its file; written with the defaults where the hospital
    has none yet, so that it can read and edit what the site enforces."""
    path = policy_path(extract)
    if not path.exists():
        write_policy(extract, SitePolicy())
    return SitePolicy.model_validate(yaml.safe_load(path.read_text()) or {})


def write_policy(extract: Path, policy: SitePolicy) -> Path:
    path = policy_path(extract)
    header = (
        "# This site's own policy: what it serves and releases, whatever a coordinator's\n"
        "# config says. Edit it here; a coordinator whose config disagrees is refused.\n"
    )
    path.write_text(header + yaml.safe_dump(policy.model_dump(), sort_keys=False))
    return path


def disagreement(own: SitePolicy, expected: SitePolicy) -> str | None:
    """What a coordinator's view of the policy gets wrong, or None."""
    mine, theirs = own.model_dump(), expected.model_dump()
    wrong = [
        f"{k}: {mine[k]!r} here, {theirs[k]!r} in the config" for k in mine if mine[k] != theirs[k]
    ]
    return "; ".join(wrong) or None
