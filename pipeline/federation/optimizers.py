"""Server-side optimisers for gradient rounds: one small class per rule.

The coordinator's round loop is written once and calls `step`; a rule overrides only how
the global mean gradient moves the weights.
"""

from __future__ import annotations

import numpy as np


class ServerOptimizer:
    """Base class: `step(weights, gradient) -> new weights`."""

    name = "base"

    def step(self, weights: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class FedAvgM(ServerOptimizer):
    """Federated averaging with server momentum (FedAvgM; Hsu, Qi & Brown 2019,
    "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
    Classification"): the server keeps a heavy-ball velocity of the aggregated gradients.
    Under DP noise it averages the noise of successive rounds while the signal adds up,
    and it lengthens the horizon of a few rounds without larger single steps."""

    name = "fedavgm"

    def __init__(self, *, learning_rate: float = 1.0, momentum: float = 0.9) -> None:
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.velocity_: np.ndarray | None = None

    def step(self, weights: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        if self.velocity_ is None:
            self.velocity_ = np.zeros_like(weights)
        self.velocity_ = self.momentum * self.velocity_ + gradient
        return weights - self.learning_rate * self.velocity_


class DampedNewton(ServerOptimizer):
    """The damped Newton step with the Hessian's diagonal, for a plan of a single round.

    One round cannot correct its own length, and a fixed step is either too short (an
    under-confident model, whose per-site accuracy then rests on the intercept alone) or
    too long. From a start where every prediction is the released prevalence ``p`` (the
    intercept alone), in standardized coordinates the Hessian's diagonal is ``p (1 - p)``
    (`curvature`); the mean gradient is estimated from the clipped one divided by
    `gradient_scale`, the plan's clip over the typical per-row gradient norm. The step
    is Newton's, damped by ``1 / (1 + decrement)`` (Nesterov 2004, "Introductory Lectures
    on Convex Optimization", section 4.1.5), which keeps it inside the region where the
    quadratic model holds: a diagonal that ignores correlated features would overshoot.
    A post-processing of released values: it costs no privacy."""

    name = "damped-newton"

    def __init__(self, *, curvature: float, gradient_scale: float = 1.0) -> None:
        if not (curvature > 0 and gradient_scale > 0):
            raise ValueError("curvature and gradient_scale must be > 0")
        self.curvature = curvature
        self.gradient_scale = gradient_scale

    def step(self, weights: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        g = np.asarray(gradient) / self.gradient_scale
        decrement = float(np.linalg.norm(g)) / np.sqrt(self.curvature)
        return weights - g / (self.curvature * (1.0 + decrement))
