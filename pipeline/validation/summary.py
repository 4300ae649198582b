"""What leaves a site after validation: a redacted summary, built from an allow-list.

Per expectation: its type, column, success, counts, rate and a short rule taken from the
contract, never a row value. :meth:`ValidationSummary.from_dict` refuses unknown fields,
so the allow-list holds on the way in as well as on the way out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Expectation types for the checks computed in plain code (GE's own types are used as is).
READABLE = "expect_extract_to_be_readable"
PHYSICAL_TYPE = "expect_column_physical_type_to_be"
NO_IDENTIFIERS = "expect_column_not_on_identifier_denylist"
NO_LEAKAGE = "expect_column_not_to_predict_label"
MISSING_COLUMN = "expect_column_to_exist"
UNKNOWN_COLUMN = "expect_column_to_be_in_contract"


def opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)):
        raise ValueError(f"expected an integer count, got {type(value).__name__}")
    return int(value)


def opt_rate(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"expected a rate, got {type(value).__name__}")
    rate = float(value)
    return rate if math.isfinite(rate) else None


def opt_str(value: Any) -> str | None:
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
            column=opt_str(data.get("column")),
            success=bool(data["success"]),
            element_count=opt_int(data.get("element_count")),
            unexpected_count=opt_int(data.get("unexpected_count")),
            unexpected_rate=opt_rate(data.get("unexpected_rate")),
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
    validated_files: int = 0  # files validated in this job
    recorded_files: int = 0  # files whose result came from the site's validation records

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
            "validated_files": self.validated_files,
            "recorded_files": self.recorded_files,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationSummary:
        """Rebuild a summary; unknown keys are refused (the allow-list works both ways)."""
        _only_keys(data, {f for f in cls.__dataclass_fields__}, "validation summary")
        return cls(
            site=str(data["site"]),
            rows=opt_int(data["rows"]) or 0,
            passed=bool(data["passed"]),
            results=tuple(ExpectationResult.from_dict(r) for r in data.get("results", ())),
            errors=tuple(str(e) for e in data.get("errors", ())),
            warnings=tuple(str(w) for w in data.get("warnings", ())),
            validated_files=opt_int(data.get("validated_files")) or 0,
            recorded_files=opt_int(data.get("recorded_files")) or 0,
        )


def _only_keys(data: Mapping[str, Any], allowed: set[str], what: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise ValueError(f"{what}: fields not on the allow-list: {extra}")
