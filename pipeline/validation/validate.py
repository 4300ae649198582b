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
from typing import Any

import pyarrow as pa

from pipeline.contract import Contract
from pipeline.errors import DataError
from pipeline.extract import Window, list_partitions, read_table
from pipeline.validation.checks import (
    column_name_results,
    partition_column_results,
    physical_type_results,
)
from pipeline.validation.gx import quiet_gx
from pipeline.validation.leakage import leakage_results
from pipeline.validation.records import RecordKey, ValidationRecords, digests
from pipeline.validation.run import default_docs_dir, ge_frame, run_suite, summarize
from pipeline.validation.suite import UnknownColumns, build_suite
from pipeline.validation.summary import READABLE, ExpectationResult, ValidationSummary


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

    With the site's `records` (:mod:`~pipeline.validation.records`), an extract whose
    files, contract, settings and validation code are all as they were when it was last
    validated is not validated again (Great Expectations is not even imported): its
    summary is the recorded one, and the files are read only for the rows, checked
    unchanged after the read. `fresh` ignores the records (and files a new one).
    """
    if unknown_columns not in ("warn", "fail"):
        raise ValueError("unknown_columns must be 'warn' or 'fail'")
    paths = [Path(p) for p in paths]
    # The window is not a setting: the files it admits are the key's (a new month that
    # closes with no new file changes nothing).
    settings = {
        "unknown_columns": unknown_columns,
        "min_rows": min_rows,
        "leakage_auc": leakage_auc,
    }
    files = _files(paths, window) if records is not None else None
    key = RecordKey.of(files, contract, settings) if files else None
    if key is not None and records is not None and not fresh:
        recorded = records.find(key)
        if recorded is not None:
            reused = _reuse(recorded, paths, contract, window, key, len(files or ()))
            if reused is not None:
                return reused
    summary, tables = _validate(
        paths,
        contract,
        site,
        unknown_columns,
        min_rows,
        leakage_auc,
        docs_dir,
        write_docs,
        window,
    )
    summary = replace(summary, validated_files=len(files or ()))
    if key is not None and records is not None:
        records.keep(key, summary)
    return summary, tables


def _files(paths: Sequence[Path], window: Window | None) -> list[tuple[str, str]] | None:
    """(name within its extract, path) of every file the validation reads; None when the
    extract cannot even be listed (the validation itself says why)."""
    out = []
    try:
        for i, root in enumerate(paths):
            for f in list_partitions(root, window):
                name = Path(f).name if root.is_file() else str(Path(f).relative_to(root))
                out.append((f"{i}:{name}", f))
    except DataError:
        return None
    return out


def _reuse(
    recorded: ValidationSummary,
    paths: Sequence[Path],
    contract: Contract,
    window: Window | None,
    key: RecordKey,
    count: int,
) -> tuple[ValidationSummary, tuple[pa.Table, ...] | None] | None:
    """The recorded summary, with the tables of an extract that passed read again for its
    rows; None when a file changed while it was read (then it is validated again)."""
    summary = replace(recorded, validated_files=0, recorded_files=count)
    if not recorded.passed:
        return summary, None
    try:
        tables = tuple(_read(p, contract, window) for p in paths)
    except DataError:
        return None
    files = _files(paths, window)
    if files is None or digests(files) != key.files:
        return None
    return summary, tables


def _validate(
    paths: Sequence[Path],
    contract: Contract,
    site: str,
    unknown_columns: UnknownColumns,
    min_rows: int,
    leakage_auc: float,
    docs_dir: Path | None,
    write_docs: bool,
    window: Window | None,
) -> tuple[ValidationSummary, tuple[pa.Table, ...] | None]:
    try:
        parts = tuple(_read(p, contract, window) for p in paths)
        table = pa.concat_tables(parts, promote_options="default") if len(parts) > 1 else parts[0]
    except DataError as exc:
        return _unreadable(site, exc), None
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        error = DataError(
            f"{paths[-1]}: its schema differs from {paths[0]}'s ({type(exc).__name__})"
        )
        return _unreadable(site, error), None
    docs = None
    if write_docs:
        docs = default_docs_dir(paths[0]) if docs_dir is None else Path(docs_dir)
    results, ok_types = physical_type_results(table, contract)
    names, warns = column_name_results(table.column_names, contract, unknown_columns)
    results += names
    for p in paths:
        results += partition_column_results(p, table.column_names, contract, window)
    errors: list[str] = []
    try:
        with quiet_gx():
            df = ge_frame(table, contract, ok_types)
            suite = build_suite(
                contract, min_rows=min_rows, unknown_columns=unknown_columns, columns=ok_types
            )
            gx_result, docs_error = run_suite(df, suite, docs)
            results += summarize(gx_result)
            if docs_error:
                warns.append(docs_error)
            results += leakage_results(df, contract, leakage_auc, ok_types)
    except Exception as exc:  # noqa: BLE001 - a broken extract must not stop the site
        errors.append(f"{paths[0]}: validation could not run ({type(exc).__name__})")
    passed = not errors and all(r.success for r in results)
    summary = ValidationSummary(
        site=site,
        rows=int(table.num_rows),
        passed=passed,
        results=tuple(results),
        errors=tuple(errors),
        warnings=tuple(warns),
    )
    return summary, (parts if passed else None)


def _unreadable(site: str, exc: DataError) -> ValidationSummary:
    unreadable = ExpectationResult(
        READABLE, None, False, rule="a readable Parquet extract with at least one row"
    )
    return ValidationSummary(
        site=site, rows=0, passed=False, results=(unreadable,), errors=(str(exc),)
    )


def _read(path: Path, contract: Contract, window: Window | None) -> pa.Table:
    """The extract's table; on failure the most specific error (per file and column)."""
    try:
        return read_table(path, window=window)
    except DataError:
        # Partitions that disagree on a type: re-read per file with the contract's schema
        # so the message names the file and column; otherwise keep the first error.
        try:
            read_table(path, contract.arrow_schema, window)
        except DataError as specific:
            raise specific from None
        except Exception:  # noqa: BLE001 - keep the first error
            pass
        raise
    except Exception as exc:  # anything else Arrow raises for a malformed file
        raise DataError(f"{path}: not a readable Parquet extract ({type(exc).__name__})") from exc
