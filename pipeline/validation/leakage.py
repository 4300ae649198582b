"""Label leakage: a single column whose AUC against the label is near-perfect.

Only the column and the rule are reported, never the AUC or anything it was computed
from."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.contract import Contract
from pipeline.validation.suite import fmt
from pipeline.validation.summary import NO_LEAKAGE, ExpectationResult

_LEAKAGE_MIN_CLASS = 10  # fewer cases or controls than this: no AUC is meaningful
_LEAKAGE_MAX_LEVELS = 50  # string columns with more levels are identifiers, not features


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC of groups given in ascending score order (ties within a group count half)."""
    n1, n0 = pos.sum(), neg.sum()
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (n1 * n0))


def leak_scores(values: pd.Series, y: np.ndarray) -> list[float]:
    """Symmetric single-column AUCs: on the present values, and with missing as a level at
    either end (a column recorded only for cases leaks through its missingness)."""
    y = y.astype(np.float64)
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = values.cat.codes.to_numpy()
    elif values.dtype == bool:
        codes = values.to_numpy().astype(np.int64)
    elif pd.api.types.is_string_dtype(values.dtype) or values.dtype == object:
        codes = pd.factorize(values)[0]  # missing -> -1
    else:
        codes = None
    if codes is not None:
        if codes.max(initial=-1) >= _LEAKAGE_MAX_LEVELS:
            return []  # an identifier or free text, not a feature
        level = codes + 1  # missing (-1) is a level of its own
        tot = np.bincount(level)
        pos = np.bincount(level, weights=y, minlength=len(tot))
        order = np.argsort(pos / np.maximum(tot, 1), kind="stable")
        return [_auc(pos[order], (tot - pos)[order])]
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        x = values.to_numpy().view(np.int64).astype(np.float64)
        x[values.isna().to_numpy()] = np.nan
    elif pd.api.types.is_numeric_dtype(values.dtype):
        x = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        return []
    present = ~np.isnan(x)
    codes, uniques = pd.factorize(x[present], sort=False)
    rank = np.empty(len(uniques), dtype=np.int64)
    rank[np.argsort(uniques, kind="stable")] = np.arange(len(uniques))
    level = rank[codes]
    tot = np.bincount(level, minlength=len(uniques)).astype(np.float64)
    pos = np.bincount(level, weights=y[present], minlength=len(uniques))
    neg = tot - pos
    miss_pos = float(y[~present].sum())
    miss_neg = float((~present).sum()) - miss_pos
    scores = []
    if min(pos.sum(), neg.sum()) >= _LEAKAGE_MIN_CLASS:
        scores.append(_auc(pos, neg))
    if miss_pos + miss_neg > 0:
        scores.append(_auc(np.r_[miss_pos, pos], np.r_[miss_neg, neg]))
        scores.append(_auc(np.r_[pos, miss_pos], np.r_[neg, miss_neg]))
    return scores


def leakage_results(
    df: pd.DataFrame, contract: Contract, threshold: float, typed: set[str]
) -> list[ExpectationResult]:
    """Columns that predict the label almost perfectly on their own. Only the column and the
    rule are reported, never the AUC or anything it was computed from. A label of the
    wrong physical type (text such as "yes"/"no") is that check's finding, with its column
    and rule; there is no label to test leakage against."""
    label = contract.label.name
    if label not in df.columns or label not in typed:
        return []
    lab = df[label]
    y = lab.to_numpy(dtype=np.float64, na_value=np.nan) == contract.label.positive
    known = lab.notna().to_numpy()
    n1 = int(y[known].sum())
    if min(n1, int(known.sum()) - n1) < _LEAKAGE_MIN_CLASS:
        return []  # a single class is the label expectation's finding
    rule = f"label leakage: single-column AUC >= {fmt(threshold)} against {label}"
    out = []
    for col in df.columns:
        if col in (label, contract.key.name):
            continue
        try:
            scores = leak_scores(df[col][known], y[known])
        except (TypeError, ValueError):
            continue
        if not scores:
            continue
        leaks = any(max(s, 1.0 - s) >= threshold for s in scores)
        out.append(
            ExpectationResult(
                NO_LEAKAGE, str(col), not leaks, element_count=int(known.sum()), rule=rule
            )
        )
    return out
