"""Newton's method for logistic regression, split where the rows are: each site sums its
gradient and Hessian (:func:`site_statistics`), the coordinator steps on the pooled sums
(:func:`newton_step`). Pure functions on arrays, tested without Ray."""

from __future__ import annotations

import numpy as np

from pipeline.link import sigmoid


def site_statistics(X: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The gradient sum and the Hessian sum (upper triangle) of the log-loss over rows `X`
    (encoded, without the intercept column) with labels `y`, at `weights` (last entry:
    intercept). Its size depends only on the encoding, never on the rows."""
    Xb = np.hstack([X, np.ones((len(X), 1))])
    p = sigmoid(Xb @ weights)
    gradient = Xb.T @ (p - y)
    hessian = (Xb * (p * (1 - p))[:, None]).T @ Xb
    return np.concatenate([gradient, hessian[np.triu_indices(len(weights))]])


def newton_step(
    weights: np.ndarray, stats: np.ndarray, count: float, l2: float
) -> tuple[np.ndarray, float]:
    """The Newton step of ``mean log-loss + l2 / 2 * ||w[:-1]||^2`` at `weights`, from the
    pooled sufficient statistics `stats` = [gradient sum, Hessian sum upper triangle] over
    `count` rows (the intercept, last, is not penalised), and the Newton decrement
    ``g . H^-1 g`` (twice the objective's expected decrease). Subtract the step from the
    weights."""
    dim = len(weights)
    gradient = stats[:dim] / count
    upper = np.zeros((dim, dim))
    upper[np.triu_indices(dim)] = stats[dim:] / count
    hessian = upper + np.triu(upper, 1).T
    penalty = np.full(dim, float(l2))
    penalty[-1] = 0.0
    hessian[np.diag_indices(dim)] += penalty
    gradient = gradient + penalty * weights
    try:
        step = np.linalg.solve(hessian, gradient)
    except np.linalg.LinAlgError:
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
    return step, float(gradient @ step)
