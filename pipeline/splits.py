"""How a site splits its rows: held-out test rows and, for early stopping, validation rows.

Both are deterministic given the seed, so the same extracts and config give the same model,
and every strategy (and every benchmark baseline) sees the same rows in each part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.contract import Contract

VALID_FRACTION = 0.1
Part = tuple[pd.DataFrame, np.ndarray]  # rows (raw contract columns) and their labels


def held_out_mask(keys: pd.Series, seed: int, fraction: float) -> np.ndarray:
    """Which rows are held out for testing: a keyed hash of the patient key, so a patient
    stays on the same side across jobs and as new months of data arrive."""
    if not 0 < fraction < 1:
        raise ValueError(f"test fraction must be in (0, 1), got {fraction}")
    h = pd.util.hash_pandas_object(keys.astype(str), index=False, hash_key=f"{seed:016d}"[-16:])
    return (h.to_numpy() % 10_000) < int(fraction * 10_000)


def train_test(
    df: pd.DataFrame,
    contract: Contract,
    seed: int,
    fraction: float,
    held: pd.DataFrame | None = None,
) -> tuple[Part, Part]:
    """A site's (train, held-out) rows and labels, by :func:`held_out_mask`, or, when the
    site keeps a held-out extract (its rows `held`), all of `df` against `held`: what the
    site's actor trains and evaluates on, and what a pooled baseline pools."""
    if held is not None:
        return (df, contract.labels(df)), (held, contract.labels(held))
    is_test = held_out_mask(df[contract.key.name], seed, fraction)
    y = contract.labels(df)
    return (df[~is_test], y[~is_test]), (df[is_test], y[is_test])


def validation_mask(n: int, seed: int, fraction: float = VALID_FRACTION) -> np.ndarray:
    """Which of a site's `n` training rows (in extract order) are its validation rows."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    return np.random.default_rng([seed, 0x7EE5]).random(n) < fraction
