"""Drift of the case mix: population stability index per feature, over the contract's bins.

The population stability index (PSI; Yurdakul & Naranjo, "Statistical properties of the
population stability index", J Risk Model Validation 2020) compares the share of patients
in each bin of a feature between a reference population (the rows the champion was
trained on) and a current one (the newly closed months):
``PSI = sum_i (c_i - r_i) ln(c_i / r_i)``. The usual reading: below 0.1 stable, 0.1-0.2 a
moderate shift, above 0.2 a shift worth acting on.

Bins come from the contract, never from data: ``DRIFT_BINS`` equal-width bins over each
numeric feature's declared range (values beyond it fall in the end bins), one bin per
declared category, false/true for booleans, and a last bin for missing values (unknown
categories count as missing). A site summarises rows into a fixed-size count vector
(:func:`histogram_vector`); the coordinator only ever sees such vectors summed over sites.
Before an index is computed, neighbouring bins are merged until every bin holds at least
``MIN_CELL`` patients in both populations, so no small cell shapes a reported number; a
feature whose populations are too small for that is suppressed (None).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.contract import Contract, Feature
from pipeline.evaluation.metrics import MIN_CELL
from pipeline.features import _category_codes, _numeric, missing_mask

DRIFT_BINS = 10
STABLE, SHIFTED = 0.1, 0.2


def feature_width(feature: Feature) -> int:
    """Bins of one feature, its missing bin included."""
    if feature.kind == "numeric":
        return DRIFT_BINS + 1
    if feature.kind == "categorical":
        return len(feature.categories or []) + 1
    return 3


def vector_length(contract: Contract) -> int:
    return sum(feature_width(f) for f in contract.features)


def histogram_vector(frame: pd.DataFrame, contract: Contract) -> np.ndarray:
    """Patients per contract bin of every feature, concatenated in contract order: a
    vector whose length depends on the contract alone."""
    parts = []
    for f in contract.features:
        width = feature_width(f)
        values = frame[f.name]
        missing = missing_mask(f, values)
        if f.kind == "numeric":
            lo, hi = f.range  # type: ignore[misc]
            x = _numeric(values)
            missing = missing | np.isnan(x)
            idx = np.clip(((x - lo) / (hi - lo) * DRIFT_BINS), 0, DRIFT_BINS - 1)
            idx = np.where(missing, DRIFT_BINS, np.nan_to_num(idx)).astype(np.int64)
        elif f.kind == "categorical":
            codes = _category_codes(f, values)
            idx = np.where(missing | (codes < 0), width - 1, codes)
        else:
            x = _numeric(values.astype("float64") if values.dtype == bool else values)
            missing = missing | np.isnan(x)
            idx = np.where(missing, 2, np.nan_to_num(x) != 0).astype(np.int64)
        parts.append(np.bincount(idx, minlength=width).astype(np.float64))
    return np.concatenate(parts) if parts else np.zeros(0)


def split_features(vector: np.ndarray, contract: Contract) -> dict[str, np.ndarray]:
    """A (pooled) :func:`histogram_vector` by feature."""
    if vector.shape != (vector_length(contract),):
        raise ValueError(
            f"drift vector has {vector.size} values, expected {vector_length(contract)}"
        )
    out, start = {}, 0
    for f in contract.features:
        width = feature_width(f)
        out[f.name] = vector[start : start + width]
        start += width
    return out


def psi(reference: np.ndarray, current: np.ndarray, min_cell: int = MIN_CELL) -> float | None:
    """The population stability index of two count histograms over the same bins, after
    merging neighbouring bins until each holds at least `min_cell` patients in both; None
    (suppressed) when not even one such bin can be formed."""
    ref, cur = np.rint(reference), np.rint(current)
    groups: list[tuple[float, float]] = []
    acc_r = acc_c = 0.0
    for r, c in zip(ref, cur, strict=True):
        acc_r, acc_c = acc_r + r, acc_c + c
        if acc_r >= min_cell and acc_c >= min_cell:
            groups.append((acc_r, acc_c))
            acc_r = acc_c = 0.0
    if not groups:
        return None
    if acc_r or acc_c:  # a short last stretch joins the bin before it
        r, c = groups[-1]
        groups[-1] = (r + acc_r, c + acc_c)
    if len(groups) == 1:
        return 0.0
    r = np.array([g[0] for g in groups])
    c = np.array([g[1] for g in groups])
    r, c = r / r.sum(), c / c.sum()
    return float(np.sum((c - r) * np.log(c / r)))


def psi_by_feature(
    reference: np.ndarray, current: np.ndarray, contract: Contract
) -> dict[str, float | None]:
    """PSI of every feature from two :func:`histogram_vector` vectors."""
    ref, cur = split_features(reference, contract), split_features(current, contract)
    return {name: psi(ref[name], cur[name]) for name in ref}


def level(value: float | None) -> str:
    """How a PSI reads: stable, moderate or shifted (or suppressed)."""
    if value is None:
        return "suppressed"
    return "stable" if value < STABLE else "moderate" if value <= SHIFTED else "shifted"
