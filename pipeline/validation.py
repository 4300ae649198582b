"""Validate one site's extract against its contract with Great Expectations; redact the result.

Runs inside the site. The expectation suite is generated from the contract (no column is
named here), run with Great Expectations on the site's rows, and the full result (with GE's
example values) is written beside the extract as Data Docs for the site's staff. What leaves
the site is a :class:`ValidationSummary` built from an allow-list: per expectation its type,
column, success, counts, rate and a short rule taken from the contract, never a row value.

Checks Great Expectations cannot express are computed here in plain code and reported in
the same shape: the physical Arrow type of each column, identifier columns on the contract's
denylist, label leakage (a single column whose AUC against the label is near-perfect) and an
unreadable extract.

Great Expectations is imported inside the functions that run it: importing this module is
cheap, so the site actor can import it before it knows it will validate (and call
:func:`preload` to pay for GE's import while it starts, not in its first validation).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.contract import Contract, Feature
from pipeline.errors import DataError, QuorumError
from pipeline.extract import Window, partition_columns, read_table

if TYPE_CHECKING:  # pragma: no cover
    import great_expectations as gx

UnknownColumns = Literal["warn", "fail"]

# Expectation types for the checks computed in plain code (GE's own types are used as is).
READABLE = "expect_extract_to_be_readable"
PHYSICAL_TYPE = "expect_column_physical_type_to_be"
NO_IDENTIFIERS = "expect_column_not_on_identifier_denylist"
NO_LEAKAGE = "expect_column_not_to_predict_label"
MISSING_COLUMN = "expect_column_to_exist"
UNKNOWN_COLUMN = "expect_column_to_be_in_contract"

_LEAKAGE_MIN_CLASS = 10  # fewer cases or controls than this: no AUC is meaningful
_LEAKAGE_MAX_LEVELS = 50  # string columns with more levels are identifiers, not features
_DOCS_SITE = "site_validation"
_GX_LOGGER = "great_expectations"


# ---------------------------------------------------------------------------------------
# The redacted summary: the only thing that leaves the site
# ---------------------------------------------------------------------------------------
def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)):
        raise ValueError(f"expected an integer count, got {type(value).__name__}")
    return int(value)


def _opt_rate(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"expected a rate, got {type(value).__name__}")
    rate = float(value)
    return rate if math.isfinite(rate) else None


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class ExpectationResult:
    """One expectation's outcome: counts and a contract-derived rule, never a row value."""

    expectation_type: str
    column: str | None
    success: bool
    element_count: int | None = None
    unexpected_count: int | None = None
    unexpected_rate: float | None = None
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExpectationResult:
        _only_keys(data, {f for f in cls.__dataclass_fields__}, "expectation result")
        return cls(
            expectation_type=str(data["expectation_type"]),
            column=_opt_str(data.get("column")),
            success=bool(data["success"]),
            element_count=_opt_int(data.get("element_count")),
            unexpected_count=_opt_int(data.get("unexpected_count")),
            unexpected_rate=_opt_rate(data.get("unexpected_rate")),
            rule=str(data.get("rule", "")),
        )

    def describe(self) -> str:
        """`column: rule`, with the failing count when there is one."""
        where = self.column if self.column is not None else "table"
        if self.expectation_type == READABLE:
            where = "extract"
        if self.expectation_type == "expect_column_median_to_be_between":
            return f"{where}: median outside {self.rule}: unit looks wrong"
        text = f"{where}: {self.rule}"
        if self.unexpected_count and self.element_count:
            text += f" ({self.unexpected_count} of {self.element_count} values fail)"
        return text


@dataclass(frozen=True)
class ValidationSummary:
    """The redacted outcome of validating one site's extract.

    Built from an allow-list of fields; safe to return from the site. ``errors`` are
    file-level problems (an unreadable extract) and ``warnings`` findings that do not fail
    the extract (unknown columns under ``unknown_columns="warn"``).
    """

    site: str
    rows: int
    passed: bool
    results: tuple[ExpectationResult, ...] = ()
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def failures(self) -> list[str]:
        """The failed expectations as `column: rule` strings (``table:`` for table-level
        ones, ``extract:`` for an unreadable extract, whose message is in ``errors``)."""
        return [r.describe() for r in self.results if not r.success]

    def reasons(self) -> list[str]:
        """Everything that failed the extract: file-level errors first, then `failures()`."""
        return list(self.errors) + self.failures()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists, strings, numbers, booleans and None only)."""
        return {
            "site": self.site,
            "rows": self.rows,
            "passed": self.passed,
            "results": [r.to_dict() for r in self.results],
            "errors": list(self.errors),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationSummary:
        """Rebuild a summary; unknown keys are refused (the allow-list works both ways)."""
        _only_keys(data, {f for f in cls.__dataclass_fields__}, "validation summary")
        return cls(
            site=str(data["site"]),
            rows=_opt_int(data["rows"]) or 0,
            passed=bool(data["passed"]),
            results=tuple(ExpectationResult.from_dict(r) for r in data.get("results", ())),
            errors=tuple(str(e) for e in data.get("errors", ())),
            warnings=tuple(str(w) for w in data.get("warnings", ())),
        )


def _only_keys(data: Mapping[str, Any], allowed: set[str], what: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise ValueError(f"{what}: fields not on the allow-list: {extra}")


# ---------------------------------------------------------------------------------------
# Admission: which sites take part
# ---------------------------------------------------------------------------------------
def admit(
    summaries: Iterable[ValidationSummary], quorum: int
) -> tuple[list[str], dict[str, list[str]]]:
    """Sites that passed validation, and the others with their reasons.

    Raises :class:`QuorumError` when fewer than `quorum` sites passed.
    """
    if quorum < 1:
        raise ValueError("quorum must be at least 1")
    summaries = [
        s if isinstance(s, ValidationSummary) else ValidationSummary.from_dict(s) for s in summaries
    ]
    admitted = [s.site for s in summaries if s.passed]
    quarantined = {
        s.site: (s.reasons() or ["failed validation"]) for s in summaries if not s.passed
    }
    if len(admitted) < quorum:
        reasons = "; ".join(
            f"{site}: {why[0]}" + (f" (+{len(why) - 1} more)" if len(why) > 1 else "")
            for site, why in quarantined.items()
        )
        raise QuorumError(
            f"only {len(admitted)} of {len(summaries)} sites passed validation, "
            f"the quorum is {quorum}" + (f". Quarantined: {reasons}" if reasons else "")
        )
    return admitted, quarantined


# ---------------------------------------------------------------------------------------
# The expectation suite, generated from the contract
# ---------------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return f"{x:g}"


def _bounds(lo: float, hi: float, unit: str | None) -> str:
    return f"[{_fmt(lo)}, {_fmt(hi)}]" + (f" {unit}" if unit else "")


def _missing_rule(f: Feature) -> str:
    codes = f" (missing codes {[_fmt(c) for c in f.missing_codes]} count as missing)"
    if not f.nullable:
        return "not null (nullable: false)"
    return f"missing rate <= {_fmt(f.max_missing_rate)}" + (codes if f.missing_codes else "")


_COHORT_PHRASE = {"<": "below", "<=": "at or below", ">": "above", ">=": "at or above"}


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
    gx = _import_gx()
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
        text = f"cohort: rows with {rule.column} {rule.op} {_fmt(rule.value)} must be excluded"
        if rule.reason:
            text += f" ({rule.reason})"
        exps.append(_cohort_expectation(gxe, rule, text))

    return gx.ExpectationSuite(
        name=f"{contract.name}_v{contract.version}",
        expectations=exps,
        meta={"contract": contract.name, "contract_version": contract.version},
    )


# ---------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------
def _import_gx() -> Any:
    """Great Expectations, imported on first use with its usage analytics off.

    The import creates a few hundred thousand long-lived objects, and the cyclic garbage
    collector, triggered again and again by them, found nothing to free but cost a fifth
    of the import's CPU time: it is paused while the import runs. That time is paid once
    per site process, all of them at once when a job starts its sites."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if "great_expectations" in sys.modules:
        return sys.modules["great_expectations"]
    enabled = gc.isenabled()
    gc.disable()
    try:
        import great_expectations
        import great_expectations.expectations  # noqa: F401
    finally:
        if enabled:
            gc.enable()
    return great_expectations


def preload() -> None:
    """Import Great Expectations now (it takes seconds), e.g. while a site actor starts, so
    the first validation does not pay for it."""
    with _quiet_gx():
        _import_gx()


def default_docs_dir(path: str | Path) -> Path:
    """Where the site's full validation report goes: beside the extract."""
    path = Path(path)
    return path.parent / f"{path.name}.validation"


@contextlib.contextmanager
def _quiet_gx() -> Iterator[None]:
    """Great Expectations' logging and library warnings off while it runs: its messages can
    quote row values, and they would land in the site's (shipped) logs."""
    logger = logging.getLogger(_GX_LOGGER)
    saved = (logger.level, logger.propagate, list(logger.handlers))
    null = logging.NullHandler()
    logger.addHandler(null)
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.removeHandler(null)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _physical_type_results(
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


def _column_name_results(
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


def _partition_column_results(
    path: Path, columns: Sequence[str], contract: Contract, window: Window | None
) -> list[ExpectationResult]:
    """A contract column that some partition files hold and others lack: named per file
    (the merged table would show it only as nulls)."""
    required = [c for c in contract.column_names if c in set(columns)]
    where = f"contract {contract.name} v{contract.version}"
    results = []
    for file, names in partition_columns(path, window).items():
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


def _ge_frame(table: pa.Table, contract: Contract, typed: set[str]) -> pd.DataFrame:
    """The rows as Great Expectations' pandas engine runs fastest on them.

    GE filters the whole frame once or twice per expectation, so every column must be cheap
    to take: one chunk per column, the contract's categories as pandas categoricals,
    integers as int64 (GE's vectorized range check), booleans with nulls as float, dates as
    datetime64. Values that are one of a feature's missing codes become missing. Values are
    otherwise unchanged.
    """
    for i, name in enumerate(table.column_names):
        col = table[name]
        if col.num_chunks > 1 and (
            pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
        ):
            table = table.set_column(i, name, pa.chunked_array([col.combine_chunks()]))
    features = {f.name: f for f in contract.features}
    df = table.to_pandas(date_as_object=False)
    for name in table.column_names:
        typ = table.schema.field(name).type
        f = features.get(name)
        if pa.types.is_null(typ):
            df[name] = pd.Series(np.nan, index=df.index, dtype="float64")
        elif f is not None and f.kind == "categorical" and pa.types.is_string(typ):
            df[name] = table[name].dictionary_encode().to_pandas()
        elif pa.types.is_integer(typ) and df[name].dtype != np.int64:
            df[name] = df[name].astype(np.float64 if table[name].null_count else np.int64)
        elif pa.types.is_boolean(typ) and table[name].null_count:
            df[name] = table[name].cast(pa.float64()).to_pandas()
        if f is not None and f.missing_codes and name in typed:
            df[name] = df[name].mask(df[name].isin(f.missing_codes))
    return df


def _summarize_gx(result: Any) -> list[ExpectationResult]:
    """GE's result -> allow-listed fields. Observed values, unexpected lists and exception
    messages are dropped here: they may quote row values."""
    out = []
    for r in result.results:
        cfg = r.expectation_config
        kind = cfg.type
        column = cfg.kwargs.get("column")
        rule = str((cfg.meta or {}).get("rule", kind))
        raised = bool((r.exception_info or {}).get("raised_exception"))
        res = r.result or {}
        if kind == "expect_table_columns_to_match_set" and cfg.severity != "critical":
            continue  # unknown columns allowed: reported as warnings, per column
        if raised:
            rule += " (could not be evaluated)"
        unexpected = res.get("unexpected_count")
        element = res.get("element_count")
        rate = res.get("unexpected_percent")
        out.append(
            ExpectationResult(
                expectation_type=str(kind),
                column=str(column) if column is not None else None,
                success=bool(r.success) and not raised,
                element_count=_opt_int(element),
                unexpected_count=_opt_int(unexpected),
                unexpected_rate=None if rate is None else _opt_rate(float(rate) / 100.0),
                rule=rule,
            )
        )
    return out


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC of groups given in ascending score order (ties within a group count half)."""
    n1, n0 = pos.sum(), neg.sum()
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (n1 * n0))


def _leak_scores(values: pd.Series, y: np.ndarray) -> list[float]:
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


def _leakage_results(
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
    rule = f"label leakage: single-column AUC >= {_fmt(threshold)} against {label}"
    out = []
    for col in df.columns:
        if col in (label, contract.key.name):
            continue
        try:
            scores = _leak_scores(df[col][known], y[known])
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


def _run_gx(
    df: pd.DataFrame, suite: gx.ExpectationSuite, docs_dir: Path | None
) -> tuple[Any, str | None]:
    """Validate with an ephemeral context; build Data Docs into `docs_dir`."""
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    if docs_dir is not None:
        context.add_data_docs_site(
            _DOCS_SITE,
            {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    batch_def = (
        context.data_sources.add_pandas("site")
        .add_dataframe_asset("extract")
        .add_batch_definition_whole_dataframe("whole extract")
    )
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="contract", data=batch_def, suite=suite)
    )
    result = definition.run(
        batch_parameters={"dataframe": df},
        result_format={"result_format": "BASIC", "partial_unexpected_count": 20},
    )
    docs_error = None
    if docs_dir is not None:
        try:
            docs_dir.mkdir(parents=True, exist_ok=True)
            (docs_dir / "validation_result.json").write_text(
                json.dumps(result.to_json_dict(), indent=2, default=str)
            )
            # Only this run's validation page (and the index): the suite page adds nothing
            # the validation page does not show, and rendering it costs seconds.
            keys = context.validation_results_store.list_keys()
            context.build_data_docs(site_names=[_DOCS_SITE], resource_identifiers=keys)
        except Exception as exc:  # docs are a courtesy to the site's staff, never fatal
            docs_error = f"{docs_dir}: could not write the validation report ({type(exc).__name__})"
    return result, docs_error


def validate_extract(path: str | Path, contract: Contract, **options: Any) -> ValidationSummary:
    """Validate one site's extract against `contract`; never raises for bad data.

    The options and what is written are those of :func:`validate_table`."""
    return validate_table(path, contract, **options)[0]


def validate_table(
    path: str | Path,
    contract: Contract,
    *,
    site: str,
    unknown_columns: UnknownColumns = "fail",
    min_rows: int = 100,
    leakage_auc: float = 0.98,
    docs_dir: Path | None = None,
    write_docs: bool = True,
    window: Window | None = None,
) -> tuple[ValidationSummary, pa.Table | None]:
    """Validate one site's extract; the summary, and the table when every check passed.

    Never raises for bad data. The full Great Expectations result and its Data Docs are
    written to `docs_dir` (default: ``<extract>.validation`` beside the extract) for the
    site's staff, unless `write_docs` is false; the summary holds only allow-listed,
    row-free fields. A site that trains right after validating uses the table, so the
    rows it trains on are the rows that passed (a file replaced in between is not read)
    and are read once.
    """
    if unknown_columns not in ("warn", "fail"):
        raise ValueError("unknown_columns must be 'warn' or 'fail'")
    path = Path(path)
    try:
        table = _read(path, contract, window)
    except DataError as exc:
        return _unreadable(site, exc), None
    docs = None
    if write_docs:
        docs = default_docs_dir(path) if docs_dir is None else Path(docs_dir)
    return _validate(
        table,
        [path],
        contract,
        site=site,
        unknown_columns=unknown_columns,
        min_rows=min_rows,
        leakage_auc=leakage_auc,
        docs=docs,
        window=window,
    )


def validate_with_held_out(
    path: str | Path,
    held_out: str | Path,
    contract: Contract,
    *,
    site: str,
    unknown_columns: UnknownColumns = "fail",
    min_rows: int = 100,
    leakage_auc: float = 0.98,
    window: Window | None = None,
) -> tuple[ValidationSummary, tuple[pa.Table, pa.Table] | None]:
    """Validate a site's extract together with the held-out extract it keeps apart, as
    one table (the rules are about the site's data: both label classes, missing rates,
    row count), and return the two tables when every check passed.

    The site trains on the first and evaluates on the second. An unreadable file is
    named; the Data Docs go beside the extract."""
    if unknown_columns not in ("warn", "fail"):
        raise ValueError("unknown_columns must be 'warn' or 'fail'")
    paths = [Path(path), Path(held_out)]
    try:
        parts = [_read(p, contract, window) for p in paths]
        table = pa.concat_tables(parts, promote_options="default")
    except DataError as exc:
        return _unreadable(site, exc), None
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        error = DataError(f"{held_out}: its schema differs from {path}'s ({type(exc).__name__})")
        return _unreadable(site, error), None
    summary, checked = _validate(
        table,
        paths,
        contract,
        site=site,
        unknown_columns=unknown_columns,
        min_rows=min_rows,
        leakage_auc=leakage_auc,
        docs=default_docs_dir(paths[0]),
        window=window,
    )
    return summary, (tuple(parts) if checked is not None else None)  # type: ignore[return-value]


def _unreadable(site: str, exc: DataError) -> ValidationSummary:
    unreadable = ExpectationResult(
        READABLE, None, False, rule="a readable Parquet extract with at least one row"
    )
    return ValidationSummary(
        site=site, rows=0, passed=False, results=(unreadable,), errors=(str(exc),)
    )


def _validate(
    table: pa.Table,
    paths: list[Path],
    contract: Contract,
    *,
    site: str,
    unknown_columns: UnknownColumns,
    min_rows: int,
    leakage_auc: float,
    docs: Path | None,
    window: Window | None = None,
) -> tuple[ValidationSummary, pa.Table | None]:
    path = paths[0]
    results, ok_types = _physical_type_results(table, contract)
    names, warns = _column_name_results(table.column_names, contract, unknown_columns)
    results += names
    for p in paths:
        results += _partition_column_results(p, table.column_names, contract, window)
    errors: list[str] = []
    try:
        with _quiet_gx():
            df = _ge_frame(table, contract, ok_types)
            suite = build_suite(
                contract, min_rows=min_rows, unknown_columns=unknown_columns, columns=ok_types
            )
            gx_result, docs_error = _run_gx(df, suite, docs)
            results += _summarize_gx(gx_result)
            if docs_error:
                warns.append(docs_error)
            results += _leakage_results(df, contract, leakage_auc, ok_types)
    except Exception as exc:  # noqa: BLE001 - a broken extract must not stop the site
        errors.append(f"{path}: validation could not run ({type(exc).__name__})")
    passed = not errors and all(r.success for r in results)
    summary = ValidationSummary(
        site=site,
        rows=int(table.num_rows),
        passed=passed,
        results=tuple(results),
        errors=tuple(errors),
        warnings=tuple(warns),
    )
    return summary, (table if passed else None)


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
