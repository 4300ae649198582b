"""The expectation suite, generated from the contract: no column is named here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from pipeline.contract import Contract, Feature
from pipeline.validation.gx import import_gx

if TYPE_CHECKING:  # pragma: no cover
    import great_expectations as gx

UnknownColumns = Literal["warn", "fail"]


def fmt(x: float) -> str:
    return f"{x:g}"


def _bounds(lo: float, hi: float, unit: str | None) -> str:
    return f"[{fmt(lo)}, {fmt(hi)}]" + (f" {unit}" if unit else "")


def _missing_rule(f: Feature) -> str:
    codes = f" (missing codes {[fmt(c) for c in f.missing_codes]} count as missing)"
    if not f.nullable:
        return "not null (nullable: false)"
    return f"missing rate <= {fmt(f.max_missing_rate)}" + (codes if f.missing_codes else "")


def _cohort_expectation(gxe: Any, rule: Any, rule_text: str) -> Any:
    """The GE expectation that no row meets an exclusion (missing values never do)."""
    meta = {"rule": rule_text, "check": "cohort"}
    v = float(rule.value)
    if rule.op == ">=":
        return gxe.ExpectColumnValuesToBeBetween(
            column=rule.column, max_value=v, strict_max=True, meta=meta
        )
    if rule.op == ">":
        return gxe.ExpectColumnValuesToBeBetween(column=rule.column, max_value=v, meta=meta)
    if rule.op == "<":
        return gxe.ExpectColumnValuesToBeBetween(column=rule.column, min_value=v, meta=meta)
    if rule.op == "<=":
        return gxe.ExpectColumnValuesToBeBetween(
            column=rule.column, min_value=v, strict_min=True, meta=meta
        )
    if rule.op == "==":
        return gxe.ExpectColumnValuesToNotBeInSet(column=rule.column, value_set=[v], meta=meta)
    return gxe.ExpectColumnValuesToBeInSet(column=rule.column, value_set=[v], meta=meta)


def build_suite(
    contract: Contract,
    *,
    min_rows: int = 100,
    unknown_columns: UnknownColumns = "fail",
    columns: Iterable[str] | None = None,
) -> gx.ExpectationSuite:
    """The contract's Great Expectations suite.

    `columns` limits the column-level expectations to those columns (the ones present with
    the contract's physical type); the table-level ones always cover the whole contract.
    Every expectation carries ``meta["rule"]``: the short, contract-derived text reported
    when it fails.
    """
    gx = import_gx()
    import great_expectations.expectations as gxe
    from great_expectations.expectations.metadata_types import FailureSeverity

    check = set(contract.column_names if columns is None else columns)
    where = f"contract {contract.name} v{contract.version}"
    exps: list[Any] = [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=min_rows, meta={"rule": f"at least {min_rows} rows (validation.min_rows)"}
        ),
        gxe.ExpectTableColumnsToMatchSet(
            column_set=contract.column_names,
            exact_match=False,
            meta={"rule": f"every column of {where} present", "check": "required"},
        ),
        gxe.ExpectTableColumnsToMatchSet(
            column_set=contract.column_names,
            exact_match=True,
            severity=FailureSeverity.CRITICAL
            if unknown_columns == "fail"
            else FailureSeverity.WARNING,
            meta={
                "rule": f"no column outside {where} (unknown_columns: {unknown_columns})",
                "check": "unknown",
            },
        ),
    ]

    key, label = contract.key.name, contract.label.name
    if key in check:
        exps += [
            gxe.ExpectColumnValuesToNotBeNull(column=key, meta={"rule": "patient key not null"}),
            gxe.ExpectColumnValuesToBeUnique(column=key, meta={"rule": "patient key unique"}),
        ]
    if contract.index_date is not None and contract.index_date.name in check:
        exps.append(
            gxe.ExpectColumnValuesToNotBeNull(
                column=contract.index_date.name, meta={"rule": "index date not null"}
            )
        )
    if label in check:
        classes = [contract.label.negative, contract.label.positive]
        exps += [
            gxe.ExpectColumnValuesToNotBeNull(column=label, meta={"rule": "label not null"}),
            gxe.ExpectColumnValuesToBeInSet(
                column=label, value_set=classes, meta={"rule": f"label values {classes}"}
            ),
            gxe.ExpectColumnDistinctValuesToContainSet(
                column=label,
                value_set=classes,
                meta={"rule": f"both label classes {classes} present"},
            ),
        ]

    for f in contract.features:
        if f.name not in check:
            continue
        meta = {"rule": _missing_rule(f)}
        if not f.nullable:
            exps.append(gxe.ExpectColumnValuesToNotBeNull(column=f.name, meta=meta))
        elif f.max_missing_rate < 1.0:
            exps.append(
                gxe.ExpectColumnValuesToNotBeNull(
                    column=f.name, mostly=round(1.0 - f.max_missing_rate, 12), meta=meta
                )
            )
        if f.kind == "numeric":
            lo, hi = f.range  # type: ignore[misc]
            exps.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=f.name,
                    min_value=float(lo),
                    max_value=float(hi),
                    meta={"rule": f"range {_bounds(lo, hi, f.unit)}"},
                )
            )
            if f.plausible_median is not None:
                mlo, mhi = f.plausible_median
                unit = f"for {f.unit}" if f.unit else "for its unit"
                exps.append(
                    gxe.ExpectColumnMedianToBeBetween(
                        column=f.name,
                        min_value=float(mlo),
                        max_value=float(mhi),
                        meta={"rule": f"plausible range {_bounds(mlo, mhi, None)} {unit}"},
                    )
                )
        elif f.kind == "categorical":
            cats = list(f.categories or [])
            exps.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=f.name, value_set=cats, meta={"rule": f"categories {cats}"}
                )
            )

    for rule in contract.cohort.exclude:
        if rule.column not in check:
            continue
        text = f"cohort: rows with {rule.column} {rule.op} {fmt(rule.value)} must be excluded"
        if rule.reason:
            text += f" ({rule.reason})"
        exps.append(_cohort_expectation(gxe, rule, text))

    return gx.ExpectationSuite(
        name=f"{contract.name}_v{contract.version}",
        expectations=exps,
        meta={"contract": contract.name, "contract_version": contract.version},
    )
