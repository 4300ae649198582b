"""Privacy: the budget ledger, the noise mechanisms and the epsilon accounting.

Names are re-exported lazily (PEP 562) so that importing the ledger alone, e.g. in a
short-lived process that only records a spend, does not pay for dp-accounting's scipy
import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.privacy.accounting import (
        calibrate_noise_multiplier,
        gaussian_epsilon,
        pure_epsilon_total,
    )
    from pipeline.privacy.ledger import PrivacyLedger
    from pipeline.privacy.mechanisms import (
        clip_rows,
        clipped_sum,
        gaussian_noise,
        noisy_clipped_sum,
    )

_EXPORTS = {
    "PrivacyLedger": "ledger",
    "gaussian_epsilon": "accounting",
    "calibrate_noise_multiplier": "accounting",
    "pure_epsilon_total": "accounting",
    "clip_rows": "mechanisms",
    "clipped_sum": "mechanisms",
    "gaussian_noise": "mechanisms",
    "noisy_clipped_sum": "mechanisms",
}

__all__ = [
    "PrivacyLedger",
    "calibrate_noise_multiplier",
    "clip_rows",
    "clipped_sum",
    "gaussian_epsilon",
    "gaussian_noise",
    "noisy_clipped_sum",
    "pure_epsilon_total",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
