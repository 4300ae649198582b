"""The clinician-facing answer for checked rows: probability, risk band (the contract's
thresholds, which the model card quotes), the top factors behind it as a clinician reads
them, and the model's identity."""

from __future__ import annotations

from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contract import Contract

TOP_FACTORS = 3


def _objects(x: np.ndarray, integral: bool) -> np.ndarray:
    """Floats as JSON-ready Python numbers (ints where the feature is integral), None
    where missing; numpy's conversion to object does it without a Python loop."""
    missing = np.isnan(x)
    filled = np.where(missing, 0.0, x)
    obj = (filled.astype(np.int64) if integral else np.round(filled, 4)).astype(object)
    obj[missing] = None
    return obj


def _display_values(contract: Contract, cols: dict[str, np.ndarray]) -> np.ndarray:
    """Each patient's value per feature, JSON-ready (None when missing)."""
    out = []
    for f in contract.features:
        x = cols[f.name]
        if f.kind == "categorical":
            out.append(np.array([*(f.categories or []), None], dtype=object)[x])
        elif f.kind == "boolean":
            obj = (x == 1.0).astype(object)
            obj[np.isnan(x)] = None
            out.append(obj)
        else:
            out.append(_objects(x, f.dtype.startswith("int")))
    return np.column_stack(out)


_FACTOR_KEYS = ("feature", "name", "value", "unit", "effect")


ANSWER_COLUMNS = ("risk_probability", "risk_band", "top_factors", "model_name", "model_version")


def answer_records(
    contract: Contract,
    model: Any,
    cols: dict[str, np.ndarray],
    *,
    model_name: str,
    model_version: str | None,
) -> list[dict[str, Any]]:
    """The clinician-facing answer for checked rows, one record per patient: probability,
    band, the top factors (display name, the patient's value and unit, whether it raises
    or lowers the risk) and the model's identity. Whole columns at a time: the factors are
    gathered with numpy and zipped into records by builtins, with no Python loop per
    patient."""
    p, contrib = model.explain(cols)
    n, k = len(p), min(TOP_FACTORS, contrib.shape[1])
    top = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :k]
    at = np.arange(n)[:, None]
    values = _display_values(contract, cols)[at, top]
    effect = np.where(contrib[at, top] > 0, "raises", "lowers").astype(object)
    features = np.array(contract.feature_names, dtype=object)[top]
    labels = np.array([f.label for f in contract.features], dtype=object)[top]
    units = np.array(
        [f.unit if f.kind == "numeric" else None for f in contract.features], dtype=object
    )[top]
    units[pd.isna(values)] = None
    # One record per (patient, factor): dict(zip(keys, fields)) mapped by builtins.
    fields = np.stack([features, labels, values, units, effect], axis=-1).reshape(n * k, 5)
    records = list(map(dict, map(zip, repeat(_FACTOR_KEYS), fields.tolist())))
    factors = list(map(list, zip(*[iter(records)] * k, strict=True))) if k else [[]] * n
    rows = zip(
        p.tolist(),
        contract.risk_band(p).tolist(),
        factors,
        repeat(model_name),
        repeat(model_version),
    )
    return list(map(dict, map(zip, repeat(ANSWER_COLUMNS), rows)))


def answer(
    contract: Contract,
    model: Any,
    cols: dict[str, np.ndarray],
    *,
    model_name: str,
    model_version: str | None,
    index: pd.Index | None = None,
) -> pd.DataFrame:
    """:func:`answer_records` as a DataFrame (what the pyfunc returns in process).
    `model` is any model of :mod:`pipeline.models` (its ``explain`` gives the risks and
    each feature's contribution)."""
    records = answer_records(
        contract, model, cols, model_name=model_name, model_version=model_version
    )
    frame = pd.DataFrame.from_records(records, columns=list(ANSWER_COLUMNS))
    if index is not None:
        frame.index = index
    return frame
