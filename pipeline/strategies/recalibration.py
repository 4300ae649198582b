"""The private strategies' recalibration stage: both sides of its one release.

After training, the coordinator picks the cells from the model alone
(:class:`pipeline.privacy.recalibration.Cells`) and asks every site once for its noisy
per-cell label counts on its training rows, through the secure sum when the job uses it;
it fits Platt's slope and intercept on the sum and returns the recalibrated weights. The
held-out rows the gate judges on never enter: a site counts only the rows of the job's
training split. The noise and its cost are the plan's, reserved in the ledger with the
rest of the job before any noise exists.
"""

from __future__ import annotations

import math
from typing import ClassVar, Protocol

import numpy as np

from pipeline.errors import BudgetError, DataError
from pipeline.federation.rounds import SecureSession, summed_release
from pipeline.privacy.recalibration import Cells, fit
from pipeline.privacy.releases import Declared
from pipeline.protocol.messages import MaskedUpdate, ModelUpdate
from pipeline.strategies.base import SiteHandler, TrainingJob

REQUEST = "recalibration_counts"
KIND = "recalibration"  # the kind of release a job declares
SUM_ROUND = 2**32 + 1  # the secure-sum round number of a job's recalibration
MAX_CELLS = 64


class RecalibrationPlan(Protocol):
    """What a private strategy's plan says of its recalibration."""

    epsilon: float
    recalibration_noise_multiplier: float | None  # None: none (the note says why)
    recalibration_note: str


def recalibrated(
    job: TrainingJob,
    weights: np.ndarray,
    plan: RecalibrationPlan,
    *,
    scales: np.ndarray,
    centres: np.ndarray,
    secure: SecureSession | None,
) -> np.ndarray:
    """The model's weights after the plan's recalibration; as they are, the run saying
    why, where the plan has none. `scales` and `centres` are the encoded columns' (the
    job's released scales, or the contract's), which place the cells around the model's
    log-odds."""
    if plan.recalibration_noise_multiplier is None:
        job.tracker.params({"recalibration": plan.recalibration_note or "none"})
        return weights
    noise_multiplier = plan.recalibration_noise_multiplier
    cells = Cells.around(weights, scales, centres)
    job.say("recalibrating on the sites' training rows (one private release)")
    ask = job.asker(
        REQUEST,
        job.job_id,
        np.asarray(weights, dtype=np.float64),
        epsilon=plan.epsilon,
        noise_multiplier=noise_multiplier,
        **cells.as_request(),
    )
    total, _, summed = summed_release(
        job.runtime, secure, SUM_ROUND, job.quorum, ask, stage="recalibration"
    )
    recalibration = fit(total, cells, noise_multiplier * math.sqrt(len(summed)))
    job.tracker.params(
        {
            "recalibration_slope": recalibration.slope,
            "recalibration_intercept": recalibration.intercept,
            "recalibration_centre": recalibration.centre,
        }
    )
    return recalibration.apply(weights)


class RecalibrationSite(SiteHandler):
    """A private strategy's site side of the recalibration: one release per job, after
    the job trained, of the rows of its training split only."""

    requests: ClassVar[frozenset[str]] = frozenset({REQUEST})

    def recalibration_counts(
        self,
        job_id: str,
        weights: np.ndarray,
        *,
        epsilon: float,
        noise_multiplier: float,
        centre: float,
        half_width: float,
        cells: int,
        secure: dict | None = None,
    ) -> ModelUpdate | MaskedUpdate:
        """Per cell of the model's log-odds (`weights` over the encoded columns), the
        count of the training rows' negatives and positives, plus Gaussian noise of std
        `noise_multiplier` on each (a row is in one count: sensitivity 1)."""
        from pipeline.privacy.mechanisms import noisy_clipped_sum

        rows = self.site.train_rows()
        job = self.site.authorize(job_id, self.strategy, epsilon)
        if KIND in job.declared or job.released == 0:
            self.site.audit("refused", job_id, reason="recalibration")
            raise BudgetError(
                f"site {self.site.name}: job {job_id} recalibrates once, after it trained"
            )
        if not (noise_multiplier > 0 and 2 <= int(cells) <= MAX_CELLS):
            raise DataError(
                f"site {self.site.name}: a recalibration needs noise and 2 to {MAX_CELLS} cells"
            )
        w = np.asarray(weights, dtype=np.float64)
        X = rows.linear
        if w.shape != (X.shape[1] + 1,) or not np.all(np.isfinite(w)):
            raise DataError(f"site {self.site.name}: recalibration weights of the wrong shape")
        grid = Cells(float(centre), float(half_width), int(cells))
        job.hold_to(KIND, Declared(noise_multiplier, 1.0, 1))
        counts = noisy_clipped_sum(grid.one_hot(X @ w[:-1] + w[-1], rows.y), 1.0, noise_multiplier)
        self.site.audit(REQUEST, job_id, strategy=self.strategy, noise_multiplier=noise_multiplier)
        return self.site.send(job_id, counts, len(rows), secure, private=True)
