"""The one-shot DP logistic regression's privacy plan: one objective-perturbation fit per
site (:mod:`pipeline.privacy.objective`), chosen from row counts and the contract only.

Every site's ledger records ``count_epsilon`` (its Laplace-noised count of positives, the
intercept's offset) plus the perturbed objective's epsilon plus, where the federation is
large enough, the recalibration's (:mod:`pipeline.privacy.recalibration`), composed
basically: epsilons add, and the objective and the recalibration take half of ``delta``
each. Each site calibrates its fit's noise from them. A site too small for its epsilon is
named: the noise of its fit is then most of its model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from pipeline.contract import Contract
from pipeline.features import FeatureEncoder
from pipeline.privacy.scales import ONE_SHOT_CLIP_FRACTION, ONE_SHOT_INTERCEPT
from pipeline.strategies.base import check_counts

ONE_SHOT_NOISE_LIMIT = 0.25
COUNT_SHARE = 0.1  # of epsilon, for the site's noisy count of positives (its intercept)


@dataclass(frozen=True)
class DPLogisticPlan:
    """What a one-shot DP logistic regression job releases: one perturbed fit per site.

    Attributes
    ----------
    epsilon, delta : float
        What every site's ledger records: ``count_epsilon`` plus the objective
        perturbation's epsilon at ``delta``.
    count_epsilon : float
        Epsilon of the site's Laplace-noised count of positives (its intercept offset).
    regularization : float
        lambda of the perturbed objective ``sum log-loss + lambda / 2 ||w||^2 + b.w``.
    noise_multiplier : float
        Standard deviation of each coordinate of ``b`` (the per-row gradient bound is 1).
    clip_fraction, intercept : float
        The unit-ball coordinates (:class:`pipeline.privacy.scales.UnitBallCoordinates`).
    noise_to_signal : dict of site -> float
        Expected norm of ``b`` over the site's row count: the noise relative to the
        largest mean gradient the site's rows can have.
    too_small : list of str
        Sites where that exceeds :data:`ONE_SHOT_NOISE_LIMIT`.
    recalibration_epsilon : float
        The recalibration's part of ``epsilon`` (at half of ``delta``; 0: none, and the
        objective has all of ``delta``).
    recalibration_noise_multiplier : float or None
        Noise std of each cell count of the recalibration release (None: none,
        ``recalibration_note`` says why).
    recalibration_share, recalibration_noise_to_signal : float
    recalibration_note : str
    """

    epsilon: float
    delta: float
    count_epsilon: float
    regularization: float
    noise_multiplier: float
    clip_fraction: float
    intercept: float
    noise_to_signal: dict[str, float]
    too_small: list[str]
    recalibration_epsilon: float = 0.0
    recalibration_noise_multiplier: float | None = None
    recalibration_share: float = 0.0
    recalibration_noise_to_signal: float = 0.0
    recalibration_note: str = ""

    @property
    def objective_epsilon(self) -> float:
        return self.epsilon - self.count_epsilon - self.recalibration_epsilon

    @property
    def objective_delta(self) -> float:
        return self.delta / 2 if self.recalibration_epsilon else self.delta

    @property
    def clip(self) -> float:
        """Every row's gradient is bounded by 1: rows are put in the unit ball."""
        return 1.0

    def site_request(self) -> dict[str, float]:
        """What every site's one-shot fit is asked
        (:meth:`~pipeline.strategies.dp_logistic.site.DPLogisticSite.fit_dp_logistic`)."""
        return {
            "epsilon": self.epsilon,
            "delta": self.objective_delta,
            "regularization": self.regularization,
            "count_epsilon": self.count_epsilon,
            "recalibration_epsilon": self.recalibration_epsilon,
            "clip_fraction": self.clip_fraction,
            "intercept": self.intercept,
        }

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        recalibration = (
            f"; recalibration: epsilon {self.recalibration_epsilon:.3g}, sigma "
            f"{self.recalibration_noise_multiplier:.1f}"
            if self.recalibration_noise_multiplier is not None
            else f"; {self.recalibration_note}"
        )
        return (
            f"privacy plan: one perturbed fit per site, lambda {self.regularization:.1f}, "
            f"sigma {self.noise_multiplier:.2f}{recalibration}"
        )


def plan_dp_logistic(
    *, epsilon: float, delta: float, counts: Mapping[str, int], contract: Contract
) -> DPLogisticPlan:
    """Plan a one-shot DP logistic regression from row counts and the contract.

    The regulariser is set where its pull on a weight vector of norm 1 (in the unit-ball
    coordinates) equals the expected norm of the noise, ``lambda = sigma * sqrt(dim)``:
    weaker and the noise moves the weights further than any signal of a few hundred
    rows can (the noise enters as ``(H + lambda I)^-1 b``); stronger and the fit shrinks
    to its first gradient step. sigma itself depends on lambda (the regulariser's share
    of epsilon, :func:`pipeline.privacy.objective.jacobian_epsilon`), so the two are
    found together by fixed-point iteration. Nothing here reads a row.
    """
    from pipeline.privacy.objective import noise_std
    from pipeline.privacy.recalibration import plan_epsilon

    check_counts(counts)
    dim = FeatureEncoder(contract).n_features_out + 1
    count_epsilon = COUNT_SHARE * epsilon
    rows = sum(int(n) for n in counts.values())
    recalibration, recalibration_epsilon, recalibration_sigma = plan_epsilon(
        epsilon=epsilon, delta=delta / 2, rows=rows, sites=len(counts)
    )
    objective_delta = delta / 2 if recalibration.planned else delta
    objective_epsilon = epsilon - count_epsilon - recalibration_epsilon
    regularization = 5.0 * math.sqrt(dim)
    for _ in range(50):
        sigma = noise_std(objective_epsilon, objective_delta, regularization)
        updated = sigma * math.sqrt(dim)
        if abs(updated - regularization) <= 1e-9 * regularization:
            break
        regularization = updated
    sigma = noise_std(objective_epsilon, objective_delta, regularization)
    ratios = {site: sigma * math.sqrt(dim) / int(n) for site, n in counts.items()}
    return DPLogisticPlan(
        epsilon=epsilon,
        delta=delta,
        count_epsilon=count_epsilon,
        regularization=regularization,
        noise_multiplier=sigma,
        clip_fraction=ONE_SHOT_CLIP_FRACTION,
        intercept=ONE_SHOT_INTERCEPT,
        noise_to_signal=ratios,
        too_small=sorted(s for s, r in ratios.items() if r > ONE_SHOT_NOISE_LIMIT),
        recalibration_epsilon=recalibration_epsilon,
        recalibration_noise_multiplier=recalibration_sigma,
        recalibration_share=recalibration.share,
        recalibration_noise_to_signal=recalibration.noise_to_signal,
        recalibration_note=recalibration.reason,
    )
