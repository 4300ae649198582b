"""Validate one site's extract against its contract: the one entry point.

Runs inside the site: the plain-code checks, the contract's suite in Great Expectations
and the leakage check, on the extract (and the held-out extract a site keeps apart, as one
table: the rules are about the site's data). Never raises for bad data: an unreadable
file or a failed check is a finding in the summary, named by file, column and rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipeline.contract import Contract
from pipeline.errors import DataError
from pipeline.extract import Part, Window, check_types, concat_parts, read_parts
from pipeline.validation.checks import (
    column_name_results,
    partition_column_results,
    physical_type_results,
)
from pipeline.validation.counts import RowCounts
from pipeline.validation.gx import quiet_gx
from pipeline.validation.leakage import leakage_results
from pipeline.validation.records import Basis, Batch, Files, ValidationRecords, suite_digest
from pipeline.validation.run import default_docs_dir, ge_frame, row_counts, run_suite
from pipeline.validation.suite import Expectation, UnknownColumns, expectations, gx_suite
from pipeline.validation.summary import READABLE, ExpectationResult, ValidationSummary
from pipeline.validation.whole import whole_result

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def validate_extract(path: str | Path, contract: Contract, **options: Any) -> ValidationSummary:
    """Validate one extract against `contract` (the options of :func:`validate`, with
    `site` required); never raises for bad data."""
    return validate([Path(path)], contract, **options)[0]


def validate(
    paths: Sequence[Path],
    contract: Contract,
    *,
    site: str,
    unknown_columns: UnknownColumns = "fail",
    min_rows: int = 100,
    leakage_auc: float = 0.98,
    docs_dir: Path | None = None,
    write_docs: bool = True,
    window: Window | None = None,
    records: ValidationRecords | None = None,
    fresh: bool = False,
) -> tuple[ValidationSummary, tuple[pa.Table, ...] | None]:
    """Validate a site's extract, with the held-out extract it keeps apart when `paths`
    names two, as one table; the summary, and each file's table when every check passed.

    A site that trains right after validating uses the tables, so the rows it trains on
    are the rows that passed (a file replaced in between is not read) and are read once.
    The full Great Expectations result and its Data Docs are written to `docs_dir`
    (default: ``<extract>.validation`` beside the first extract) for the site's staff,
    unless `write_docs` is false; the summary holds only allow-listed, row-free fields.
    An unreadable file, or a held-out file whose schema differs, is named.

    With the site's `records` (:mod:`~pipeline.validation.records`), rows validated in an
    earlier job under the same contract, settings and code are not run through Great
    Expectations again: their recorded counts stand in, and only files no record covers
    are (GE is not even imported when there are none). The checks on the extract as a
    whole run every time, on the rows read for this job, so the answer is the one a cold
    validation gives. `fresh` ignores the records (and files new ones).
    """
    if unknown_columns not in ("warn", "fail"):
        raise ValueError("unknown_columns must be 'warn' or 'fail'")
    paths = [Path(p) for p in paths]
    try:
        parts = [read_parts(p, window) for p in paths]
        tables = tuple(_concat(p, ps, contract) for p, ps in zip(paths, parts, strict=True))
        table = (
            pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
        )
    except DataError as exc:
        return _unreadable(site, exc), None
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        error = DataError(
            f"{paths[-1]}: its schema differs from {paths[0]}'s ({type(exc).__name__})"
        )
        return _unreadable(site, error), None
    files = tuple((f"{i}:{p.name}", p.digest) for i, ps in enumerate(parts) for p in ps)
    # The window is not a setting: the files it admits are the key's (a new month that
    # closes with no new file changes nothing).
    settings = {
        "unknown_columns": unknown_columns,
        "min_rows": min_rows,
        "leakage_auc": leakage_auc,
    }
    basis = Basis.of(contract, settings) if records is not None else None
    if records is not None and basis is not None and not fresh:
        recorded = records.find(basis, files)
        if recorded is not None:
            summary = replace(recorded, validated_files=0, recorded_files=len(files))
            return summary, (tables if recorded.passed else None)
    docs = None
    if write_docs:
        docs = default_docs_dir(paths[0]) if docs_dir is None else Path(docs_dir)
    summary = _validate(
        table,
        paths,
        parts,
        files,
        contract,
        site,
        unknown_columns,
        min_rows,
        leakage_auc,
        docs,
        records,
        basis,
        fresh,
    )
    if records is not None and basis is not None:
        records.keep(basis, files, summary)
    return summary, (tables if summary.passed else None)


def _concat(path: Path, parts: list[Part], contract: Contract) -> pa.Table:
    """One extract's files as one table; on failure the most specific error (per file
    and column)."""
    try:
        return concat_parts(path, [p.table for p in parts])
    except DataError:
        # Files that disagree on a type: name the file and column.
        for p in parts:
            check_types(p.file, p.table.schema, contract.arrow_schema)
        raise


def _validate(
    table: pa.Table,
    paths: Sequence[Path],
    parts: Sequence[Sequence[Part]],
    files: Files,
    contract: Contract,
    site: str,
    unknown_columns: UnknownColumns,
    min_rows: int,
    leakage_auc: float,
    docs: Path | None,
    records: ValidationRecords | None,
    basis: Basis | None,
    fresh: bool,
) -> ValidationSummary:
    results, ok_types = physical_type_results(table, contract)
    names, warns = column_name_results(table.column_names, contract, unknown_columns)
    results += names
    for path, ps in zip(paths, parts, strict=True):
        columns = {p.name: p.table.column_names for p in ps} if path.is_dir() else {}
        results += partition_column_results(columns, table.column_names, contract)
    exps = expectations(
        contract, min_rows=min_rows, unknown_columns=unknown_columns, columns=ok_types
    )
    per_row = [e for e in exps if e.per_row]
    suite = suite_digest(per_row)
    batches = []
    if records is not None and basis is not None and not fresh:
        batches = records.batches(basis, suite, files)
    covered = {name for b in batches for name, _ in b.files}
    new = [i for i, (name, _) in enumerate(files) if name not in covered]
    counted = [b.counts for b in batches]
    errors: list[str] = []
    try:
        with quiet_gx():
            df = ge_frame(table, contract, ok_types)
            if new and per_row:
                run = _run(df, _rows(parts, new), per_row, docs, warns)
                counted.append(tuple(run))
                if records is not None and basis is not None and not any(c.raised for c in run):
                    records.keep_batch(
                        basis, suite, Batch(tuple(files[i] for i in new), tuple(run))
                    )
            # Each rule's counts summed over the recorded batches and this job's run.
            by_row = (sum(column, RowCounts()) for column in zip(*counted, strict=True))
            for e in exps:
                if e.per_row:
                    results.append(next(by_row).result(e))
                elif e.critical:
                    results.append(whole_result(e, df, table.column_names))
            results += leakage_results(df, contract, leakage_auc, ok_types)
    except Exception as exc:  # noqa: BLE001 - a broken extract must not stop the site
        errors.append(f"{paths[0]}: validation could not run ({type(exc).__name__})")
    return ValidationSummary(
        site=site,
        rows=int(table.num_rows),
        passed=not errors and all(r.success for r in results),
        results=tuple(results),
        errors=tuple(errors),
        warnings=tuple(warns),
        validated_files=len(new),
        recorded_files=len(files) - len(new),
    )


def _rows(parts: Sequence[Sequence[Part]], chosen: list[int]) -> np.ndarray | None:
    """Positions in the whole table of the rows of the `chosen` files (None: all)."""
    sizes = [p.table.num_rows for ps in parts for p in ps]
    if len(chosen) == len(sizes):
        return None
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return np.concatenate([np.arange(starts[i], starts[i + 1]) for i in chosen])


def _run(
    df: pd.DataFrame,
    rows: np.ndarray | None,
    per_row: list[Expectation],
    docs: Path | None,
    warns: list[str],
) -> list[RowCounts]:
    """Great Expectations on the given rows: the counts of each row-by-row expectation."""
    batch = df if rows is None else df.iloc[rows].reset_index(drop=True)
    gx_result, docs_error = run_suite(batch, gx_suite(per_row), docs)
    if docs_error:
        warns.append(docs_error)
    return row_counts(gx_result, len(per_row))


def _unreadable(site: str, exc: DataError) -> ValidationSummary:
    unreadable = ExpectationResult(
        READABLE, None, False, rule="a readable Parquet extract with at least one row"
    )
    return ValidationSummary(
        site=site, rows=0, passed=False, results=(unreadable,), errors=(str(exc),)
    )
