"""The contract's expectations: no column is named here.

Each is a plain :class:`Expectation` (GE's type name, its arguments, the rule reported
when it fails), so the suite can be described and compared without importing Great
Expectations. Those that hold row by row (not null, in range, in a set) are run by GE on
the rows a job has not validated before, and their counts add up across files; those
about the extract as a whole (row count, columns, unique keys, both label classes, the
median) are computed in plain code on every job's whole table
(:mod:`~pipeline.validation.whole`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pipeline.contract import Contract, Feature
from pipeline.validation.gx import import_gx

if TYPE_CHECKING:  # pragma: no cover
    import great_expectations as gx

UnknownColumns = Literal["warn", "fail"]

NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
NOT_IN_SET = "expect_column_values_to_not_be_in_set"
ROW_COUNT = "expect_table_row_count_to_be_between"
COLUMNS = "expect_table_columns_to_match_set"
UNIQUE = "expect_column_values_to_be_unique"
DISTINCT = "expect_column_distinct_values_to_contain_set"
MEDIAN = "expect_column_median_to_be_between"

PER_ROW = frozenset({NOT_NULL, BETWEEN, IN_SET, NOT_IN_SET})


@dataclass(frozen=True)
class Expectation:
    """One rule of the contract, in Great Expectations' terms."""

    type: str
    kwargs: Mapping[str, Any] = field(hash=False)
    rule: str
    critical: bool = True  # False: a finding reported as a warning, not a failure

    @property
    def column(self) -> str | None:
        return self.kwargs.get("column")

    @property
    def per_row(self) -> bool:
        """Holds row by row: its counts over two sets of rows add up."""
        return self.type in PER_ROW


def fmt(x: float) -> str:
    return f"{x:g}"


def _bounds(lo: float, hi: float, unit: str | None) -> str:
    return f"[{fmt(lo)}, {fmt(hi)}]" + (f" {unit}" if unit else "")


def _missing_rule(f: Feature) -> str:
    codes = f" (missing codes {[fmt(c) for c in f.missing_codes]} count as missing)"
    if not f.nullable:
        return "not null (nullable: false)"
    return f"missing rate <= {fmt(f.max_missing_rate)}" + (codes if f.missing_codes else "")


def _cohort(rule: Any, text: str) -> Expectation:
    """That no row meets an exclusion (missing values never do)."""
    v = float(rule.value)
    col = rule.column
    if rule.op == ">=":
        return Expectation(BETWEEN, {"column": col, "max_value": v, "strict_max": True}, text)
    if rule.op == ">":
        return Expectation(BETWEEN, {"column": col, "max_value": v}, text)
    if rule.op == "<":
        return Expectation(BETWEEN, {"column": col, "min_value": v}, text)
    if rule.op == "<=":
        return Expectation(BETWEEN, {"column": col, "min_value": v, "strict_min": True}, text)
    if rule.op == "==":
        return Expectation(NOT_IN_SET, {"column": col, "value_set": [v]}, text)
    return Expectation(IN_SET, {"column": col, "value_set": [v]}, text)


def expectations(
    contract: Contract,
    *,
    min_rows: int = 100,
    unknown_columns: UnknownColumns = "fail",
    columns: Iterable[str] | None = None,
) -> list[Expectation]:
    """The contract's expectations, in a fixed order.

    `columns` limits the column-level expectations to those columns (the ones present with
    the contract's physical type); the table-level ones always cover the whole contract.
    """
    check = set(contract.column_names if columns is None else columns)
    where = f"contract {contract.name} v{contract.version}"
    names = list(contract.column_names)
    exps = [
        Expectation(
            ROW_COUNT, {"min_value": min_rows}, f"at least {min_rows} rows (validation.min_rows)"
        ),
        Expectation(
            COLUMNS,
            {"column_set": names, "exact_match": False},
            f"every column of {where} present",
        ),
        Expectation(
            COLUMNS,
            {"column_set": names, "exact_match": True},
            f"no column outside {where} (unknown_columns: {unknown_columns})",
            critical=unknown_columns == "fail",
        ),
    ]
    key, label = contract.key.name, contract.label.name
    if key in check:
        exps += [
            Expectation(NOT_NULL, {"column": key}, "patient key not null"),
            Expectation(UNIQUE, {"column": key}, "patient key unique"),
        ]
    if contract.index_date is not None and contract.index_date.name in check:
        exps.append(
            Expectation(NOT_NULL, {"column": contract.index_date.name}, "index date not null")
        )
    if label in check:
        classes = [contract.label.negative, contract.label.positive]
        exps += [
            Expectation(NOT_NULL, {"column": label}, "label not null"),
            Expectation(IN_SET, {"column": label, "value_set": classes}, f"label values {classes}"),
            Expectation(
                DISTINCT,
                {"column": label, "value_set": classes},
                f"both label classes {classes} present",
            ),
        ]
    for f in contract.features:
        if f.name not in check:
            continue
        if not f.nullable:
            exps.append(Expectation(NOT_NULL, {"column": f.name}, _missing_rule(f)))
        elif f.max_missing_rate < 1.0:
            mostly = round(1.0 - f.max_missing_rate, 12)
            exps.append(
                Expectation(NOT_NULL, {"column": f.name, "mostly": mostly}, _missing_rule(f))
            )
        if f.kind == "numeric":
            lo, hi = f.range  # type: ignore[misc]
            exps.append(
                Expectation(
                    BETWEEN,
                    {"column": f.name, "min_value": float(lo), "max_value": float(hi)},
                    f"range {_bounds(lo, hi, f.unit)}",
                )
            )
            if f.plausible_median is not None:
                mlo, mhi = f.plausible_median
                unit = f"for {f.unit}" if f.unit else "for its unit"
                exps.append(
                    Expectation(
                        MEDIAN,
                        {"column": f.name, "min_value": float(mlo), "max_value": float(mhi)},
                        f"plausible range {_bounds(mlo, mhi, None)} {unit}",
                    )
                )
        elif f.kind == "categorical":
            cats = list(f.categories or [])
            exps.append(
                Expectation(IN_SET, {"column": f.name, "value_set": cats}, f"categories {cats}")
            )
    for rule in contract.cohort.exclude:
        if rule.column not in check:
            continue
        text = f"cohort: rows with {rule.column} {rule.op} {fmt(rule.value)} must be excluded"
        if rule.reason:
            text += f" ({rule.reason})"
        exps.append(_cohort(rule, text))
    return exps


def gx_suite(exps: Sequence[Expectation], name: str = "contract") -> gx.ExpectationSuite:
    """`exps` as a Great Expectations suite; each carries its position in `exps`
    (``meta["index"]``: GE reorders results) and its rule (``meta["rule"]``)."""
    gx = import_gx()
    import great_expectations.expectations as gxe
    from great_expectations.expectations.metadata_types import FailureSeverity

    out = []
    for i, e in enumerate(exps):
        cls = getattr(gxe, "".join(w.title() for w in e.type.split("_")))
        severity = FailureSeverity.CRITICAL if e.critical else FailureSeverity.WARNING
        out.append(cls(**e.kwargs, severity=severity, meta={"rule": e.rule, "index": i}))
    return gx.ExpectationSuite(name=name, expectations=out)


def build_suite(
    contract: Contract,
    *,
    min_rows: int = 100,
    unknown_columns: UnknownColumns = "fail",
    columns: Iterable[str] | None = None,
) -> gx.ExpectationSuite:
    """The contract's whole suite in Great Expectations (every rule, as the site's staff
    would read it)."""
    exps = expectations(
        contract, min_rows=min_rows, unknown_columns=unknown_columns, columns=columns
    )
    return gx_suite(exps, name=f"{contract.name}_v{contract.version}")
