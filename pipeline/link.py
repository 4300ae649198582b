"""The logistic link, written once: every model here predicts a probability as the
sigmoid of a log-odds, and every evaluation bins the log-odds of a probability."""

from __future__ import annotations

import math

import numpy as np

_EDGE = 1e-12  # probabilities are kept this far from 0 and 1 before taking log-odds


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """1 / (1 + e^-z), through tanh: exact in float64 for every z, with no overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def sigmoid_scalar(z: float) -> float:
    """:func:`sigmoid` of one number, without NumPy's array overhead."""
    return 0.5 * (1.0 + math.tanh(0.5 * z))


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), with p clipped to [1e-12, 1 - 1e-12] so it stays finite."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EDGE, 1 - _EDGE)
    return np.log(p) - np.log1p(-p)
