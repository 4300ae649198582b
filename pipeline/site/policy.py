"""A site's own rules: which strategies it serves, how much epsilon one job may spend,
and whether it adds only a share of a release's noise. The coordinator cannot override
them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pipeline.strategies import StrategyName, names


class SitePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategies: list[StrategyName] = Field(default_factory=lambda: list(names()))
    max_epsilon_per_job: float = Field(1.0, gt=0)
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

    def accepts_shares(self, collusion_threshold: int) -> bool:
        """Whether this site adds only a share of the noise in a job tolerating
        `collusion_threshold` colluding sites (otherwise it adds all of it)."""
        return self.distributed_noise and collusion_threshold >= self.min_collusion_threshold
