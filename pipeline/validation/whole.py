"""The expectations about an extract as a whole, computed in plain code on every job's
whole table: the row-count floor, the contract's columns, unique patient keys across
every file, both label classes, and each feature's plausible median.

These do not add up over files (a key unique in each of two files can repeat across
them), so no record can stand in for them; they are cheap on rows the job reads anyway
for training, in pandas, without Great Expectations. Reported in the same redacted shape
as GE's results: counts and the contract's rule, never a value (the observed median is
not reported, only whether it is inside the plausible range).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from pipeline.validation.suite import COLUMNS, DISTINCT, MEDIAN, ROW_COUNT, UNIQUE, Expectation
from pipeline.validation.summary import ExpectationResult


def whole_result(e: Expectation, df: pd.DataFrame, columns: Sequence[str]) -> ExpectationResult:
    """`e`'s outcome on the whole extract `df` (`columns`: its column names)."""
    kw = e.kwargs
    if e.type == ROW_COUNT:
        return _decided(e, len(df) >= kw["min_value"])
    if e.type == COLUMNS:
        expected, got = set(kw["column_set"]), set(columns)
        return _decided(e, expected == got if kw["exact_match"] else expected <= got)
    values = df[kw["column"]]
    present = values.dropna()
    if e.type == UNIQUE:
        repeated = int(present.duplicated(keep=False).sum())
        return ExpectationResult(
            e.type,
            e.column,
            repeated == 0,
            element_count=len(values),
            unexpected_count=repeated,
            unexpected_rate=repeated / len(present) if len(present) else None,
            rule=e.rule,
        )
    if e.type == DISTINCT:
        return _decided(e, set(kw["value_set"]) <= set(present.unique().tolist()))
    if e.type == MEDIAN:
        median = float(present.median()) if len(present) else float("nan")
        return _decided(e, kw["min_value"] <= median <= kw["max_value"])
    raise ValueError(f"{e.type} is not an expectation about the whole extract")


def _decided(e: Expectation, success: bool) -> ExpectationResult:
    return ExpectationResult(e.type, e.column, bool(success), rule=e.rule)
