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
