"""Data contracts: the one source of truth for a task's columns, units, ranges and bounds.

A contract is a YAML file under ``schemas/``. Everything downstream (the Parquet schema,
the validation suite, the feature encoding, the bounds that differential privacy needs and
the tree bin grid) is derived from it here, so a new task is a new YAML file and no code.

One piece, on purpose: the schema of one YAML file, section by section in the order the
file has them, so a reader checks a contract against one page; what is derived from it
lives where it is used (the encoding in :mod:`pipeline.features`, the suite in
:mod:`pipeline.validation.suite`, the grid in :mod:`pipeline.models.trees`).
"""

from __future__ import annotations

import operator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ContractError, format_validation_error

if TYPE_CHECKING:  # pandas is imported where rows are handled: a site listing its files
    import pandas as pd  # or a coordinator reading a contract need not pay for it

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

# The comparison operators of a contract's rules (cohort exclusions, label rules).
COMPARISONS = {
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


class UnitConversion(_Strict):
    """A unit the CDS Hooks service accepts for a feature: contract value = value * scale +
    offset. A bare number in the YAML is a scale."""

    scale: float = 1.0
    offset: float = 0.0

    @model_validator(mode="before")
    @classmethod
    def _bare_scale(cls, v: object) -> object:
        return {"scale": v} if isinstance(v, int | float) and not isinstance(v, bool) else v


FhirResource = Literal[
    "Patient", "Observation", "Condition", "MedicationStatement", "FamilyMemberHistory"
]


class FhirSource(_Strict):
    """Where a feature is read from FHIR R4 resources (the CDS Hooks service's mapping).

    - ``Patient``: ``element`` is ``birthDate`` (age in whole years today) or ``gender``
      (mapped through ``values``).
    - ``Observation``: the latest final/amended/corrected observation (or observation
      component, as in a blood-pressure panel) coded with one of ``codes``; a
      ``valueQuantity`` counts when it carries one of ``units`` as a UCUM code (system
      ``http://unitsofmeasure.org``) and no comparator, converted into the feature's
      unit; any other quantity is not used (the card says so). A
      ``valueCodeableConcept`` is mapped through ``values``.
    - ``Condition`` / ``FamilyMemberHistory`` / ``MedicationStatement``: a boolean, true
      when an active entry carries one of ``codes``, false when that prefetch is present
      without one, null when the EHR sent no such prefetch.

    ``codes`` are ``system|code``; a code ending in ``*`` matches by prefix (ATC classes).
    """

    resource: FhirResource
    element: Literal["birthDate", "gender"] | None = None
    codes: list[str] = Field(default_factory=list)
    units: dict[str, UnitConversion] = Field(default_factory=dict)
    values: dict[str, str | int | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> FhirSource:
        if self.resource == "Patient":
            if self.element is None:
                raise ValueError("a Patient source needs element: birthDate or gender")
        elif not self.codes:
            raise ValueError(f"a {self.resource} source needs codes (system|code)")
        bad = [c for c in self.codes if "|" not in c]
        if bad:
            raise ValueError(f"codes must be system|code, got {bad}")
        return self


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
    display_name: str | None = None
    description: str = ""
    fhir: FhirSource | None = None

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
        if self.fhir is not None:
            self._check_fhir(self.fhir)
        return self

    def _check_fhir(self, src: FhirSource) -> None:
        where = f"feature {self.name!r}: fhir"
        if self.kind == "numeric" and src.resource == "Observation" and not src.units:
            raise ValueError(f"{where}: a numeric observation needs units (UCUM code -> scale)")
        if src.resource in ("Condition", "MedicationStatement", "FamilyMemberHistory") and (
            self.kind != "boolean"
        ):
            raise ValueError(f"{where}: a {src.resource} source gives a boolean feature")
        if self.kind == "categorical" and src.values:
            allowed = {str(c) for c in self.categories or []}
            unknown = sorted({str(v) for v in src.values.values()} - allowed)
            if unknown:
                raise ValueError(f"{where}: values map to unknown categories {unknown}")

    @property
    def label(self) -> str:
        """The name a clinician reads (the contract's ``display_name``, else the column)."""
        return self.display_name or self.name.replace("_", " ")

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
        import pandas as pd

        v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            return np.asarray(COMPARISONS[self.op](v, self.value)) & ~np.isnan(v)


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


class RiskBand(_Strict):
    """One band of predicted risk: probabilities below ``upper`` (and at or above the band
    before it) are this band. What it means is the contract's, so a task brings its own."""

    name: str
    upper: float = Field(gt=0, le=1.0)
    meaning: str = ""


DEFAULT_RISK_BANDS = (
    RiskBand(name="low", upper=0.10, meaning="below 10 %: routine care"),
    RiskBand(name="moderate", upper=0.25, meaning="10-25 %: lifestyle advice, recheck sooner"),
    RiskBand(name="high", upper=1.0, meaning="25 % or more: act on the risk"),
)


class Subgroup(_Strict):
    """Patients reported on separately (fairness and transport checks): one group per
    category of a categorical ``column``, or one per band between consecutive ``edges`` of
    a numeric one (the last band includes its upper edge)."""

    name: str
    column: str
    edges: list[float] | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    def group_names(self, feature: Feature) -> list[str]:
        if self.edges is not None:
            e = self.edges
            last = len(e) - 2
            return [
                f"{self.name} {e[i]:g} to {'' if i == last else '<'}{e[i + 1]:g}"
                for i in range(len(e) - 1)
            ]
        cats = [str(c) for c in feature.categories or []]
        return [f"{self.name} {self.labels.get(c, c)}" for c in cats]

    def masks(self, feature: Feature, values: pd.Series) -> list[np.ndarray]:
        """One boolean mask per group, in :meth:`group_names` order; a missing value is in
        no group."""
        import pandas as pd

        if self.edges is not None:
            x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            e = self.edges
            out = []
            for i in range(len(e) - 1):
                upper = x <= e[i + 1] if i == len(e) - 2 else x < e[i + 1]
                with np.errstate(invalid="ignore"):
                    out.append((x >= e[i]) & upper)
            return out
        cats = list(feature.categories or [])
        if feature.dtype == "string":
            return [(values == c).to_numpy(dtype=bool, na_value=False) for c in cats]
        x = pd.to_numeric(values, errors="coerce")
        return [(x == float(c)).to_numpy(dtype=bool, na_value=False) for c in cats]


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
    risk_bands: list[RiskBand] = Field(default_factory=lambda: list(DEFAULT_RISK_BANDS))
    subgroups: list[Subgroup] = Field(default_factory=list)
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
        uppers = [b.upper for b in self.risk_bands]
        if not uppers or uppers != sorted(set(uppers)) or uppers[-1] != 1.0:
            raise ValueError("risk_bands: upper bounds must increase and the last must be 1.0")
        features = {f.name: f for f in self.features}
        for group in self.subgroups:
            f = features.get(group.column)
            if f is None:
                raise ValueError(f"subgroup {group.name!r} names unknown feature {group.column!r}")
            if group.edges is None and f.kind != "categorical":
                raise ValueError(f"subgroup {group.name!r}: a {f.kind} column needs edges")
            if group.edges is not None and (
                len(group.edges) < 2 or group.edges != sorted(set(group.edges))
            ):
                raise ValueError(f"subgroup {group.name!r}: edges must increase")
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

    def risk_band(self, p: np.ndarray) -> np.ndarray:
        """The band name of each probability."""
        uppers = np.array([b.upper for b in self.risk_bands])
        names = np.array([b.name for b in self.risk_bands])
        idx = np.searchsorted(uppers, np.asarray(p, dtype=float), side="right")
        return names[idx.clip(max=len(names) - 1)]

    def subgroup_masks(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Every declared subgroup's rows: group name -> boolean mask."""
        out: dict[str, np.ndarray] = {}
        for group in self.subgroups:
            f = self.feature(group.column)
            for name, mask in zip(
                group.group_names(f), group.masks(f, df[group.column]), strict=True
            ):
                out[name] = mask
        return out

    @property
    def subgroup_names(self) -> list[str]:
        return [n for g in self.subgroups for n in g.group_names(self.feature(g.column))]

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
