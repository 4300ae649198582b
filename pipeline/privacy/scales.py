"""The geometry private training works in: per-column scales of the contract encoding.

Gaussian noise is isotropic in the coordinates the gradients are clipped in, so how the
columns are centred and scaled decides how much of the noise lands on each feature and
how well a few noisy steps converge. The contract
encoding (:class:`pipeline.features.FeatureEncoder`) divides a numeric value by its
declared range, which is several times its typical spread, so on few rows the noise buries
exactly the numeric features. Standardising each column (Hessian preconditioning by the
feature variances) removes that, but a variance read from the data is not private. Here
the spread of each numeric column is *released* privately instead: every site sends the
Gaussian-noised, clipped sum of its rows' absolute deviations from the contract's typical
value, once, charged in the same accountant as the training rounds (the DP-FedAvg plan,
:mod:`pipeline.strategies.dp_fedavg.plan`, budgets it), and the coordinator turns the sums into
scales. Binary columns (one-hot categories, booleans, missing flags) take the spread of a
balanced binary, 1/2, from the contract alone, and are centred on their balanced value
(1/k for a category of k levels, 1/2 for a boolean, 0 for a missing flag): uncentred 0/1
columns all lean on the intercept, and a gradient step then mostly trades the intercept
against them instead of learning (centring is LeCun et al. 1998's "Efficient BackProp"
advice for gradient descent, with the centre taken from the contract, not the data).

- Sites compute :func:`row_deviations` and release their clipped sum with
  :func:`pipeline.privacy.mechanisms.noisy_clipped_sum`. The same vector carries the
  label, so the release also gives a private count of positives: training starts from
  the log-odds of the pooled prevalence (:func:`released_log_odds`) instead of 0, and does
  not spend its first rounds moving the intercept.
- The coordinator post-processes the noisy sums with :func:`column_scales` (free: a
  function of a private release); :func:`column_centres` needs no release. No scale is
  ever a bound for clipping: clipping bounds stay fixed by the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.contract import Contract, Feature
from pipeline.features import LEVEL, VALUE, encoded_columns

BINARY_SCALE = 0.5  # standard deviation of a balanced 0/1 column
DEVIATION_BOUND = 0.15  # per numeric feature, in units of its declared range
_MIN_DEVIATION = 1.0 / 64  # a spread below 1/64 of the range is taken as 1/64
_MAD_TO_SD = math.sqrt(math.pi / 2)  # SD / mean absolute deviation of a normal variable


def numeric_columns(contract: Contract) -> np.ndarray:
    """Which columns of the contract encoding hold a numeric feature's value."""
    return np.array(
        [role == VALUE and f.kind == "numeric" for f, role, _ in encoded_columns(contract)],
        dtype=bool,
    )


def deviation_bound(contract: Contract) -> float:
    """L2 bound on one row's release vector (its clipping bound, so its sensitivity):
    :data:`DEVIATION_BOUND` per numeric feature and for the label, from the contract."""
    return DEVIATION_BOUND * math.sqrt(int(numeric_columns(contract).sum()) + 1)


def row_deviations(X: np.ndarray, y: np.ndarray, contract: Contract) -> np.ndarray:
    """Per row, the absolute encoded value of every numeric column (its distance from the
    contract's typical value in units of the declared range), then the label times
    :data:`DEVIATION_BOUND`: the vector a site sums for the scale release."""
    deviations = np.abs(np.asarray(X, dtype=np.float64)[:, numeric_columns(contract)])
    label = DEVIATION_BOUND * np.asarray(y, dtype=np.float64)[:, None]
    return np.hstack([deviations, label])


def column_scales(contract: Contract, noisy_sum: np.ndarray | None, rows: int) -> np.ndarray:
    """Scale of every encoded column from the pooled noisy deviation sums over `rows`
    rows: for numeric columns the mean absolute deviation times sqrt(pi/2) (the standard
    deviation, for a normal variable), never below 1/64 of the range; 1/2 for binary
    columns. With no release (a contract without numeric features) every column is 1/2.

    Dividing encoded rows by these scales gives the coordinates private training clips
    and adds noise in.
    """
    numeric = numeric_columns(contract)
    scales = np.full(len(numeric), BINARY_SCALE)
    if numeric.any():
        if noisy_sum is None:
            raise ValueError("numeric columns need the released deviation sums")
        mean = np.asarray(noisy_sum, dtype=np.float64)[:-1] / max(int(rows), 1)
        scales[numeric] = np.maximum(mean, _MIN_DEVIATION) * _MAD_TO_SD
    return scales


def released_log_odds(noisy_sum: np.ndarray, rows: int) -> float:
    """Log-odds of the pooled prevalence from the release's noisy label sum (the count of
    positives is kept at least one from 0 and from `rows`)."""
    rows = max(int(rows), 1)
    positives = float(noisy_sum[-1]) / DEVIATION_BOUND
    positives = min(max(positives, 1.0), rows - 1.0) if rows > 1 else 0.5
    return math.log(positives / (rows - positives))


def column_centres(contract: Contract) -> np.ndarray:
    """Centre of every encoded column before scaling, from the contract alone: 0 for
    numeric columns (already centred on the contract's typical value) and missing flags,
    1/k for each column of a k-level category, 1/2 for a boolean."""
    return np.array([_centre(f, role) for f, role, _ in encoded_columns(contract)])


def _centre(f: Feature, role: str) -> float:
    if role == LEVEL:
        return 1.0 / len(f.categories or [])
    return 0.5 if role == VALUE and f.kind == "boolean" else 0.0


def standardized_sq_norm(contract: Contract) -> float:
    """Typical squared norm of a row in standardized, centred coordinates, with the
    intercept: one per numeric feature (a standard deviation), 4 (1 - 1/k) per k-level
    category (one column at (1 - 1/k) / (1/2), the others at -(1/k) / (1/2)), one per
    boolean, one for the intercept; missing flags taken as clear. Sets the clipping
    bound from the contract alone."""
    total = 1.0
    for f in contract.features:
        if f.kind == "categorical":
            total += 4.0 * (1.0 - 1.0 / len(f.categories or [1]))
        else:
            total += 1.0
    return total


# -- one-shot coordinates: the contract alone ---------------------------------------------
RANGE_SPREAD = 1.0 / 6.0  # a declared range taken to span about six standard deviations
ONE_SHOT_CLIP_FRACTION = 0.5  # rows clipped at half their typical norm
ONE_SHOT_INTERCEPT = 0.3  # the intercept column's constant


def contract_scales(contract: Contract) -> np.ndarray:
    """Scale of every encoded column from the contract alone, for a release that cannot
    wait for the private scale release (a one-shot fit): numeric columns
    :data:`RANGE_SPREAD` of their declared range, binary columns 1/2."""
    return np.where(numeric_columns(contract), RANGE_SPREAD, BINARY_SCALE)


@dataclass(frozen=True)
class UnitBallCoordinates:
    """Rows in the unit ball with their intercept column, from the contract alone: the
    coordinates of objective perturbation (:mod:`pipeline.privacy.objective`).

    Encoded columns less their centres over their :func:`contract_scales`, stretched so
    that a typical row (:func:`standardized_sq_norm`) reaches ``1 / clip_fraction`` of
    the ball's radius for the features, then clipped to that radius: like DP-FedAvg's
    clip below the typical norm, most rows count by their direction, which raises the
    signal against noise of a fixed size. The intercept column is the constant
    ``intercept``; features and intercept together have norm at most 1.
    """

    centre: np.ndarray
    scale: np.ndarray
    stretch: float
    radius: float
    intercept: float

    @classmethod
    def from_contract(
        cls,
        contract: Contract,
        *,
        clip_fraction: float = ONE_SHOT_CLIP_FRACTION,
        intercept: float = ONE_SHOT_INTERCEPT,
    ) -> UnitBallCoordinates:
        if not 0 < intercept < 1:
            raise ValueError(f"intercept must be in (0, 1), got {intercept}")
        radius = math.sqrt(1.0 - intercept**2)
        typical = math.sqrt(standardized_sq_norm(contract) - 1.0)
        return cls(
            centre=column_centres(contract),
            scale=contract_scales(contract),
            stretch=radius / (clip_fraction * typical),
            radius=radius,
            intercept=intercept,
        )

    def rows(self, X: np.ndarray) -> np.ndarray:
        """Encoded rows in these coordinates, the intercept column last."""
        from pipeline.privacy.mechanisms import clip_rows

        Z = (np.asarray(X, dtype=np.float64) - self.centre) / self.scale * self.stretch
        return np.hstack([clip_rows(Z, self.radius), np.full((len(Z), 1), self.intercept)])

    def to_encoder_weights(self, weights: np.ndarray, offset: float = 0.0) -> np.ndarray:
        """Weights over these coordinates (plus a log-odds `offset`) as weights over the
        encoder's own columns: the same score for every row inside the clip."""
        coef = weights[:-1] * self.stretch / self.scale
        return np.append(coef, weights[-1] * self.intercept + offset - float(coef @ self.centre))
