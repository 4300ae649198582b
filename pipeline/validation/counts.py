"""Counts of a row-by-row expectation: what a Great Expectations run on some of an
extract's rows contributes, kept in the site's records, and added up over the extract.

An expectation that holds row by row (not null, in range, in a set) is decided by three
counts: the rows looked at, the rows missing a value and the rows that fail. Counts over
two sets of rows add, so a file validated in an earlier job contributes its recorded
counts and only new files are run; the decision (``mostly`` included) and the reported
rate are made once, from the sums, the same way whether the extract was validated in one
run or in many.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.validation.suite import NOT_NULL, Expectation
from pipeline.validation.summary import ExpectationResult, opt_int


@dataclass(frozen=True)
class RowCounts:
    element: int = 0
    unexpected: int = 0
    missing: int = 0
    raised: bool = False  # GE could not evaluate it on some rows

    def __add__(self, other: RowCounts) -> RowCounts:
        return RowCounts(
            self.element + other.element,
            self.unexpected + other.unexpected,
            self.missing + other.missing,
            self.raised or other.raised,
        )

    @classmethod
    def from_ge(cls, result: Any) -> RowCounts:
        """One GE expectation result's counts (its observed values are not read)."""
        if (result.exception_info or {}).get("raised_exception"):
            return cls(raised=True)
        res = result.result or {}
        unexpected = opt_int(res.get("unexpected_count"))
        if unexpected is None:
            return cls(raised=True)
        return cls(
            element=opt_int(res.get("element_count")) or 0,
            unexpected=unexpected,
            missing=opt_int(res.get("missing_count")) or 0,
        )

    def to_list(self) -> list[int]:
        return [self.element, self.unexpected, self.missing, int(self.raised)]

    @classmethod
    def from_list(cls, data: Sequence[Any]) -> RowCounts:
        element, unexpected, missing, raised = (opt_int(x) for x in data)
        return cls(element or 0, unexpected or 0, missing or 0, bool(raised))

    def result(self, e: Expectation) -> ExpectationResult:
        """The expectation's outcome: GE's rule (a null counts against "not null"; other
        rules look only at present values) and ``mostly`` applied to the sums."""
        rule = e.rule + (" (could not be evaluated)" if self.raised else "")
        if self.raised:
            return ExpectationResult(e.type, e.column, False, rule=rule)
        looked_at = self.element if e.type == NOT_NULL else self.element - self.missing
        mostly = e.kwargs.get("mostly")
        if mostly is None or looked_at == 0:
            success = self.unexpected == 0
        else:
            success = (looked_at - self.unexpected) / looked_at >= mostly
        return ExpectationResult(
            e.type,
            e.column,
            success,
            element_count=self.element,
            unexpected_count=self.unexpected,
            unexpected_rate=self.unexpected / looked_at if looked_at else None,
            rule=rule,
        )
