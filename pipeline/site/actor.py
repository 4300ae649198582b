"""The site actor: one Ray actor per hospital, the site's composition root.

It holds the site's extract, contract, policy and identity, and answers with aggregates
only, from the allow-list of :mod:`pipeline.protocol.messages`. What every job needs is
here (validation, loading and splitting, the per-job keys of the secure sum, evaluation
and drift statistics); what one strategy computes is that strategy's site handler, to
which :meth:`SiteActor.handle` gives each request once the site's policy allows the
strategy. Heavy libraries are imported inside the methods that need them, so a site that
only validates does not pay for XGBoost.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from pipeline.contract import load_contract
from pipeline.errors import BudgetError, DataError
from pipeline.extract import Window
from pipeline.protocol.identity import load_or_create_identity
from pipeline.protocol.messages import (
    Confirmation,
    DriftReply,
    JobEnd,
    MaskedEvaluation,
    ModelCommitment,
    PartitionList,
    PublicKeyReply,
    Reservation,
    Reveal,
    RoundSetup,
    SiteInfo,
    ValidationReply,
)
from pipeline.site.boundary import Boundary
from pipeline.site.months import record_trained_months, trained_months
from pipeline.site.pins import Pins
from pipeline.site.policy import SitePolicy, disagreement, read_policy
from pipeline.site.scoring import SiteScoring

if TYPE_CHECKING:
    import pyarrow as pa

    from pipeline.strategies.base import SiteHandler


class SiteActor:
    """One hospital. Create with ``ray.remote(SiteActor).options(...).remote(...)``.

    Parameters
    ----------
    site : str
        The site's name in the federation.
    extract : str
        Path of the site's Parquet extract, as seen from the site's node.
    contract_path : str
        The task's contract.
    expected_policy : dict, optional
        The coordinator's view of the site's policy (its config's). The site enforces its
        own policy, from the file beside its extract
        (:func:`pipeline.site.policy.read_policy`); where the two disagree it refuses
        every request and says why.
    before_month : str, optional
        Read only the partitions of follow-up months before this one (YYYY-MM): the
        cohorts whose follow-up has closed. None: every partition.
    test_extract : str, optional
        A Parquet extract of held-out rows the site keeps apart (a later period, or a
        benchmark's published split): the site then trains on every row of `extract` and
        evaluates on these, instead of splitting `extract` by key.
    """

    def __init__(
        self,
        site: str,
        extract: str,
        contract_path: str,
        expected_policy: dict | None = None,
        before_month: str | None = None,
        test_extract: str | None = None,
    ) -> None:
        # Set before any OpenMP runtime loads in this process (XGBoost's is loaded by its
        # worker): a worker blocked in a collective allreduce must sleep, not spin its
        # threads on cores that other sites' workers on the same node need.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.site = site
        self.extract = Path(extract)
        self.test_extract = Path(test_extract) if test_extract else None
        self.contract = load_contract(contract_path)
        identity = load_or_create_identity(self.extract).public_key()
        own = identity.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        pins = Pins(self.extract, (site, own))
        self.boundary = Boundary(site, self.extract, self.contract, SitePolicy(), pins)
        self.expected_policy = expected_policy
        self._read_policy()
        self._validated: tuple[pa.Table, ...] | None = None  # kept by validate for load
        self._handlers: dict[str, SiteHandler] = {}
        self.scoring = SiteScoring(site, self.boundary, self.contract, self.extract)
        self._loaded: tuple[str, ...] = ()  # the months of the current job's rows
        key = self.contract.cohort.partition
        self.window = Window(key, before_month) if key and before_month else None

    def _read_policy(self) -> None:
        """The site's policy as its file says now (the hospital may have edited it since
        the last job), and whether the coordinator's view of it is wrong."""
        policy = read_policy(self.extract)
        self.boundary.policy = policy
        self.boundary.refusal = None
        if self.expected_policy is not None:
            why = disagreement(policy, SitePolicy.model_validate(self.expected_policy))
            self.boundary.refusal = why and (
                f"site {self.site}'s own policy differs from the coordinator's config "
                f"({why}); the site enforces its own"
            )

    # -- the process -------------------------------------------------------------------
    def warm_up(self) -> None:
        """Import what every job's requests read rows with (pyarrow, pandas, the
        validation code; not Great Expectations, not a strategy's libraries): a job calls
        this as it starts, so its first request does not carry the process's start-up.
        Nothing is read and nothing is returned."""
        import pipeline.site.rows  # noqa: F401
        import pipeline.validation.validate  # noqa: F401

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def recycle(self) -> bool:
        """Forget the finished job's rows, so the same process can serve the federation's
        next job without paying again for its start (Ray's worker, Great Expectations'
        import and first run: seconds of CPU per site). What each job released stays
        on record (a finished job cannot release again). Returns False when this process
        should not serve again (a handler said so: it joined native state, such as an
        XGBoost collective, that a broken peer can leave stuck)."""
        for job_id in list(self.boundary.jobs):
            self.finish(job_id)
        self.boundary.rows = self._validated = None
        self._loaded = ()
        self.boundary.audit("recycle", None)
        return self.boundary.reusable

    # -- the site's own ledger ---------------------------------------------------------
    def reserve(
        self,
        job_id: str,
        strategy: str,
        *,
        epsilon: float,
        delta: float,
        collusion_threshold: int = 0,
    ) -> Reservation:
        """Reserve a private job's spend in the site's own ledger, under its own policy and
        budget (:meth:`pipeline.site.boundary.Boundary.reserve`)."""
        return self.boundary.reserve(job_id, strategy, epsilon, delta, collusion_threshold)

    def finish(self, job_id: str) -> JobEnd:
        """The job ended (:meth:`pipeline.site.boundary.Boundary.end_job`); the months a
        job this process served trained on become the site's drift reference."""
        end = self.boundary.end_job(job_id)
        if end.first and self._loaded:
            record_trained_months(self.extract, self._loaded)
        return end

    # -- a strategy's requests ----------------------------------------------------------
    def handle(self, strategy: str, request: str, job_id: str, *args: Any, **kwargs: Any) -> Any:
        """Answer `request` of `strategy`'s site handler for job `job_id`, once the site's
        policy allows the strategy; only the handler's declared requests are reachable."""
        self.boundary.allow(job_id, strategy)
        handler = self._handler(strategy)
        if request not in handler.requests:
            self.boundary.audit("refused", job_id, strategy=strategy, reason="request")
            raise BudgetError(f"site {self.site}: strategy {strategy!r} has no {request!r}")
        return getattr(handler, request)(job_id, *args, **kwargs)

    def _handler(self, strategy: str) -> SiteHandler:
        from pipeline import strategies

        if strategy not in self._handlers:
            cls = strategies.get(strategy).site_handler()
            self._handlers[strategy] = cls(self.boundary, strategy)
        return self._handlers[strategy]

    # -- validation and loading ---------------------------------------------------------
    def validate(
        self,
        job_id: str,
        strategy: str | None = None,
        *,
        unknown_columns: str = "fail",
        min_rows: int = 100,
        leakage_auc: float = 0.98,
        keep: bool = False,
        fresh: bool = False,
    ) -> ValidationReply:
        """Validate the extract here for job `job_id`; only the redacted summary leaves.

        With `strategy` (the one the job will train) the site first checks that its policy
        serves it, so a job it would refuse ends at admission, not mid-training. With
        `keep`, a site whose extract passed keeps the rows it has just validated for the
        job's ``load``: the extract is read once, and the job trains on exactly the rows
        that passed even if a file changes in between. Nothing more is returned. Files
        validated before with nothing changed are answered from the site's validation
        records (:mod:`pipeline.validation.records`) unless `fresh`."""
        from pipeline.validation import validate
        from pipeline.validation.records import ValidationRecords

        self._read_policy()
        self._check_job(job_id, strategy)
        self.boundary.audit("validate", job_id, strategy=strategy or "")
        self._validated = None
        paths = [self.extract] + ([self.test_extract] if self.test_extract else [])
        summary, tables = validate(
            paths,
            self.contract,
            site=self.site,
            unknown_columns=unknown_columns,  # type: ignore[arg-type]
            min_rows=min_rows,
            leakage_auc=leakage_auc,
            write_docs=True,
            window=self.window,
            records=ValidationRecords(self.extract),
            fresh=fresh,
        )
        self.boundary.audit(
            "validated",
            job_id,
            passed=summary.passed,
            validated_files=summary.validated_files,
            recorded_files=summary.recorded_files,
        )
        if keep and strategy is not None and tables is not None:
            self._validated = tables
        return ValidationReply(site=self.site, summary=summary.to_dict())

    def _check_job(self, job_id: str, strategy: str | None) -> None:
        """A request names its job, and the strategy when it serves one: checked against
        the site's policy before anything is read."""
        if strategy is None:
            self.boundary.check_refusal(job_id)
        else:
            self.boundary.allow(job_id, strategy)

    def load(self, job_id: str, strategy: str, test_fraction: float, seed: int) -> SiteInfo:
        """Split the extract by a keyed hash of the patient key, so the split is stable
        across jobs and identical for every strategy (the rows ``validate`` kept are
        split, not read again). A site with a held-out extract trains on
        all of its extract and holds out that file's rows instead."""
        from pipeline import strategies
        from pipeline.site.rows import SplitKey, read_split, split

        self._check_job(job_id, strategy)
        self.boundary.audit(
            "load", job_id, strategy=strategy, test_fraction=test_fraction, seed=seed
        )
        tables, self._validated = self._validated, None
        key = SplitKey(float(test_fraction), int(seed))
        if tables is not None:
            held = tables[1].to_pandas() if len(tables) > 1 else None
            rows = split(tables[0].to_pandas(), self.contract, key, held)
        else:
            rows = read_split(self.extract, self.test_extract, self.contract, key, self.window)
        self.boundary.rows = rows
        train, test = rows
        if len(train) == 0 or len(test) == 0:
            raise DataError(f"site {self.site}: too few rows to split into train and test")
        self._loaded = self._partitions(self.window)
        strategies.get(strategy).site_handler().prepare()
        return SiteInfo(
            site=self.site,
            rows=len(train) + len(test),
            n_train=len(train),
            n_test=len(test),
            partitions=self._loaded,
        )

    def _partitions(self, window: Window | None = None) -> tuple[str, ...]:
        """The values of the contract's partition key among the extract's files (the
        follow-up months it holds): file names, not rows."""
        from pipeline.extract import partition_values

        key = self.contract.cohort.partition
        return partition_values(self.extract, key, window) if key else ()

    def partitions(self, job_id: str, before_month: str) -> PartitionList:
        """The extract's follow-up months: closed (before `before_month`) and open, for
        the run `job_id` (a retraining deciding what to train). File names only: nothing
        is read."""
        self._check_job(job_id, None)
        self.boundary.audit("partitions", job_id, before=before_month)
        values = self._partitions()
        return PartitionList(
            site=self.site,
            closed=tuple(v for v in values if v < before_month),
            open=tuple(v for v in values if v >= before_month),
            node=self.node_id(),
            trained=tuple(trained_months(self.extract)),
        )

    # -- secure aggregation ------------------------------------------------------------
    def identity_key(self) -> str:
        """The site's identity public key (hex), for pinning by the other sites."""
        from pipeline.protocol.identity import public_hex

        return public_hex(load_or_create_identity(self.extract))

    def public_key(self, job_id: str) -> PublicKeyReply:
        """A fresh per-job X25519 key, signed with the site's long-lived identity."""
        from pipeline.protocol.secure_sum import SiteKeys

        self.boundary.check_refusal(job_id)
        keys = SiteKeys.generate(self.site, load_or_create_identity(self.extract))
        self.boundary.keys[job_id] = keys
        self.boundary.audit("public_key", job_id)
        return PublicKeyReply(site=self.site, signed_key=keys.signed_public_key(job_id))

    def secure_setup(
        self, job_id: str, round_: int, *, roster: list, identities: dict[str, str]
    ) -> RoundSetup:
        """Step 1 of a secure-sum round (:class:`pipeline.protocol.secure_sum.SecureSumSite`)."""
        self.boundary.check_refusal(job_id)
        return self.boundary.secure_setup(job_id, round_, roster, identities)

    def secure_confirm(self, job_id: str, round_: int, *, survivors: list[str]) -> Confirmation:
        """Step 3 of a secure-sum round: sign the survivor list, once."""
        self.boundary.check_refusal(job_id)
        return self.boundary.secure_confirm(job_id, round_, survivors)

    def secure_reveal(
        self,
        job_id: str,
        round_: int,
        *,
        survivors: list[str],
        dropped: list[str],
        confirmations: dict[str, Confirmation],
    ) -> Reveal:
        """Step 4 of a secure-sum round: once, for the survivor list a threshold of the
        round's sites signed."""
        self.boundary.check_refusal(job_id)
        return self.boundary.secure_reveal(job_id, round_, survivors, dropped, confirmations)

    # -- evaluation and drift (:mod:`pipeline.site.scoring`) -----------------------------
    def fix_model(
        self, job_id: str, payload: dict, *, compare: list[str] | tuple[str, ...] = ()
    ) -> ModelCommitment:
        """Fix the job's model before anything evaluates it
        (:meth:`~pipeline.site.scoring.SiteScoring.fix_model`)."""
        return self.scoring.fix_model(job_id, payload, compare)

    def evaluate_models(
        self, eval_id: str, models: dict[str, dict], *, secure: dict
    ) -> MaskedEvaluation:
        """Masked evaluation statistics of recorded models on the held-out rows
        (:meth:`~pipeline.site.scoring.SiteScoring.evaluate_models`)."""
        return self.scoring.evaluate_models(eval_id, models, secure)

    def drift(self, drift_id: str, *, secure: dict) -> DriftReply:
        """Masked histograms of the site's own trained and new months
        (:meth:`~pipeline.site.scoring.SiteScoring.drift`)."""
        return self.scoring.drift(drift_id, secure, self._partitions(self.window))
