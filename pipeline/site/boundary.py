"""The site's boundary: what a strategy's site handler may use of its site.

Every request a handler answers is checked here against the site's own policy
(:meth:`Boundary.authorize`), recorded in the site's audit log (:meth:`Boundary.audit`)
and lets its value out through one door (:meth:`Boundary.send`: masked for the secure sum
when the round is one). The rows of the current job live here too, so a handler reads
them only through :meth:`Boundary.train_rows`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.contract import Contract
from pipeline.errors import BudgetError, DataError
from pipeline.extract import beside
from pipeline.privacy.ledger import RELEASED, UNUSED, PrivacyLedger
from pipeline.privacy.releases import JobReleases
from pipeline.protocol.messages import JobEnd, MaskedUpdate, ModelUpdate, Reservation
from pipeline.site.audit import AuditLog
from pipeline.site.policy import SitePolicy
from pipeline.site.trained_models import ModelRecord

if TYPE_CHECKING:
    from pipeline.features import EncodedRows
    from pipeline.protocol.collective_masks import CollectiveMasks
    from pipeline.protocol.secure_sum import (
        Confirmation,
        Reveal,
        RoundSetup,
        SecureSumSite,
        SiteKeys,
    )
    from pipeline.site.pins import Pins


class Boundary:
    """One site's rows, policy, audit log, per-job release records and per-job keys.

    Parameters
    ----------
    name : str
    extract : Path
        The site's extract (its audit log and identity live beside it).
    contract : Contract
    policy : SitePolicy
    pins : Pins
        The site's own pinned identity keys of the federation's sites.
    """

    def __init__(
        self,
        name: str,
        extract: Path,
        contract: Contract,
        policy: SitePolicy,
        pins: Pins,
    ) -> None:
        self.name = name
        self.extract = extract
        self.contract = contract
        self.policy = policy
        self.pins = pins
        self.audit_log = AuditLog(extract, name)
        self.ledger = PrivacyLedger(beside(extract, "ledger.sqlite"))
        self.rows: tuple[EncodedRows, EncodedRows] | None = None  # (train, test)
        self.jobs: dict[str, JobReleases] = {}
        self.models = ModelRecord(extract)
        self.held: dict[str, str] = {}  # job -> digest of a model the site itself holds
        self.keys: dict[str, SiteKeys] = {}
        self.secure: dict[str, SecureSumSite] = {}
        self._weights: dict[str, set[str]] = {}
        self._attempts: dict[str, set[str]] = {}  # collective attempts joined, by job
        self._ended: set[str] = set()
        self.reusable = True
        self.refusal: str | None = None  # why the site refuses every request, if it does

    # -- rows -----------------------------------------------------------------------------
    def train_rows(self) -> EncodedRows:
        return self._split()[0]

    def test_rows(self) -> EncodedRows:
        return self._split()[1]

    def _split(self) -> tuple[EncodedRows, EncodedRows]:
        if self.rows is None:
            raise DataError(f"site {self.name}: extract not loaded")
        return self.rows

    # -- policy and audit ----------------------------------------------------------------
    def audit(self, request: str, job_id: str | None, **params: Any) -> None:
        self.audit_log.write(request, job_id, **params)

    def check_refusal(self, job_id: str | None) -> None:
        """Refuse everything while the coordinator's view of the policy is wrong."""
        if self.refusal:
            self.audit("refused", job_id, reason="policy differs")
            raise BudgetError(self.refusal)

    def allow(self, job_id: str, strategy: str) -> None:
        """The site's policy: which strategies it serves."""
        self.check_refusal(job_id)
        if strategy not in self.policy.strategies:
            self.audit("refused", job_id, strategy=strategy, reason="strategy")
            raise BudgetError(f"site {self.name} refuses strategy {strategy!r} (site policy)")

    def authorize(self, job_id: str, strategy: str, epsilon: float) -> JobReleases:
        """The site's policy applied to a request (the strategy, epsilon per job, and for
        a private request a reservation in the site's own ledger, settled as released
        before any noise is drawn); the job's release record, made at its first request."""
        self.allow(job_id, strategy)
        self._check_epsilon(job_id, strategy, epsilon)
        if job_id not in self.jobs and epsilon == 0:
            self._count_nonprivate(job_id, strategy)
        job = self.jobs.setdefault(job_id, JobReleases(self.name, job_id, strategy, epsilon))
        if job.strategy != strategy or epsilon > job.epsilon + 1e-12:
            self.audit("refused", job_id, strategy=strategy, reason="job changed")
            raise BudgetError(f"site {self.name}: job {job_id} changed its strategy or epsilon")
        if epsilon > 0:
            reserved = self.ledger.entries_of(job_id, self.name)
            if (
                reserved is None
                or reserved["status"] == UNUSED
                or reserved["epsilon"] + 1e-12 < epsilon
            ):
                self.audit("refused", job_id, strategy=strategy, reason="no reservation")
                raise BudgetError(
                    f"site {self.name}: job {job_id} holds no reservation of epsilon "
                    f"{epsilon:g} in the site's own ledger"
                )
            if reserved["status"] != RELEASED:
                self.ledger.settle(job_id, self.name, RELEASED)
        return job

    def _check_epsilon(self, job_id: str, strategy: str, epsilon: float) -> None:
        if epsilon > self.policy.max_epsilon_per_job + 1e-12:
            self.audit("refused", job_id, strategy=strategy, epsilon=epsilon, reason="epsilon")
            raise BudgetError(
                f"site {self.name} refuses epsilon {epsilon:g} per job "
                f"(site policy allows at most {self.policy.max_epsilon_per_job:g})"
            )

    def _count_nonprivate(self, job_id: str, strategy: str) -> None:
        """The policy's cap on non-private jobs in 24 hours, counted in the audit log: each
        such job's answers leave no noise to bound what many of them reveal together."""
        cap = self.policy.max_nonprivate_jobs_per_day
        if cap is not None and self.audit_log.count("nonprivate_job", since_s=86_400) >= cap:
            self.audit("refused", job_id, strategy=strategy, reason="non-private cap")
            raise BudgetError(
                f"site {self.name} serves at most {cap} non-private jobs a day (site policy)"
            )
        self.audit("nonprivate_job", job_id, strategy=strategy)

    def collective(
        self, job_id: str, mode: str, sites: list[str], attempt: str
    ) -> CollectiveMasks | None:
        """The site's terms for joining an attempt of the job's XGBoost collective, and
        the attempt's masks. Under its policy's secure aggregation only a ``secure``
        collective (every SUM masked by the site's relay), of at least its `min_roster`
        sites of the job's verified roster, each attempt once; None: a collective in the
        clear, which the policy allows."""
        from pipeline.protocol.collective_masks import CollectiveMasks

        if mode != "secure":
            if self.policy.secure_aggregation:
                self.audit("refused", job_id, reason="clear collective", mode=mode)
                raise BudgetError(
                    f"site {self.name} joins only a secure XGBoost collective (site policy: "
                    f"secure_aggregation); under {mode or 'this communicator'} its "
                    "histograms would leave it in the clear"
                )
            return None
        session = self.secure.get(job_id)
        if session is None:
            raise DataError(
                f"site {self.name}: job {job_id} has no verified key roster (its secure sum "
                "sets one up first)"
            )
        joined = self._attempts.setdefault(job_id, set())
        if attempt in joined:
            self.audit("refused", job_id, reason="attempt again", attempt=attempt)
            raise BudgetError(f"site {self.name}: job {job_id} already ran attempt {attempt}")
        joined.add(attempt)
        return CollectiveMasks(
            session.keys, session.roster, sites, attempt, min_sites=self.policy.min_roster
        )

    def check_roster(self, job_id: str, sites: int | None) -> None:
        """A sum this site's values enter covers at least its `min_roster` sites (with two,
        each learns the other's part from the sum); None: the communicator does not say
        (rabit, inside one trusted cluster)."""
        if sites is not None and sites < self.policy.min_roster:
            self.audit("refused", job_id, reason="roster", sites=sites)
            raise BudgetError(
                f"site {self.name} takes part only in sums of at least "
                f"{self.policy.min_roster} sites (site policy); this one has {sites}"
            )

    # -- the site's own ledger ---------------------------------------------------------------
    def reserve(
        self, job_id: str, strategy: str, epsilon: float, delta: float, collusion_threshold: int
    ) -> Reservation:
        """Reserve a private job's planned spend in the site's own ledger, or refuse: the
        strategy or epsilon outside the site's policy, or more than its budget has left
        (whatever the coordinator's ledger says)."""
        self.allow(job_id, strategy)
        self._check_epsilon(job_id, strategy, epsilon)
        budget = self.policy.epsilon_budget
        try:
            self.ledger.reserve(
                job_id, {self.name: (epsilon, delta)}, {self.name: budget}, strategy
            )
        except BudgetError as exc:
            self.audit("refused", job_id, strategy=strategy, epsilon=epsilon, reason="budget")
            raise BudgetError(f"site {self.name}'s own ledger refuses: {exc}") from exc
        self.jobs.setdefault(job_id, JobReleases(self.name, job_id, strategy, epsilon))
        self.audit("reserve", job_id, strategy=strategy, epsilon=epsilon, delta=delta)
        return Reservation(
            site=self.name,
            epsilon=epsilon,
            remaining=self.ledger.remaining(self.name, budget),
            shares=self.accepts_shares(collusion_threshold),
        )

    def end_job(self, job_id: str) -> JobEnd:
        """A job ended, or its coordinator was killed and the next run says so: a
        reservation no noise was drawn under is given back, a released one stays spent,
        and the job's temporary files (keys, certificates) on this machine go.

        Safe to ask of any job, whoever asks: what it gives back was never released, and a
        job given back can release nothing afterwards (:meth:`authorize` refuses it)."""
        from pipeline.scratch import remove_scratch

        live = job_id in self.jobs
        first = job_id not in self._ended
        self._ended.add(job_id)
        row = self.ledger.entries_of(job_id, self.name)
        spend = None if row is None else self.ledger.settle(job_id, self.name, UNUSED)
        if row is not None and row["status"] != spend:
            self.audit("refund", job_id)
        removed = len(remove_scratch(job_id))
        if first:
            self.audit("job_end", job_id, orphaned=not live, spend=spend or "none", files=removed)
        return JobEnd(site=self.name, job_id=job_id, spend=spend, first=first and live)

    # -- the job's model -------------------------------------------------------------------
    def fix_model(self, job_id: str, digest: str) -> None:
        """Fix `job_id`'s model (by digest) before it is evaluated: once, for a job this
        site trained in, and, where the site holds the model itself (an XGBoost worker's
        booster), only that model."""
        why = None
        fixed = self.models.of_job(job_id)
        if job_id not in self.jobs:
            why = "it fixes only the model of a job it trained in"
        elif job_id in self.held and self.held[job_id] != digest:
            why = "it is not the model the site's own worker trained"
        elif fixed is not None and fixed != digest:
            why = "the job's model was fixed already"
        if why is not None:
            self.audit("refused", job_id, reason="model", digest=digest[:16])
            raise BudgetError(f"site {self.name} refuses the job's model: {why}")
        if fixed is None:
            self.models.fix(job_id, self.jobs[job_id].strategy, digest)
            self.audit("fix_model", job_id, digest=digest[:16])

    def accepts_shares(self, collusion_threshold: int) -> bool:
        return self.policy.accepts_shares(collusion_threshold)

    def not_reusable(self) -> None:
        self.reusable = False

    # -- the way out ----------------------------------------------------------------------
    def answer_once_at(self, job_id: str, weights: np.ndarray) -> None:
        """A site computes a job's statistics at given weights once: asked again at the
        same weights (a sum without one site, to subtract from one with it), it refuses."""
        import hashlib

        digest = hashlib.sha256(np.ascontiguousarray(weights, dtype=np.float64)).hexdigest()
        seen = self._weights.setdefault(job_id, set())
        if digest in seen:
            self.audit("refused", job_id, reason="same weights")
            raise BudgetError(
                f"site {self.name}: job {job_id} already had an answer at these weights"
            )
        seen.add(digest)

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
        """`vector` with the row count it covers: masked (the count as its last entry)
        when the round is a secure sum, else in the clear where the site's policy allows
        it or the value is a `private` release (noised and charged in the site's ledger).
        `min_sites`: the fewest sites whose sum this release may be revealed in."""
        if secure is None:
            self.audit("release", job_id, private=private)
            if self.policy.secure_aggregation and not private:
                self.audit("refused", job_id, reason="not masked")
                raise BudgetError(
                    f"site {self.name} releases only through secure aggregation (site "
                    "policy), and this request has none"
                )
            return ModelUpdate(site=self.name, vector=vector, n=n)
        return self.masked(job_id, np.append(vector, n), secure, min_sites=min_sites)

    def masked(
        self, job_id: str, vector: np.ndarray, secure: dict, *, min_sites: int = 0
    ) -> MaskedUpdate:
        """`vector` as this site's input to round ``secure["round"]`` of the job's secure
        sum (:class:`pipeline.protocol.secure_sum.SecureSumSite`): once per round, among
        the sites whose round keys verify against this site's pins."""
        session = self._session(job_id)
        round_ = int(secure["round"])
        masked = session.mask(
            round_,
            vector,
            secure["keys"],
            secure["shares"].get(self.name, {}),
            min_survivors=min_sites,
        )
        self.audit("masked", job_id, round=round_, roster=",".join(sorted(secure["keys"])))
        return MaskedUpdate(site=self.name, masked=masked)

    # -- the secure sum's own steps -------------------------------------------------------
    def secure_setup(
        self, job_id: str, round_: int, roster: list, identities: dict[str, str]
    ) -> RoundSetup:
        """Step 1 of a round. The job's roster is verified at its first round against the
        site's own pins (a site not yet pinned is pinned now, trust on first use, where
        the policy allows; a pinned one is never replaced by what a request offers)."""
        from pipeline.protocol.secure_sum import SecureSumSite, verify_roster

        if job_id not in self.secure:
            if job_id not in self.keys:
                raise DataError(f"site {self.name}: no keys for {job_id}; ask public_key first")
            pinned = self.pins.resolve(identities, self.policy.trust_on_first_use, self.audit)
            verified = verify_roster(roster, pinned, job_id)
            self.secure[job_id] = SecureSumSite(
                self.keys[job_id], verified, min_roster=self.policy.min_roster
            )
        session = self.secure[job_id]
        offered = {entry.site: bytes(entry.public_key) for entry in roster}
        if offered != dict(session.roster.public_keys):
            self.audit("refused", job_id, round=round_, reason="roster changed")
            raise BudgetError(f"site {self.name}: job {job_id}'s roster changed between rounds")
        setup = session.setup(round_)
        self.audit("secure_setup", job_id, round=round_, roster=",".join(session.roster.sites))
        return setup

    def secure_confirm(self, job_id: str, round_: int, survivors: list[str]) -> Confirmation:
        """Step 3 of a round: sign the survivor list, once."""
        confirmation = self._session(job_id).confirm(round_, survivors)
        self.audit("secure_confirm", job_id, round=round_, survivors=",".join(survivors))
        return confirmation

    def secure_reveal(
        self,
        job_id: str,
        round_: int,
        survivors: list[str],
        dropped: list[str],
        confirmations: dict[str, Confirmation],
    ) -> Reveal:
        """Step 4 of a round: once, for the survivor list a threshold of sites signed."""
        reveal = self._session(job_id).reveal(round_, survivors, dropped, confirmations)
        self.audit(
            "secure_reveal",
            job_id,
            round=round_,
            survivors=",".join(survivors),
            dropped=",".join(dropped),
        )
        return reveal

    def _session(self, job_id: str) -> SecureSumSite:
        if job_id not in self.secure:
            raise DataError(f"site {self.name}: job {job_id} has no secure-sum round set up")
        return self.secure[job_id]
