"""Data contracts: the one source of truth for a task's columns, units, ranges and bounds.

A contract is a YAML file under ``schemas/``. Everything downstream (the Parquet schema,
the validation suite, the feature encoding, the bounds that differential privacy needs and
the tree bin grid) is derived from it here, so a new task is a new YAML file and no code.
"""

from __future__ import annotations

import operator
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ContractError, format_validation_error

_ARROW_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "date": pa.date32(),
}

_OPS = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}

Op = Literal["<", "<=", ">", ">=", "==", "!="]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Strict):
    """One model input column, in the clinical unit the sites hold it in."""

    name: str
    kind: Literal["numeric", "categorical", "boolean"]
    dtype: Literal["bool", "int8", "int16", "int32", "int64", "float32", "float64", "string"]
    unit: str | None = None
    range: tuple[float, float] | None = None
    impute: float | None = None
    categories: list[str] | list[int] | None = None
    nullable: bool = False
    max_missing_rate: float = Field(0.0, ge=0.0, le=1.0)
    missing_codes: list[float] = Field(default_factory=list)
    plausible_median: tuple[float, float] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check_kind(self) -> Feature:
        if self.kind == "numeric":
            if self.range is None:
                raise ValueError(f"numeric feature {self.name!r} needs a range [min, max]")
            lo, hi = self.range
            if not lo < hi:
                raise ValueError(f"feature {self.name!r}: range min must be below max")
            if self.impute is not None and not lo <= self.impute <= hi:
                raise ValueError(f"feature {self.name!r}: impute value outside its range")
        if self.kind == "categorical" and not self.categories:
            raise ValueError(f"categorical feature {self.name!r} needs categories")
        if self.kind == "boolean" and self.dtype != "bool":
            raise ValueError(f"boolean feature {self.name!r} must have dtype bool")
        if not self.nullable and self.max_missing_rate > 0:
            raise ValueError(f"feature {self.name!r}: max_missing_rate > 0 needs nullable: true")
        return self

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW_TYPES[self.dtype]

    @property
    def impute_value(self) -> float:
        """Contract-declared fill value; the range midpoint when none is declared."""
        if self.impute is not None:
            return float(self.impute)
        lo, hi = self.range  # type: ignore[misc]
        return (lo + hi) / 2.0


class KeySpec(_Strict):
    name: str
    derive: Literal["hash"] | None = None
    description: str = ""


class DateSpec(_Strict):
    name: str
    description: str = ""


class LabelSpec(_Strict):
    name: str
    dtype: Literal["int8", "int16", "int32", "int64", "bool"] = "int8"
    positive: int = 1
    negative: int = 0
    description: str = ""


class Exclusion(_Strict):
    column: str
    op: Op
    value: float
    reason: str = ""

    def mask(self, values: pd.Series) -> np.ndarray:
        """Rows this exclusion removes; a missing value is never excluded by it."""
        v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            return np.asarray(_OPS[self.op](v, self.value)) & ~np.isnan(v)


class Cohort(_Strict):
    description: str = ""
    follow_up_months: int | None = None
    partition: str | None = None
    exclude: list[Exclusion] = Field(default_factory=list)


class LabelRule(_Strict):
    column: str
    op: Op
    value: float


class SourceSpec(_Strict):
    """How a raw site file maps onto the contract (used by `pipeline import-csv`)."""

    format: Literal["csv"] = "csv"
    header: bool = True
    na_values: list[str] = Field(default_factory=list)
    columns: list[str] | None = None
    label_from: LabelRule | None = None


class Contract(_Strict):
    """A parsed, checked data contract. Build it with :func:`load_contract`."""

    name: str
    version: int = 1
    title: str = ""
    description: str = ""
    key: KeySpec
    index_date: DateSpec | None = None
    label: LabelSpec
    cohort: Cohort = Cohort()
    identifiers_denylist: list[str] = Field(default_factory=list)
    source: SourceSpec | None = None
    features: list[Feature]
    path: str | None = None

    @model_validator(mode="after")
    def _check_names(self) -> Contract:
        names = self.column_names
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"column names appear twice: {dupes}")
        banned = sorted(set(names) & {d.lower() for d in self.identifiers_denylist})
        if banned:
            raise ValueError(f"columns on the identifier denylist: {banned}")
        for rule in self.cohort.exclude:
            if rule.column not in names:
                raise ValueError(f"cohort rule names unknown column {rule.column!r}")
        return self

    # -- columns -----------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def column_names(self) -> list[str]:
        """Every column an extract holds, in file order."""
        cols = [self.key.name]
        if self.index_date is not None:
            cols.append(self.index_date.name)
        return cols + [f.name for f in self.features] + [self.label.name]

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        """The physical schema every site extract must have, exactly."""
        fields = [pa.field(self.key.name, pa.string(), nullable=False)]
        if self.index_date is not None:
            fields.append(pa.field(self.index_date.name, pa.date32(), nullable=False))
        fields += [pa.field(f.name, f.arrow_type, nullable=f.nullable) for f in self.features]
        fields.append(pa.field(self.label.name, _ARROW_TYPES[self.label.dtype], nullable=False))
        return pa.schema(fields)

    # -- cohort ------------------------------------------------------------------------
    def cohort_violations(self, df: pd.DataFrame) -> np.ndarray:
        """Boolean mask of rows the cohort rule excludes."""
        out = np.zeros(len(df), dtype=bool)
        for rule in self.cohort.exclude:
            out |= rule.mask(df[rule.column])
        return out

    def labels(self, df: pd.DataFrame) -> np.ndarray:
        """The label column as 0/1 integers (1 = the contract's positive class)."""
        return (df[self.label.name].to_numpy() == self.label.positive).astype(np.int8)

    # -- bounds for privacy and trees --------------------------------------------------
    @property
    def numeric_bounds(self) -> dict[str, tuple[float, float]]:
        """Per-feature clipping bounds for DP, taken from the contract, never from data."""
        return {f.name: f.range for f in self.features if f.kind == "numeric"}  # type: ignore[misc]


def load_contract(path: str | Path) -> Contract:
    """Read and check a contract file; errors name the file and the offending entry."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ContractError(f"contract file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ContractError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ContractError(f"{path}: a contract must be a YAML mapping")
    raw["path"] = str(path)
    try:
        return Contract.model_validate(raw)
    except ValidationError as exc:
        raise ContractError(f"{path}: invalid contract:\n{format_validation_error(exc)}") from exc
