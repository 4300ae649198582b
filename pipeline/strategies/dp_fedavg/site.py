"""A site's side of DP-FedAvg: the job's one feature-scale release, then one clipped,
noised gradient sum per round, each held to what the job declared at its first release.

With distributed noise (:mod:`pipeline.privacy.distributed`) a site whose policy accepts
the job's collusion threshold adds only its share of a release's noise, and only into a
secure sum of enough sites to hold that many honest shares.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import BudgetError
from pipeline.privacy.releases import Declared, JobReleases
from pipeline.privacy.scales import row_deviations
from pipeline.protocol.messages import MaskedUpdate, ModelUpdate
from pipeline.strategies.dp_fedavg.gradient import (
    per_example_gradients,
    poisson_sample,
    standardized,
)
from pipeline.strategies.recalibration import RecalibrationSite

GRADIENT, SCALES = "gradient", "deviation"  # the kinds of release a job declares


def noisy_release(
    per_example: np.ndarray, bound: float, noise_multiplier: float, shares: int
) -> np.ndarray:
    """The clipped sum of `per_example` with the site's noise: all of a release's, or its
    share of it (a discrete Gaussian on the secure sum's grid)."""
    from pipeline.privacy.distributed import noisy_clipped_share
    from pipeline.privacy.mechanisms import noisy_clipped_sum

    if shares > 1:
        return noisy_clipped_share(per_example, bound, noise_multiplier, shares)
    return noisy_clipped_sum(per_example, bound, noise_multiplier)


class DPFedAvgSite(RecalibrationSite):
    requests = RecalibrationSite.requests | {"logistic_gradient", "release_deviation"}

    def logistic_gradient(
        self,
        job_id: str,
        weights: np.ndarray,
        *,
        epsilon: float,
        clip: float | None,
        noise_multiplier: float,
        rounds: int,
        round_: int,
        secure: dict | None = None,
        column_scale: np.ndarray | None = None,
        column_centre: np.ndarray | None = None,
        sampling_rate: float = 1.0,
        noise_shares: int = 1,
        collusion_threshold: int = 0,
    ) -> ModelUpdate | MaskedUpdate:
        """Sum of per-example log-loss gradients at `weights` (DP-SGD style, Abadi et al.
        2016): each example's gradient clipped to `clip`, Gaussian noise of std
        noise_multiplier * clip added once per round, for at most the `rounds` the job
        declared at its first release.

        With `column_scale` (from the job's private scale release) and `column_centre`
        (from the contract) the gradient is taken, clipped and noised in standardized
        coordinates, where `weights` then live. With `sampling_rate` below 1 each row
        takes part with that probability (:func:`poisson_sample`). With `noise_shares`
        above 1 the site adds only its share of the noise if its policy accepts."""
        rows = self.site.train_rows()
        job = self.site.authorize(job_id, self.strategy, epsilon)
        if job.released >= rounds:
            raise BudgetError(
                f"site {self.site.name}: job {job_id} asked for more rounds "
                f"than it declared ({rounds})"
            )
        shares = self._accepted_shares(noise_shares, collusion_threshold, secure)
        job.hold_to(GRADIENT, Declared(noise_multiplier, clip, rounds, *shares))
        X, y = standardized(rows.linear, column_centre, column_scale), rows.y
        if sampling_rate < 1.0:
            taken = poisson_sample(len(y), sampling_rate)
            X, y = X[taken], y[taken]
        per_example = per_example_gradients(X, y, np.asarray(weights, dtype=np.float64))
        if noise_multiplier > 0:
            vector = noisy_release(per_example, clip, noise_multiplier, shares[0])
        else:
            vector = per_example.sum(axis=0)
        job.released += 1
        self.site.audit(
            "logistic_gradient",
            job_id,
            round=round_,
            strategy=self.strategy,
            noise_multiplier=noise_multiplier,
            noise_shares=shares[0],
        )
        return self._send(job, GRADIENT, vector, len(rows), secure)

    def release_deviation(
        self,
        job_id: str,
        *,
        epsilon: float,
        noise_multiplier: float,
        bound: float,
        secure: dict | None = None,
        noise_shares: int = 1,
        collusion_threshold: int = 0,
    ) -> ModelUpdate | MaskedUpdate:
        """The job's one feature-scale release: the sum over training rows of each numeric
        column's absolute encoded value and of the (weighted) label, every row's vector
        clipped to `bound`, plus Gaussian noise of std noise_multiplier * bound
        (:mod:`pipeline.privacy.scales`). Allowed once per job, before any gradient
        round. `noise_shares` as for the gradient."""
        rows = self.site.train_rows()
        job = self.site.authorize(job_id, self.strategy, epsilon)
        if job.released > 0 or SCALES in job.declared:
            raise BudgetError(
                f"site {self.site.name}: job {job_id} has its feature scales already, or "
                "asked for them after training"
            )
        shares = self._accepted_shares(noise_shares, collusion_threshold, secure)
        job.hold_to(SCALES, Declared(noise_multiplier, bound, 1, *shares))
        deviations = row_deviations(rows.linear, rows.y, self.site.contract)
        vector = noisy_release(deviations, bound, noise_multiplier, shares[0])
        self.site.audit(
            "release_deviation",
            job_id,
            strategy=self.strategy,
            noise_multiplier=noise_multiplier,
            noise_shares=shares[0],
        )
        return self._send(job, SCALES, vector, len(rows), secure)

    # -- distributed noise ------------------------------------------------------------
    def _accepted_shares(
        self, noise_shares: int, collusion_threshold: int, secure: dict | None
    ) -> tuple[int, int]:
        """(shares, collusion threshold) this site splits a release's noise by: the job's,
        when the site's policy accepts the job's threshold; otherwise (1, 0), the full
        noise."""
        shares = int(noise_shares)
        if shares <= 1 or not self.site.accepts_shares(collusion_threshold):
            shares, collusion_threshold = 1, 0
        self._check_share_round(shares, collusion_threshold, secure)
        return shares, collusion_threshold

    def _check_share_round(self, shares: int, threshold: int, secure: dict | None) -> None:
        """A share of the noise goes only into a secure sum of at least shares + threshold
        sites: fewer, and the sum may hold fewer than `shares` honest shares."""
        if shares <= 1:
            return
        if secure is None:
            raise BudgetError(
                f"site {self.site.name}: a share of the noise is released only through "
                "secure aggregation, and this request has none"
            )
        if len(secure["keys"]) < shares + threshold:
            raise BudgetError(
                f"site {self.site.name}: its share of the noise needs a round of at least "
                f"{shares + threshold} sites ({shares} shares, tolerating {threshold} "
                f"colluding), this one has {len(secure['keys'])}"
            )

    def _send(
        self, job: JobReleases, kind: str, vector: np.ndarray, n: int, secure: dict | None
    ) -> ModelUpdate | MaskedUpdate:
        """A release with the site's row count; a share of the noise is checked against
        the round it is sent in, and is revealed only in a sum of enough sites (a site
        may drop out after its input)."""
        declared = job.declared[kind]
        self._check_share_round(declared.noise_shares, declared.collusion_threshold, secure)
        least = declared.noise_shares + declared.collusion_threshold
        return self.site.send(job.job_id, vector, n, secure, min_sites=least)
