"""What every stage of a federated job shares: the job's context, its clock and its
progress hooks. Below both the job and the strategies in ``models/``, so neither imports
the other."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import FederationConfig
    from pipeline.contract import Contract
    from pipeline.federation.runtime import SiteRuntime
    from pipeline.registry import JobTracker

Progress = Callable[[str], None]
RoundProgress = Callable[[int, int], None]  # (rounds done, rounds in all)


def _quiet(_msg: str) -> None:
    """The default progress: say nothing."""


@dataclass
class StageClock:
    """Wall seconds per stage of one job, in order: where an operator sees its time go."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class JobContext:
    """What every training strategy of one job works with. `on_round(done, total)` is
    called after each training round the coordinator runs, for a progress bar."""

    runtime: SiteRuntime
    cfg: FederationConfig
    contract: Contract
    job_id: str
    tracker: JobTracker
    say: Progress = _quiet
    on_round: RoundProgress | None = None
