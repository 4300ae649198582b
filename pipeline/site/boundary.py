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
from pipeline.privacy.releases import JobReleases
from pipeline.protocol.messages import MaskedUpdate, ModelUpdate
from pipeline.site.audit import AuditLog
from pipeline.site.policy import SitePolicy

if TYPE_CHECKING:
    from pipeline.features import EncodedRows
    from pipeline.protocol.secure_sum import SiteKeys


class Boundary:
    """One site's rows, policy, audit log, per-job release records and per-job keys.

    Parameters
    ----------
    name : str
    extract : Path
        The site's extract (its audit log and identity live beside it).
    contract : Contract
    policy : SitePolicy
    pinned : dict of site -> bytes
        Pinned identity keys of the federation's sites; empty: taken from each round's
        request (trust on first use).
    """

    def __init__(
        self,
        name: str,
        extract: Path,
        contract: Contract,
        policy: SitePolicy,
        pinned: dict[str, bytes],
    ) -> None:
        self.name = name
        self.extract = extract
        self.contract = contract
        self.policy = policy
        self.pinned = pinned
        self.audit_log = AuditLog(extract, name)
        self.rows: tuple[EncodedRows, EncodedRows] | None = None  # (train, test)
        self.jobs: dict[str, JobReleases] = {}
        self.keys: dict[str, SiteKeys] = {}
        self.reusable = True

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

    def allow(self, job_id: str, strategy: str) -> None:
        """The site's policy: which strategies it serves."""
        if strategy not in self.policy.strategies:
            self.audit("refused", job_id, strategy=strategy, reason="strategy")
            raise BudgetError(f"site {self.name} refuses strategy {strategy!r} (site policy)")

    def authorize(self, job_id: str, strategy: str, epsilon: float) -> JobReleases:
        """The site's policy applied to a request (the strategy, epsilon per job); the
        job's release record, made at its first request."""
        self.allow(job_id, strategy)
        if epsilon > self.policy.max_epsilon_per_job + 1e-12:
            self.audit("refused", job_id, strategy=strategy, epsilon=epsilon, reason="epsilon")
            raise BudgetError(
                f"site {self.name} refuses epsilon {epsilon:g} per job "
                f"(site policy allows at most {self.policy.max_epsilon_per_job:g})"
            )
        return self.jobs.setdefault(job_id, JobReleases(self.name, job_id, strategy, epsilon))

    def accepts_shares(self, collusion_threshold: int) -> bool:
        return self.policy.accepts_shares(collusion_threshold)

    def not_reusable(self) -> None:
        self.reusable = False

    # -- the way out ----------------------------------------------------------------------
    def send(
        self, job_id: str, vector: np.ndarray, n: int, secure: dict | None
    ) -> ModelUpdate | MaskedUpdate:
        """`vector` with the row count it covers: masked (the count as its last entry)
        when the round is a secure sum, else in the clear."""
        if secure is None:
            return ModelUpdate(site=self.name, vector=vector, n=n)
        return self.masked(job_id, np.append(vector, n), secure)

    def masked(self, job_id: str, vector: np.ndarray, secure: dict) -> MaskedUpdate:
        """`vector` masked for the secure sum of `secure`'s round, under the job's keys
        (:meth:`pipeline.site.actor.SiteActor.public_key`) and a roster checked against
        the pinned identities."""
        from pipeline.protocol.secure_sum import mask_update, verify_roster

        pinned = self.pinned or {k: bytes.fromhex(v) for k, v in secure["pinned"].items()}
        roster = verify_roster(secure["roster"], pinned, job_id)
        masked = mask_update(
            vector, self.keys[job_id], roster, job_id, secure["round"], secure["attempt"]
        )
        return MaskedUpdate(site=self.name, masked=masked)
