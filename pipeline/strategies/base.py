"""What every training strategy is made of, and what the job and the site hand it.

A strategy is one package under ``pipeline/strategies/`` with the same parts, as every
dataset of FLamby and every strategy of Flower exposes the same names:

- ``plan.py`` (private strategies only): its privacy plan, chosen from the admitted
  sites' row counts and the contract before any noise exists, and charged exactly;
- ``coordinator.py``: how the coordinator trains with the sites, in rounds over
  :mod:`pipeline.federation`;
- ``site.py``: what a site computes and releases for it, a :class:`SiteHandler`;
- ``__init__.py``: the :class:`Strategy` it registers in :mod:`pipeline.strategies`.

The job asks a strategy (never compares its name); the site actor hands each request to
the handler of the strategy it names, once its own policy allows that strategy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    import numpy as np

    from pipeline.contract import Contract
    from pipeline.features import EncodedRows, Encoding
    from pipeline.federation.rounds import Ask, SecureSession
    from pipeline.federation.runtime import Replies, SiteRuntime
    from pipeline.models.base import Model
    from pipeline.privacy.releases import JobReleases
    from pipeline.protocol.collective_masks import CollectiveMasks
    from pipeline.protocol.messages import MaskedUpdate, ModelUpdate, SiteInfo
    from pipeline.strategies.settings import TrainingSettings

Progress = Callable[[str], None]
RoundProgress = Callable[[int, int], None]  # (rounds done, rounds in all)


def quiet(_msg: str) -> None:
    """The default progress: say nothing."""


class Tracker(Protocol):
    """Where a job records what it did (an MLflow run: :class:`pipeline.registry.JobTracker`)."""

    def params(self, params: dict[str, Any]) -> None: ...

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def tags(self, tags: dict[str, str]) -> None: ...

    def json(self, obj: Any, name: str) -> None: ...

    def artifact(self, path: Path, folder: str | None = None) -> None: ...


# -- the coordinator's side ----------------------------------------------------------------
@dataclass(frozen=True)
class PrivacyText:
    """What the model card says of a strategy's privacy. Where it depends on how the job
    ran, ``by_mode`` gives what the aggregator saw for each value of the run's
    ``mode_param``."""

    mechanism: str
    aggregator_sees: str
    secure_aggregation: bool  # whether its training updates go through the secure sum
    mode_param: str = ""
    by_mode: Mapping[str, str] = field(default_factory=dict)

    def seen(self, params: Mapping[str, Any]) -> str:
        """What the aggregator saw in a run with these (MLflow) params."""
        return self.by_mode.get(str(params.get(self.mode_param, "")), self.aggregator_sees)


@dataclass(frozen=True)
class PrivacyTerms:
    """What a private strategy plans from: the federation's privacy settings, never data.

    ``noise_shares`` and ``collusion_threshold``: distributed noise
    (:mod:`pipeline.privacy.distributed`); 1 and the config's threshold when every site
    adds its full noise.
    """

    epsilon: float
    delta: float
    max_rounds: int
    noise_to_signal: float
    clip: float | None
    noise_shares: int
    collusion_threshold: int


class SharePolicy(Protocol):
    """The part of a site's policy a plan asks: does it add only a share of the noise?"""

    def accepts_shares(self, collusion_threshold: int) -> bool: ...


class PrivacyPlan(Protocol):
    """What a private strategy will release at every site, fixed before training."""

    epsilon: float
    delta: float
    noise_multiplier: float

    @property
    def clip(self) -> float: ...

    def as_dict(self) -> dict[str, Any]: ...

    def describe(self) -> str:
        """One progress line: what the plan releases."""
        ...


@dataclass(frozen=True)
class TrainingJob:
    """What a strategy's coordinator side trains with: the sites that loaded their rows
    (``sites``: their ``load`` replies), the contract, the job's identity (its id and the
    strategy's name, which its requests to the sites carry), the config's training
    section and where it reports."""

    strategy: str
    runtime: SiteRuntime
    contract: Contract
    job_id: str
    tracker: Tracker
    sites: Mapping[str, SiteInfo]
    quorum: int
    settings: TrainingSettings
    say: Progress = quiet
    on_round: RoundProgress | None = None

    def ask(self, request: str, *args: Any, **kwargs: Any) -> Replies:
        """Call `request` of the strategy's site handler at every active site."""
        return self.runtime.call("handle", self.strategy, request, *args, **kwargs)

    def asker(self, request: str, *args: Any, **kwargs: Any) -> Ask:
        """:meth:`ask` for a round that may run through the secure sum: called with the
        round's `secure` request (None in the clear)."""
        return lambda secure: self.ask(request, *args, secure=secure, **kwargs)

    def secure_session(self) -> SecureSession | None:
        """The job's secure-aggregation keys when the config asks for the secure sum."""
        from pipeline.federation.rounds import open_secure_session

        if not self.settings.secure_aggregation:
            return None
        return open_secure_session(self.runtime, self.job_id, self.quorum)


Plan = TypeVar("Plan")


class Strategy(Generic[Plan]):
    """One way to train a global model across the sites (`Plan`: the type of its privacy
    plan; a strategy that adds no noise has none).

    Attributes
    ----------
    name : str
        What the config, the CLI and a site's policy call it.
    summary : str
        One line for help text.
    encoding : {"linear", "tree"}
        The rows its sites prepare while they validate.
    privacy : PrivacyText
        What the model card says of it.
    requirements : tuple of str
        Distributions its registered model needs beyond the served model's own.
    in_demo : bool
        Whether ``pipeline demo`` trains it.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    encoding: ClassVar[Encoding]
    privacy: ClassVar[PrivacyText]
    requirements: ClassVar[tuple[str, ...]] = ()
    in_demo: ClassVar[bool] = False

    def plan(
        self, terms: PrivacyTerms, counts: Mapping[str, int], contract: Contract
    ) -> Plan | None:
        """Its privacy plan from the admitted sites' training row `counts` and the
        contract; None for a strategy that adds no noise."""
        return None

    def ledger_mechanism(self, plan: Plan, policy: SharePolicy) -> str:
        """What a site's ledger row names as the mechanism its spend rests on."""
        return self.name

    def train(self, job: TrainingJob, plan: Plan) -> Model:
        """Train with the sites by the plan of :meth:`plan` (None for a strategy that
        adds no noise); returns the global model."""
        raise NotImplementedError

    def site_handler(self) -> type[SiteHandler]:
        """The class that answers this strategy's requests at a site."""
        raise NotImplementedError

    @contextlib.contextmanager
    def ahead(self) -> Iterator[Callable[[], None]]:
        """Start, while the sites validate, what its training will need at the
        coordinator (an interpreter, an import), ended with the job; yields `ready`,
        which waits for it (called before the coordinator imports what it may still be
        importing)."""
        yield lambda: None


# -- the site's side -----------------------------------------------------------------------
class SiteAccess(Protocol):
    """What a strategy's site handler may use of its site: the training rows, the site's
    own policy check and audit log, and the one way out for a value (:meth:`send`)."""

    name: str
    contract: Contract
    held: dict[str, str]  # job -> digest of the job's model the site holds itself

    def train_rows(self) -> EncodedRows:
        """The rows of the current job's training split (refused when none is loaded)."""
        ...

    def authorize(self, job_id: str, strategy: str, epsilon: float) -> JobReleases:
        """The site's policy applied to a request; the job's release record."""
        ...

    def audit(self, request: str, job_id: str | None, **params: Any) -> None: ...

    def accepts_shares(self, collusion_threshold: int) -> bool: ...

    def check_roster(self, job_id: str, sites: int | None) -> None:
        """Refuse a sum of fewer sites than the site's policy's minimum."""
        ...

    def collective(
        self, job_id: str, mode: str, sites: list[str], attempt: str
    ) -> CollectiveMasks | None:
        """The site's terms for an attempt of an XGBoost collective; its masks, or None
        for a collective in the clear its policy allows."""
        ...

    def answer_once_at(self, job_id: str, weights: np.ndarray) -> None:
        """Refuse a second answer of the job at the same weights."""
        ...

    def send(
        self,
        job_id: str,
        vector: np.ndarray,
        n: int,
        secure: dict | None,
        *,
        min_sites: int = 0,
        private: bool = False,
    ) -> ModelUpdate | MaskedUpdate:
        """A vector with the row count it covers: masked for the secure sum when the
        round is one (`secure`), in the clear only where the site's policy allows or for
        a `private` (noised, charged) release; revealed only in a sum of at least
        `min_sites` sites."""
        ...

    def not_reusable(self) -> None:
        """This process must not serve a later job (it joined native state a broken peer
        can leave stuck)."""
        ...


class SiteHandler:
    """A strategy's side of a site. Only the methods named in ``requests`` can be
    reached by a coordinator, each with the job's id first.

    Parameters
    ----------
    site : SiteAccess
    strategy : str
        The strategy's name, as the site's policy knows it.
    """

    requests: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, site: SiteAccess, strategy: str) -> None:
        self.site = site
        self.strategy = strategy

    @classmethod
    def prepare(cls) -> None:
        """Called at the site once its rows for the job are prepared: import now what the
        requests will need, rather than while the other sites wait on this one."""


class RoundLogger:
    """Each training round to the job's progress hook (a bar) and to the run's metrics."""

    def __init__(self, job: TrainingJob, rounds: int) -> None:
        self.job, self.rounds, self.done = job, rounds, 0

    def __call__(self, r: int, weights: np.ndarray, sites: list[str]) -> None:
        import numpy as np

        self.done = r + 1
        if self.job.on_round is not None:
            self.job.on_round(self.done, self.rounds)
        self.job.tracker.metrics(
            {"sites_in_round": len(sites), "weight_norm": float(np.linalg.norm(weights))}, step=r
        )

    def finished(self) -> None:
        """Rounds that stop early (a converged Newton method) end the bar where they did."""
        if self.job.on_round is not None and self.done < self.rounds:
            self.job.on_round(self.done, self.done)


def check_counts(counts: Mapping[str, int]) -> None:
    """A privacy plan needs at least one site with training rows."""
    if not counts or any(int(n) < 1 for n in counts.values()):
        raise ValueError("a plan needs at least one site with training rows")
