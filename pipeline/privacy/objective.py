"""Objective perturbation for logistic regression: the one-shot private fit of a site.

A site minimises its L2-regularised log-loss plus a random linear term ``b . w`` and
releases the minimiser once (Chaudhuri, Monteleoni & Sarwate 2011, "Differentially
Private Empirical Risk Minimization", JMLR 12). The minimiser adapts to the site's own
correlations between features for free: only the linear term is noise, and the
regulariser bounds how far it can move the weights.

The noise is Gaussian, the approximate-DP variant of Kifer, Smith & Thakurta 2012
("Private Convex Empirical Risk Minimization and High-dimensional Regression", COLT),
because the pure-epsilon variant's noise (a Gamma-distributed norm) grows with the
dimension: at 24 weights it puts about twice the noise of a Gaussian on every weight,
and on a few hundred rows that decides whether the model ranks patients. The privacy
profile is the tight one of Redberg, Koskela & Wang 2023 ("Improving the Privacy and
Practicality of Objective Perturbation for Differentially Private Linear Learners",
NeurIPS; its privacy-profile bound as its reference code computes it): for a generalised
linear loss whose per-row gradient has norm at most ``L`` and second derivative at most
``beta``, regulariser ``lambda / 2 ||w||^2`` with ``lambda > beta``, noise
``b ~ N(0, sigma^2 I)`` and the exact minimiser,

    delta(epsilon) = 2 * delta_G(epsilon - log(1 / (1 - beta / lambda)); sigma / L)

(for ``epsilon`` above that log term plus ``L^2 / (2 sigma^2)``), where ``delta_G`` is the
analytic Gaussian mechanism's profile (Balle & Wang 2018, "Improving the Gaussian
Mechanism for Differential Privacy: Analytical Calibration and Optimal Denoising", ICML).
The smallest such sigma is therefore the analytic Gaussian mechanism's for
``(epsilon - log term, delta / 2)`` at sensitivity ``L``: diffprivlib's
``GaussianAnalytic`` calibrates it and draws the noise from the operating system's
randomness (never seeded, never logged).

Rows are put in the unit ball with their intercept column (``L = 1``; ``beta = 1/4`` for
the log-loss), neighbouring data sets differ by one added or removed row, as everywhere
in this package. The intercept starts from an offset, the log-odds of the site's own
positive count released with diffprivlib's ``Laplace`` mechanism, so that the regulariser
pulls towards the site's prevalence instead of towards 1/2 (at a prevalence of 10 %
pulling towards 1/2 costs more than the noise). The two releases compose to the sum of
their epsilons (Dwork & Roth 2014, Thm 3.16).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from pipeline.link import sigmoid

if TYPE_CHECKING:
    from diffprivlib.mechanisms import GaussianAnalytic

LIPSCHITZ = 1.0  # |p - y| * ||x|| for rows in the unit ball
SMOOTHNESS = 0.25  # the log-loss's second derivative is at most 1/4 (times ||x||^2 <= 1)
_NEWTON_TOL = 1e-10
_NEWTON_STEPS = 100


def jacobian_epsilon(regularization: float) -> float:
    """The part of epsilon the regulariser spends: ``log(1 / (1 - beta / lambda))``."""
    if not regularization > SMOOTHNESS:
        raise ValueError(
            f"objective perturbation needs regularization > {SMOOTHNESS}, got {regularization}"
        )
    return -math.log1p(-SMOOTHNESS / regularization)


def gaussian_mechanism(epsilon: float, delta: float, regularization: float) -> GaussianAnalytic:
    """diffprivlib's analytic Gaussian mechanism whose noise, as the random linear term,
    makes the minimiser (`epsilon`, `delta`)-DP at this `regularization`."""
    from diffprivlib.mechanisms import GaussianAnalytic

    remaining = epsilon - jacobian_epsilon(regularization)
    if not remaining > 0:
        raise ValueError(
            f"epsilon {epsilon:g} does not cover the regulariser's share "
            f"{jacobian_epsilon(regularization):.3g} at regularization {regularization:g}"
        )
    mechanism = GaussianAnalytic(epsilon=remaining, delta=delta / 2.0, sensitivity=LIPSCHITZ)
    sigma = math.sqrt(mechanism.variance(0.0))
    if remaining < LIPSCHITZ**2 / (2.0 * sigma**2):
        raise ValueError(f"epsilon {epsilon:g} is below the range of the privacy profile")
    return mechanism


def noise_std(epsilon: float, delta: float, regularization: float) -> float:
    """Standard deviation of each coordinate of the random linear term."""
    return math.sqrt(gaussian_mechanism(epsilon, delta, regularization).variance(0.0))


def perturbation(dim: int, epsilon: float, delta: float, regularization: float) -> np.ndarray:
    """A fresh random linear term of `dim` coordinates, drawn by diffprivlib."""
    mechanism = gaussian_mechanism(epsilon, delta, regularization)
    return np.array([mechanism.randomise(0.0) for _ in range(dim)])


def noisy_positive_count(y: np.ndarray, epsilon: float) -> float:
    """The site's count of positives plus Laplace noise (sensitivity 1), kept at least
    1/2 away from 0 and from the row count so that its log-odds exist."""
    from diffprivlib.mechanisms import Laplace

    n = len(y)
    noisy = Laplace(epsilon=epsilon, sensitivity=1.0).randomise(float(np.sum(y)))
    return min(max(noisy, 0.5), n - 0.5) if n > 1 else 0.5


def perturbed_logistic(
    X: np.ndarray,
    y: np.ndarray,
    *,
    epsilon: float,
    delta: float,
    regularization: float,
    offset: float = 0.0,
) -> np.ndarray:
    """Weights (last entry: the intercept column's) of an (`epsilon`, `delta`)-DP
    logistic regression on rows `X` that carry their intercept column.

    Minimises ``sum log-loss(x.w + offset) + regularization / 2 ||w||^2 + b.w`` exactly
    (Newton's method to a gradient norm of 1e-10: the guarantee is for the minimiser).
    Every row of `X` must have norm at most 1; `offset` must not depend on the rows
    beyond a private release.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if np.any(np.linalg.norm(X, axis=1) > 1.0 + 1e-12):
        raise ValueError("objective perturbation needs rows of norm at most 1")
    b = perturbation(X.shape[1], epsilon, delta, regularization)
    return minimise(X, y, regularization=regularization, linear=b, offset=offset)


def minimise(
    X: np.ndarray,
    y: np.ndarray,
    *,
    regularization: float,
    linear: np.ndarray,
    offset: float = 0.0,
) -> np.ndarray:
    """The minimiser of the perturbed objective by damped Newton steps (strongly convex:
    the Hessian is at least ``regularization`` in every direction)."""
    d = X.shape[1]
    w = np.zeros(d)

    def value(v: np.ndarray) -> float:
        z = X @ v + offset
        loss = float(np.sum(np.logaddexp(0.0, z) - y * z))
        return loss + 0.5 * regularization * float(v @ v) + float(linear @ v)

    for _ in range(_NEWTON_STEPS):
        z = X @ w + offset
        p = sigmoid(z)
        grad = X.T @ (p - y) + regularization * w + linear
        if np.linalg.norm(grad) < _NEWTON_TOL:
            return w
        hess = (X * (p * (1.0 - p))[:, None]).T @ X + regularization * np.eye(d)
        step = np.linalg.solve(hess, grad)
        t, current, decrement = 1.0, value(w), float(grad @ step)
        # Backtrack while the step could overshoot; near the minimum the decrease is
        # below the objective's rounding and the full Newton step is right.
        while decrement > 1e-12 and value(w - t * step) > current - 0.25 * t * decrement:
            t *= 0.5
            if t < 1e-10:
                break
        w = w - t * step
    raise RuntimeError("objective perturbation: Newton's method did not converge")
