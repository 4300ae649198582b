"""The geometry private training works in: per-column scales of the contract encoding.

Gaussian noise is isotropic in the coordinates the gradients are clipped in, so how the
columns are scaled decides how much of the noise lands on each feature. The contract
encoding (:class:`pipeline.features.FeatureEncoder`) divides a numeric value by its
declared range, which is several times its typical spread, so on few rows the noise buries
exactly the numeric features. Standardising each column (Hessian preconditioning by the
feature variances) removes that, but a variance read from the data is not private. Here
the spread of each numeric column is *released* privately instead: every site sends the
Gaussian-noised, clipped sum of its rows' absolute deviations from the contract's typical
value, once, charged in the same accountant as the training rounds (the planner,
:mod:`pipeline.privacy.planner`, budgets it), and the coordinator turns the sums into
scales. Binary columns (one-hot categories, booleans, missing flags) take the spread of a
balanced binary, 1/2, from the contract alone.

- Sites compute :func:`row_deviations` and release their clipped sum with
  :func:`pipeline.privacy.mechanisms.noisy_clipped_sum`.
- The coordinator post-processes the noisy sums with :func:`column_scales` (free: a
  function of a private release). No scale is ever a bound for clipping: clipping bounds
  stay fixed by the plan.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.contract import Contract

BINARY_SCALE = 0.5  # standard deviation of a balanced 0/1 column
DEVIATION_BOUND = 0.15  # per numeric feature, in units of its declared range
_MIN_DEVIATION = 1.0 / 64  # a spread below 1/64 of the range is taken as 1/64
_MAD_TO_SD = math.sqrt(math.pi / 2)  # SD / mean absolute deviation of a normal variable


def numeric_columns(contract: Contract) -> np.ndarray:
    """Which columns of the contract encoding hold a numeric feature's value."""
    out: list[bool] = []
    for f in contract.features:
        if f.kind == "categorical":
            out += [False] * len(f.categories or [])
        else:
            out.append(f.kind == "numeric")
        if f.nullable:
            out.append(False)
    return np.array(out, dtype=bool)


def deviation_bound(contract: Contract) -> float:
    """L2 bound on one row's vector of numeric deviations (its clipping bound, so its
    sensitivity): :data:`DEVIATION_BOUND` per numeric feature, from the contract alone."""
    return DEVIATION_BOUND * math.sqrt(int(numeric_columns(contract).sum()))


def row_deviations(X: np.ndarray, contract: Contract) -> np.ndarray:
    """Per row, the absolute encoded value of every numeric column: its distance from the
    contract's typical value in units of the declared range (what a site sums)."""
    return np.abs(np.asarray(X, dtype=np.float64)[:, numeric_columns(contract)])


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
        mean = np.asarray(noisy_sum, dtype=np.float64) / max(int(rows), 1)
        scales[numeric] = np.maximum(mean, _MIN_DEVIATION) * _MAD_TO_SD
    return scales


def standardized_sq_norm(contract: Contract) -> float:
    """Typical squared norm of a row in standardized coordinates, with the intercept: one
    per numeric feature, two per other feature (a binary column at scale 1/2 adds 4 when
    set; half of them taken as set) and one for the intercept. Sets the clipping bound
    from the contract alone."""
    numeric = sum(f.kind == "numeric" for f in contract.features)
    other = len(contract.features) - numeric
    return float(numeric + 2 * other + 1)
