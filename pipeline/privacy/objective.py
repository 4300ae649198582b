"""Objective perturbation for logistic regression: the one-shot private fit of a site.

Chaudhuri, Monteleoni & Sarwate 2011, "Differentially Private Empirical Risk Minimization"
(JMLR 12), Algorithm 2: minimise the L2-regularised log-loss plus a random linear term
b.w / n, where b has a uniformly random direction and a Gamma-distributed norm, and the
minimiser is epsilon-DP for rows of norm at most ``data_norm``. The random term is
diffprivlib's ``Vector`` mechanism (its noise from the operating system's randomness);
the objective is minimised here rather than through diffprivlib's ``LogisticRegression``
for two reasons: the theorem needs the regulariser strongly convex in every parameter, so
the intercept is penalised too (diffprivlib leaves it free), and a site whose rows are all
of one class still gets a model (diffprivlib refuses, and its refusal would tell the
coordinator so).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize

FUNCTION_SENSITIVITY = 0.25  # bound on the log-loss's second derivative (Chaudhuri's c)


def objective_perturbation_logistic(
    X: np.ndarray,
    y: np.ndarray,
    *,
    epsilon: float,
    data_norm: float,
    C: float,
    max_iter: int = 5000,
) -> np.ndarray:
    """Weights (last entry: intercept) of an epsilon-DP logistic regression on (X, y).

    Rows are clipped to ``data_norm`` first (so the guarantee holds whatever the rows);
    the intercept column makes the norm ``sqrt(data_norm^2 + 1)``. ``C`` is the inverse
    regularisation strength as in scikit-learn: the objective is the mean log-loss plus
    ``||w||^2 / (2 C n)``. When ``C`` is too large for ``epsilon`` (Chaudhuri's epsilon'
    would be <= 0) the mechanism adds the extra regularisation of the paper's Algorithm 2
    and spends half of epsilon on the noise, as diffprivlib does.
    """
    from diffprivlib.mechanisms import Vector

    from pipeline.privacy.mechanisms import clip_rows

    X = clip_rows(np.asarray(X, dtype=np.float64), data_norm)
    y = np.asarray(y, dtype=np.float64)
    n, d = X.shape
    Xb = np.hstack([X, np.ones((n, 1))])
    mechanism = Vector(
        epsilon=epsilon,
        dimension=d + 1,
        alpha=1.0 / C,
        function_sensitivity=FUNCTION_SENSITIVITY,
        data_sensitivity=math.sqrt(data_norm**2 + 1.0),
        n=n,
    )
    strength = 1.0 / (C * n)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = Xb @ w
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        value = float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * strength * (w @ w))
        return value, Xb.T @ (p - y) / n + strength * w

    noisy = mechanism.randomise(loss)
    found = minimize(
        noisy,
        np.zeros(d + 1),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": 1e-10, "ftol": 1e-15},
    )
    return np.asarray(found.x)
