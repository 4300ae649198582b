"""Checks Great Expectations cannot express, computed in plain code and reported in the
same redacted shape: each column's physical Arrow type, missing, unknown and identifier
columns from the names alone, and contract columns missing from single partition files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

from pipeline.contract import Contract
from pipeline.validation.suite import UnknownColumns
from pipeline.validation.summary import (
    MISSING_COLUMN,
    NO_IDENTIFIERS,
    PHYSICAL_TYPE,
    UNKNOWN_COLUMN,
    ExpectationResult,
)


def physical_type_results(
    table: pa.Table, contract: Contract
) -> tuple[list[ExpectationResult], set[str]]:
    """The contract's Arrow type per column, checked on the file's own schema."""
    results, ok = [], set()
    for fld in contract.arrow_schema:
        idx = table.schema.get_field_index(fld.name)
        if idx < 0:
            continue  # reported by expect_column_to_exist
        got = table.schema.field(idx).type
        good = got == fld.type or pa.types.is_null(got)
        if good:
            ok.add(fld.name)
        rule = f"physical type {fld.type}"
        if not good:
            rule += f" (the file has {got}; rule: column type"
            if fld.name == contract.label.name:
                lab = contract.label
                rule += f"; the label is coded {lab.positive} = positive, {lab.negative} = negative"
            rule += ")"
        results.append(ExpectationResult(PHYSICAL_TYPE, fld.name, good, rule=rule))
    return results, ok


def column_name_results(
    columns: Sequence[str], contract: Contract, unknown_columns: UnknownColumns
) -> tuple[list[ExpectationResult], list[str]]:
    """Per column, from the names alone: missing contract columns, identifier columns on the
    denylist (case-insensitive) and columns the contract does not know."""
    deny = {d.lower() for d in contract.identifiers_denylist}
    known = set(contract.column_names)
    where = f"contract {contract.name} v{contract.version}"
    results = [
        ExpectationResult(MISSING_COLUMN, name, False, rule=f"column required by {where}")
        for name in contract.column_names
        if name not in set(columns)
    ]
    warns = []
    for col in columns:
        if col.lower() in deny:
            results.append(
                ExpectationResult(
                    NO_IDENTIFIERS,
                    col,
                    False,
                    rule="direct identifier column on the contract's identifiers_denylist",
                )
            )
        elif col not in known:
            text = f"unknown column, not in {where}"
            if unknown_columns == "fail":
                results.append(
                    ExpectationResult(
                        UNKNOWN_COLUMN, col, False, rule=f"{text} (unknown_columns: fail)"
                    )
                )
            else:
                warns.append(f"{col}: {text} (allowed by unknown_columns: warn)")
    if not any(r.expectation_type == NO_IDENTIFIERS for r in results):
        results.append(
            ExpectationResult(
                NO_IDENTIFIERS, None, True, rule="no column on the contract's identifiers_denylist"
            )
        )
    return results, warns


def partition_column_results(
    files: Mapping[str, Sequence[str]], columns: Sequence[str], contract: Contract
) -> list[ExpectationResult]:
    """A contract column that some partition files hold and others lack: named per file
    (the merged table would show it only as nulls). `files`: each file's column names."""
    required = [c for c in contract.column_names if c in set(columns)]
    where = f"contract {contract.name} v{contract.version}"
    results = []
    for file, names in files.items():
        for col in required:
            if col not in names:
                results.append(
                    ExpectationResult(
                        MISSING_COLUMN,
                        col,
                        False,
                        rule=f"column required by {where}; missing in partition file {file}",
                    )
                )
    return results
