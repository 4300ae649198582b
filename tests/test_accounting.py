"""The accountant's epsilons against references computed here, independently of dp-accounting.

The RDP -> (epsilon, delta) conversion that ``dp_accounting.rdp.compute_epsilon`` applies
(read in its source) is Canonne, Kamath & Steinke 2020, Prop. 12:

    epsilon = min over alpha of  rdp(alpha) + log(1 - 1/alpha) - log(delta * alpha) / (alpha - 1)

over its default orders (1.1 .. 10.9 by 0.1, 11 .. 63, 128, 256, 512, 1024). The references
below apply the same conversion to RDP curves derived from first principles.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp

from pipeline.privacy.accounting import (
    calibrate_noise_multiplier,
    gaussian_epsilon,
    pure_epsilon_total,
)

# dp-accounting's DEFAULT_RDP_ORDERS, written out so the reference does not import them.
LIBRARY_ORDERS = np.array(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024],
    dtype=np.float64,
)


def epsilon_from_rdp(orders: np.ndarray, rdp: np.ndarray, delta: float) -> float:
    """Canonne, Kamath & Steinke 2020, Prop. 12, minimised over the given orders."""
    eps = rdp + np.log1p(-1.0 / orders) - np.log(delta * orders) / (orders - 1.0)
    return max(0.0, float(np.min(eps)))


def gaussian_rdp(orders: np.ndarray, sigma: float, steps: int) -> np.ndarray:
    """RDP of the Gaussian mechanism (Mironov 2017, Prop. 7), composed over ``steps``."""
    return steps * orders / (2.0 * sigma**2)


def subsampled_gaussian_rdp(orders: np.ndarray, q: float, sigma: float, steps: int) -> np.ndarray:
    """Exact RDP of the Poisson-subsampled Gaussian by numerical integration.

    D_alpha(mu || mu0) with mu0 = N(0, s^2) and mu = (1-q) mu0 + q N(1, s^2): the log of
    E_{z ~ mu0}[(mu/mu0)(z)^alpha], a trapezoid sum in log space on a grid of spacing s/50
    (Mironov, Talwar & Zhang 2019 show this direction is the larger one).
    """
    out = []
    for alpha in orders:
        lo, hi = -40 * sigma, alpha + 40 * sigma
        z = np.linspace(lo, hi, int((hi - lo) / (sigma / 50)) + 1)
        log_mu0 = -(z**2) / (2 * sigma**2) - 0.5 * math.log(2 * math.pi * sigma**2)
        log_ratio = np.logaddexp(math.log1p(-q), math.log(q) + (2 * z - 1) / (2 * sigma**2))
        log_a = logsumexp(log_mu0 + alpha * log_ratio) + math.log(z[1] - z[0])
        out.append(steps * log_a / (alpha - 1))
    return np.array(out)


@pytest.mark.parametrize(
    ("sigma", "steps", "delta"), [(1.1, 30, 1e-5), (5.0, 100, 1e-6), (0.8, 1, 1e-5)]
)
def test_gaussian_epsilon_matches_closed_form_rdp_on_the_same_orders(sigma, steps, delta):
    reference = epsilon_from_rdp(LIBRARY_ORDERS, gaussian_rdp(LIBRARY_ORDERS, sigma, steps), delta)
    assert gaussian_epsilon(sigma, steps, delta) == pytest.approx(reference, rel=1e-12)


def test_gaussian_epsilon_is_within_0_1_percent_of_the_continuous_optimum():
    sigma, steps, delta = 1.1, 30, 1e-5
    fine = np.linspace(1.01, 2000.0, 400_000)
    continuous = epsilon_from_rdp(fine, gaussian_rdp(fine, sigma, steps), delta)
    eps = gaussian_epsilon(sigma, steps, delta)
    # The library's orders are a subset of the reals: never below the optimum, barely above.
    assert continuous <= eps <= continuous * 1.001


def test_subsampled_epsilon_matches_numerically_integrated_rdp():
    q, sigma, steps, delta = 0.05, 2.0, 200, 1e-5
    rdp = subsampled_gaussian_rdp(LIBRARY_ORDERS, q, sigma, steps)
    reference = epsilon_from_rdp(LIBRARY_ORDERS, rdp, delta)
    assert gaussian_epsilon(sigma, steps, delta, sampling_rate=q) == pytest.approx(
        reference, rel=1e-6
    )


def test_subsampling_amplifies_privacy():
    full = gaussian_epsilon(1.5, 50, 1e-5)
    assert gaussian_epsilon(1.5, 50, 1e-5, sampling_rate=0.1) < full / 3


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    assert gaussian_epsilon(2.0, 10, 1e-5) < gaussian_epsilon(2.0, 20, 1e-5)
    assert gaussian_epsilon(3.0, 10, 1e-5) < gaussian_epsilon(2.0, 10, 1e-5)
    assert gaussian_epsilon(2.0, 0, 1e-5) == 0.0


@pytest.mark.parametrize(("epsilon", "steps"), [(1.0, 30), (8.0, 1), (0.3, 5)])
def test_calibrated_noise_meets_epsilon_and_is_within_0_1_percent_of_minimal(epsilon, steps):
    delta = 1e-5
    sigma = calibrate_noise_multiplier(epsilon, delta, steps)
    assert gaussian_epsilon(sigma, steps, delta) <= epsilon
    assert gaussian_epsilon(sigma / 1.002, steps, delta) > epsilon


def test_calibration_round_trips_with_subsampling():
    epsilon, delta, steps, q = 2.0, 1e-5, 50, 0.1
    sigma = calibrate_noise_multiplier(epsilon, delta, steps, sampling_rate=q)
    assert gaussian_epsilon(sigma, steps, delta, q) <= epsilon
    assert gaussian_epsilon(sigma / 1.002, steps, delta, q) > epsilon


def test_calibration_refuses_an_unreachable_epsilon():
    with pytest.raises(ValueError, match="no noise multiplier"):
        calibrate_noise_multiplier(1e-3, 1e-5, steps=10**9)


def test_pure_epsilons_add_exactly():
    assert pure_epsilon_total([0.1] * 10) == 1.0
    assert pure_epsilon_total([]) == 0.0


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_pure_epsilon_total_refuses_invalid_spends(bad):
    with pytest.raises(ValueError, match="finite and >= 0"):
        pure_epsilon_total([0.5, bad])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"steps": -1}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"sampling_rate": 0.0}, "sampling_rate"),
        ({"sampling_rate": 1.5}, "sampling_rate"),
    ],
)
def test_gaussian_epsilon_refuses_invalid_parameters(kwargs, message):
    args = {"noise_multiplier": 1.0, "steps": 10, "delta": 1e-5} | kwargs
    with pytest.raises(ValueError, match=message):
        gaussian_epsilon(**args)
