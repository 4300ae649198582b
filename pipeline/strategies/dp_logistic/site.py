"""A site's side of the one-shot DP logistic regression: one perturbed fit, released once
per job."""

from __future__ import annotations

import math

from pipeline.errors import BudgetError
from pipeline.protocol.messages import MaskedUpdate, ModelUpdate
from pipeline.strategies.recalibration import RecalibrationSite


class DPLogisticSite(RecalibrationSite):
    requests = RecalibrationSite.requests | {"fit_dp_logistic"}

    def fit_dp_logistic(
        self,
        job_id: str,
        *,
        epsilon: float,
        delta: float,
        regularization: float,
        count_epsilon: float,
        clip_fraction: float,
        intercept: float,
        recalibration_epsilon: float = 0.0,
    ) -> ModelUpdate | MaskedUpdate:
        """One-shot DP logistic regression (:mod:`pipeline.privacy.objective`): the
        site's count of positives, Laplace-noised at `count_epsilon`, sets the intercept's
        offset; then the objective, perturbed by Gaussian noise that the site calibrates
        itself from the rest of `epsilon` (less the job's `recalibration_epsilon`, which
        its later recalibration release spends), `delta` and `regularization`, is minimised on
        its rows in the contract's unit-ball coordinates (`clip_fraction`, `intercept`:
        :class:`pipeline.privacy.scales.UnitBallCoordinates`). Released once per job, as
        weights over the encoder's columns."""
        from pipeline.privacy.objective import noisy_positive_count, perturbed_logistic
        from pipeline.privacy.scales import UnitBallCoordinates

        rows = self.site.train_rows()
        job = self.site.authorize(job_id, self.strategy, epsilon)
        if job.released >= 1:
            raise BudgetError(f"site {self.site.name}: job {job_id} already released its model")
        objective_epsilon = epsilon - count_epsilon - recalibration_epsilon
        if not (count_epsilon > 0 and recalibration_epsilon >= 0 and objective_epsilon > 0):
            raise BudgetError(
                f"site {self.site.name}: the count's and recalibration's epsilon must leave "
                "the fit some of the job's"
            )
        coords = UnitBallCoordinates.from_contract(
            self.site.contract, clip_fraction=clip_fraction, intercept=intercept
        )
        job.released += 1
        positives = noisy_positive_count(rows.y, count_epsilon)
        offset = math.log(positives / (len(rows.y) - positives))
        w = perturbed_logistic(
            coords.rows(rows.linear),
            rows.y,
            epsilon=objective_epsilon,
            delta=delta,
            regularization=regularization,
            offset=offset,
        )
        self.site.audit(
            "fit_dp_logistic", job_id, epsilon=epsilon, delta=delta, regularization=regularization
        )
        vector = coords.to_encoder_weights(w, offset)
        return self.site.send(job_id, vector, len(rows.y), None, private=True)
