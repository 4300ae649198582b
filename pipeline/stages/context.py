"""What every stage of a federated job shares: the job's context and its clock."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.strategies.base import Progress, RoundProgress, TrainingJob, quiet

if TYPE_CHECKING:
    from pipeline.config import FederationConfig
    from pipeline.contract import Contract
    from pipeline.federation.runtime import SiteRuntime
    from pipeline.protocol.messages import SiteInfo
    from pipeline.registry import JobTracker
    from pipeline.strategies.base import Strategy
    from pipeline.strategies.settings import TrainingSettings


@dataclass
class StageClock:
    """Wall seconds per stage of one job, in order: where an operator sees its time go."""

    seconds: dict[str, float] = field(default_factory=dict)
    on_stage: Callable[[str], None] | None = None  # hears each stage as it starts

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.on_stage is not None:
            self.on_stage(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class JobContext:
    """One job: its sites, config, contract, strategy, run and progress hooks.
    `on_round(done, total)` is called after each training round, for a progress bar;
    `settings` is the config's training section with the job's own round limit."""

    runtime: SiteRuntime
    cfg: FederationConfig
    contract: Contract
    job_id: str
    tracker: JobTracker
    strategy: Strategy[Any]
    settings: TrainingSettings
    say: Progress = quiet
    on_round: RoundProgress | None = None

    def training_job(self, sites: Mapping[str, SiteInfo]) -> TrainingJob:
        """What the strategy trains with, once `sites` have loaded their rows."""
        return TrainingJob(
            strategy=self.strategy.name,
            runtime=self.runtime,
            contract=self.contract,
            job_id=self.job_id,
            tracker=self.tracker,
            sites=sites,
            quorum=self.cfg.quorum,
            settings=self.settings,
            say=self.say,
            on_round=self.on_round,
        )
