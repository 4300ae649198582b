"""The contract check of a scoring request: every field, every rule, no value echoed.

A request that breaks the contract raises :class:`RequestError`, whose violations name the
field, the rule and what is allowed, never the value that was sent. A request that passes
comes back in the canonical form of :meth:`pipeline.features.FeatureEncoder.canonical`, the
form every model here predicts from. Everything is computed over whole columns: the cost
of a request does not grow with a Python loop per patient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contract import Contract, Feature

MAX_REPORTED_ROWS = 5
MAX_NAMED = 5  # column names one violation lists; the rest are counted
_SAFE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_NUMBER_TYPES = {"integer", "floating", "mixed-integer-float", "decimal", "empty"}


@dataclass(frozen=True)
class Violation:
    """One broken rule: which field, which rule, what is allowed, in which row positions
    (positions, never values)."""

    field: str | None
    rule: str
    message: str
    allowed: Any = None
    rows: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "rule": self.rule, "message": self.message}
        if self.allowed is not None:
            out["allowed"] = self.allowed
        if self.rows:
            out["rows"] = list(self.rows)
        return out


class RequestError(ValueError):
    """A scoring request that does not meet the contract."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__("; ".join(v.message for v in violations))


def _positions(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(mask)[:MAX_REPORTED_ROWS])


def _allowed(f: Feature) -> dict[str, Any]:
    if f.kind == "numeric":
        lo, hi = f.range  # type: ignore[misc]
        return {"min": lo, "max": hi, "unit": f.unit, "nullable": f.nullable}
    if f.kind == "categorical":
        return {"categories": list(f.categories or []), "nullable": f.nullable}
    return {"values": [True, False], "nullable": f.nullable}


def safe_name(column: object) -> str | None:
    """A column name safe to repeat in an error (a name, not a value), else None."""
    return column if isinstance(column, str) and _SAFE_NAME.match(column) else None


def _is_scalar(v: Any) -> bool:
    """Not a list, an object or an array (MLflow's parsers give a list cell of ``inputs``
    records as an array)."""
    if isinstance(v, np.ndarray):
        return v.ndim == 0
    return not isinstance(v, list | dict | tuple | set)


def _is_scalar_mask(values: np.ndarray) -> np.ndarray:
    return np.frompyfunc(_is_scalar, 1, 1)(values).astype(bool)


def _is_bool_mask(values: np.ndarray) -> np.ndarray:
    return np.frompyfunc(lambda v: isinstance(v, bool | np.bool_), 1, 1)(values).astype(bool)


def _is_boolean_value(v: Any) -> bool:
    if isinstance(v, bool | np.bool_):
        return True
    return isinstance(v, int | float) and v in (0, 1)


def _why_not_numbers(values: np.ndarray) -> tuple[str, str, np.ndarray]:
    """For an object column that is not all numbers: the rule, the reason, the rows (the
    error path only, so it may look at each value)."""
    present = ~pd.isna(values)
    nested = present & ~_is_scalar_mask(values)
    if nested.any():
        return "scalar", "a list or object is not a value", nested
    bools = present & _is_bool_mask(values)
    if bools.any():
        return "number", "true/false is not a number", bools
    numbers = np.frompyfunc(lambda v: isinstance(v, int | float | np.number), 1, 1)(values)
    return "number", "not a number", present & ~numbers.astype(bool)


class _Checker:
    """Checks one feature column into the canonical form of
    :meth:`pipeline.features.FeatureEncoder.canonical`, recording violations."""

    def __init__(self, f: Feature, out: list[Violation]) -> None:
        self.f = f
        self.out = out
        self.label = f"field {f.name!r}"

    def fail(self, rule: str, why: str, rows: np.ndarray | None = None) -> None:
        self.out.append(
            Violation(
                self.f.name,
                rule,
                f"{self.label}: {why} (rule: {rule})",
                _allowed(self.f),
                _positions(rows) if rows is not None else (),
            )
        )

    def numbers(self, col: pd.Series) -> np.ndarray | None:
        """float64, NaN where missing; None (and a violation) when not all numbers."""
        f, dtype = self.f, col.dtype
        unit = f"a number in {f.unit}" if f.unit else "a number"
        if pd.api.types.is_bool_dtype(dtype):
            self.fail("number", f"true/false is not a number; expected {unit}", col.notna())
            return None
        if pd.api.types.is_numeric_dtype(dtype):
            x = col.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            values = col.to_numpy(dtype=object)
            if pd.api.types.infer_dtype(values, skipna=True) not in _NUMBER_TYPES:
                rule, why, rows = _why_not_numbers(values)
                self.fail(rule, f"{why}; expected {unit}", rows)
                return None
            x = values.astype(np.float64)
        if np.isinf(x).any():
            self.fail("finite", "Infinity is not a measurement", np.isinf(x))
            return None
        if f.missing_codes:
            x = np.where(np.isin(x, f.missing_codes), np.nan, x)
        return x

    def check(self, col: pd.Series) -> np.ndarray | None:
        f = self.f
        if f.kind == "categorical":
            codes = self.codes(col)
            if codes is None:
                return None
            missing = codes < 0
        elif f.kind == "boolean":
            x = self.booleans(col)
            if x is None:
                return None
            missing = np.isnan(x)
            codes = x
        else:
            x = self.numbers(col)
            if x is None:
                return None
            lo, hi = f.range  # type: ignore[misc]
            with np.errstate(invalid="ignore"):
                bad = (x < lo) | (x > hi)
            if bad.any():
                unit = f" {f.unit}" if f.unit else ""
                self.fail("range", f"{f.label} outside [{lo:g}, {hi:g}]{unit}", bad)
                return None
            missing = np.isnan(x)
            codes = x
        if not f.nullable and missing.any():
            self.fail("not null", f"{f.label} is required", missing)
            return None
        return codes

    def booleans(self, col: pd.Series) -> np.ndarray | None:
        if pd.api.types.is_bool_dtype(col.dtype):
            return col.to_numpy(dtype=np.float64, na_value=np.nan)
        values = col.to_numpy(dtype=object)
        if pd.api.types.infer_dtype(values, skipna=True) in ("boolean", "empty"):
            missing = pd.isna(values)
            return np.where(missing, np.nan, np.where(missing, False, values).astype(bool))
        if pd.api.types.infer_dtype(values, skipna=True) not in _NUMBER_TYPES:
            # true/false and 0/1 mixed, or something else among them
            missing = pd.isna(values)
            bad = ~missing & ~np.frompyfunc(_is_boolean_value, 1, 1)(values).astype(bool)
            if bad.any():
                self.fail("boolean", "not true/false", bad)
                return None
            return np.where(missing, np.nan, np.where(missing, 0, values).astype(np.float64))
        x = self.numbers(col)  # 0/1 is accepted for true/false
        if x is None:
            return None
        with np.errstate(invalid="ignore"):
            bad = ~np.isnan(x) & (x != 0) & (x != 1)
        if bad.any():
            self.fail("boolean", "not true/false", bad)
            return None
        return x

    def codes(self, col: pd.Series) -> np.ndarray | None:
        """Index into the contract's categories, -1 where missing."""
        f = self.f
        cats = list(f.categories or [])
        if f.dtype == "string":
            values = col.to_numpy(dtype=object)
            missing = pd.isna(values)
            if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
                nested = ~missing & ~_is_scalar_mask(values)
                if nested.any():
                    self.fail("scalar", "a list or object is not a value", nested)
                    return None
            keys = np.where(missing, "", values).astype(str)
            table = np.array([str(c) for c in cats])
        else:
            x = self.numbers(col)
            if x is None:
                return None
            missing = np.isnan(x)
            keys = np.where(missing, 0.0, x)
            table = np.array([float(c) for c in cats])
        order = np.argsort(table)
        pos = np.searchsorted(table[order], keys).clip(max=len(cats) - 1)
        hit = table[order][pos] == keys
        unknown = ~hit & ~missing
        if unknown.any():
            self.fail("category", f"not one of {cats}", unknown)
            return None
        return np.where(missing, -1, order[pos]).astype(np.int64)


def check_request(contract: Contract, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Check a request against the contract and return its features in the canonical form
    of :meth:`pipeline.features.FeatureEncoder.canonical` (floats for numbers and booleans,
    category indexes, NaN / -1 for missing).

    Raises :class:`RequestError` naming every broken field and rule. A nullable feature
    may be absent (then it is missing for every patient); an undeclared column is refused,
    so a misspelt feature or an identifier column never passes silently.
    """
    out: list[Violation] = []
    n = len(df)
    if n == 0:
        raise RequestError([Violation(None, "rows", "request has no rows (rule: at least 1)")])
    if not all(isinstance(c, str) for c in df.columns):
        raise RequestError(
            [
                Violation(
                    None,
                    "shape",
                    "values without feature names (rule: records are objects keyed by "
                    "feature name; dataframe_split names its columns)",
                )
            ]
        )
    declared = set(contract.feature_names)
    identifiers = {d.lower() for d in contract.identifiers_denylist} | {contract.key.name}
    if contract.index_date is not None:
        identifiers.add(contract.index_date.name)
    out += _undeclared([c for c in df.columns if c not in declared], identifiers, contract)
    if len(set(df.columns)) != len(df.columns):
        out.append(Violation(None, "duplicate", "a column is given twice (rule: unique columns)"))
        raise RequestError(out)
    cols: dict[str, np.ndarray] = {}
    for f in contract.features:
        if f.name not in df.columns:
            if f.nullable:
                cols[f.name] = np.full(n, -1) if f.kind == "categorical" else np.full(n, np.nan)
            else:
                out.append(
                    Violation(
                        f.name,
                        "required",
                        f"field {f.name!r}: {f.label} is missing (rule: required)",
                        _allowed(f),
                    )
                )
            continue
        checked = _Checker(f, out).check(df[f.name])
        if checked is not None:
            cols[f.name] = checked
    if out:
        raise RequestError(out)
    return cols


def _undeclared(
    columns: list[object], identifiers: set[str], contract: Contract
) -> list[Violation]:
    """At most one violation per rule, however many columns break it: the first few
    names (names, never values) and how many there are; the allowed features once."""
    found: dict[str, list[object]] = {}
    for column in columns:
        lowered = column.lower() if isinstance(column, str) else ""
        is_id = lowered in identifiers or any(t in identifiers for t in lowered.split("_"))
        found.setdefault("no identifiers" if is_id else "declared features", []).append(column)
    out = []
    for rule, cols in found.items():
        names = [safe_name(c) for c in cols]
        shown = ", ".join(repr(n) if n else "(name withheld)" for n in names[:MAX_NAMED])
        more = f" and {len(cols) - MAX_NAMED} more" if len(cols) > MAX_NAMED else ""
        column = "column" if len(cols) == 1 else f"{len(cols)} columns"
        why = (
            "an identifier; the model takes no identifiers (rule: no identifiers)"
            if rule == "no identifiers"
            else "not a model input (rule: declared features only)"
        )
        out.append(
            Violation(
                names[0],
                rule,
                f"{column} {shown}{more}: {why}",
                {"features": contract.feature_names},
            )
        )
    return out
