"""Privacy accounting: how much epsilon a planned sequence of noisy releases costs.

The arithmetic is delegated to Google's maintained ``dp-accounting`` library rather than
written here: Renyi-DP bookkeeping has subtle numerics (log-space sums, the RDP ->
(epsilon, delta) conversion) that a hand-rolled version gets quietly wrong.

- Gaussian releases (DP-FedAvg rounds, DP-SGD steps) are composed in Renyi differential
  privacy, Mironov 2017, "Renyi Differential Privacy" (CSF), which composes additively per
  order and is much tighter than basic composition over many rounds. Subsampled releases
  use the Poisson-subsampled Gaussian, the "moments accountant" of Abadi et al. 2016, "Deep
  Learning with Differential Privacy" (CCS).
- Pure epsilon-DP spends (e.g. a Laplace-noised count) add up (basic
  composition, Dwork & Roth 2014, Thm 3.16).

The noise multiplier everywhere is ``std / L2 sensitivity`` under the add-or-remove-one
neighbouring relation, which is what ``mechanisms.noisy_clipped_sum`` releases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from numbers import Real

import dp_accounting
from dp_accounting import rdp

_RELATIVE_TOLERANCE = 1e-3
GaussianReleases = tuple[float, int, float]  # (noise multiplier, count, sampling rate)
_SIGMA_SEARCH_RANGE = (1e-4, 1e6)


def gaussian_epsilon(
    noise_multiplier: float, steps: int, delta: float, sampling_rate: float = 1.0
) -> float:
    """Epsilon spent by ``steps`` Gaussian releases at ``noise_multiplier``, for ``delta``.

    Each release adds N(0, (noise_multiplier * sensitivity)^2) noise; with
    ``sampling_rate < 1`` each record takes part in a release independently with that
    probability (Poisson sampling, Abadi et al. 2016), which amplifies privacy. The RDP
    curve is composed over ``steps`` and converted to (epsilon, delta) by ``dp-accounting``'s
    ``RdpAccountant`` (Mironov 2017; the conversion is Canonne, Kamath & Steinke 2020,
    Prop. 12, minimised over the library's default orders).

    Parameters
    ----------
    noise_multiplier : float
        Noise standard deviation divided by the L2 sensitivity (the clipping bound). > 0.
    steps : int
        Number of releases composed (rounds of federated training). >= 0.
    delta : float
        Target delta, in (0, 1).
    sampling_rate : float
        Poisson sampling probability per release, in (0, 1]. 1.0: every record, every time.

    Examples
    --------
    >>> round(gaussian_epsilon(1.0, steps=1, delta=1e-5), 2)
    4.73
    """
    _check_positive_finite("noise_multiplier", noise_multiplier)
    _check_delta(delta)
    _check_sampling_rate(sampling_rate)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if steps == 0:
        return 0.0
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    accountant = rdp.RdpAccountant()
    accountant.compose(event, count=steps)
    return float(accountant.get_epsilon(delta))


def composed_gaussian_epsilon(releases: Iterable[GaussianReleases], delta: float) -> float:
    """Epsilon spent by several kinds of Gaussian release composed together, for ``delta``.

    Each entry is (noise multiplier, count, sampling rate): ``count`` releases at that
    noise multiplier, each record taking part with that Poisson probability (1.0: every
    record). A job that first releases noisy feature scales and then trains for some
    rounds is charged this, for exactly its releases: the RDP curves of all the events add
    per order (Mironov 2017) before the one conversion to (epsilon, delta), which is
    tighter than adding the epsilons of the parts.
    """
    _check_delta(delta)
    events: list[dp_accounting.DpEvent] = []
    for sigma, count, rate in releases:
        _check_positive_finite("noise_multiplier", sigma)
        _check_sampling_rate(rate)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"release counts must be non-negative integers, got {count!r}")
        if count == 0:
            continue
        event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(sigma)
        if rate < 1.0:
            event = dp_accounting.PoissonSampledDpEvent(rate, event)
        events.append(dp_accounting.SelfComposedDpEvent(event, count))
    if not events:
        return 0.0
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return float(accountant.get_epsilon(delta))


def calibrate_noise_scale(
    epsilon: float, delta: float, releases: Iterable[GaussianReleases]
) -> float:
    """The smallest factor ``s`` such that the releases, each at noise multiplier
    ``s * relative``, together cost at most ``epsilon`` (:func:`composed_gaussian_epsilon`).

    ``releases`` are (relative noise multiplier, count, sampling rate). The search is the
    one of :func:`calibrate_noise_multiplier`: the result always meets the target and is
    within 0.1 % of the smallest factor that does.
    """
    _check_positive_finite("epsilon", epsilon)
    _check_delta(delta)
    plan = list(releases)
    if not any(count > 0 for _, count, _ in plan):
        raise ValueError("a plan needs at least one release")

    def meets(s: float) -> bool:
        return composed_gaussian_epsilon([(s * r, n, q) for r, n, q in plan], delta) <= epsilon

    return _smallest_meeting(meets, f"epsilon={epsilon} with delta={delta} for {plan}")


def calibrate_noise_multiplier(
    epsilon: float, delta: float, steps: int, sampling_rate: float = 1.0
) -> float:
    """The smallest noise multiplier whose ``steps`` releases cost at most ``epsilon``.

    Less noise means a more useful model, so we want the smallest sigma that still fits the
    budget. Epsilon decreases monotonically in sigma, so a geometric bisection on sigma
    finds it; the result is the upper end of the final bracket, so it always meets the
    target (never rounds the wrong way) and is within 0.1 % of the smallest such sigma.

    Raises ``ValueError`` when no sigma in [1e-4, 1e6] meets the target (the target is
    unreachably small for the given delta and steps).
    """
    _check_positive_finite("epsilon", epsilon)
    _check_delta(delta)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")

    def meets(sigma: float) -> bool:
        return gaussian_epsilon(sigma, steps, delta, sampling_rate) <= epsilon

    return _smallest_meeting(
        meets,
        f"epsilon={epsilon} with delta={delta}, steps={steps}, sampling_rate={sampling_rate}",
    )


def _smallest_meeting(meets: Callable[[float], bool], target: str) -> float:
    """Geometric bisection for the smallest noise that meets a privacy target: the upper
    end of the final bracket, so it always meets it, within 0.1 % of the smallest."""
    lowest, highest = _SIGMA_SEARCH_RANGE
    hi = 1.0
    while not meets(hi):
        hi *= 2.0
        if hi > highest:
            raise ValueError(f"no noise multiplier up to {highest:g} reaches {target}")
    lo = hi / 2.0
    while meets(lo):
        hi, lo = lo, lo / 2.0
        if lo < lowest:
            return hi
    # Invariant: meets(hi) and not meets(lo).
    while hi / lo - 1.0 > _RELATIVE_TOLERANCE:
        mid = math.sqrt(lo * hi)
        if meets(mid):
            hi = mid
        else:
            lo = mid
    return hi


def pure_epsilon_total(epsilons: Iterable[float]) -> float:
    """Total of pure epsilon-DP spends: they add (basic composition, Dwork & Roth Thm 3.16).

    Deliberately not routed through ``ZCDpEvent``: converting eps-DP to (eps^2/2)-zCDP and
    back yields an (epsilon, delta) guarantee with delta > 0, a different kind of promise
    from the pure-DP one each site agreed to. The sum is exact-as-possible (``math.fsum``)
    so ten spends of 0.1 make exactly 1.0 against a budget of 1.0.
    """
    values = list(epsilons)
    for value in values:
        if not (isinstance(value, Real) and math.isfinite(value) and value >= 0):
            raise ValueError(f"pure epsilon spends must be finite and >= 0, got {value!r}")
    return math.fsum(values)


def _check_positive_finite(name: str, value: float) -> None:
    if not (isinstance(value, Real) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, Real) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _check_sampling_rate(rate: float) -> None:
    if not (isinstance(rate, Real) and 0 < rate <= 1):
        raise ValueError(f"sampling_rate must be in (0, 1], got {rate!r}")
