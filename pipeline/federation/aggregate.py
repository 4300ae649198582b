"""Aggregation arithmetic: pure functions on (vector, n_examples) pairs, tested alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weighted_average(updates: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """Example-weighted mean of parameter vectors (FedAvg's model average,
    McMahan et al. 2017)."""
    if not updates:
        raise ValueError("nothing to average")
    total = sum(n for _, n in updates)
    if total <= 0:
        raise ValueError("updates cover no examples")
    return sum(v * (n / total) for v, n in updates)


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
