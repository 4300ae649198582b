"""FHIR dates for the CDS Hooks card: partial dates (``YYYY``, ``YYYY-MM``) as the span of
days they allow, whole years of age, and an ordering of observations in time."""

from __future__ import annotations

import calendar
from datetime import date, datetime, time, timedelta
from typing import Any

_EPOCH = datetime(1, 1, 1)


def date_span(value: Any) -> tuple[date, date, date]:
    """A FHIR date as (earliest, middle, latest) possible day. fhir.resources gives a
    ``date`` for ``YYYY-MM-DD`` and the string itself for ``YYYY`` or ``YYYY-MM``; the
    middle is 1 July of a year, the 15th of a month."""
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        return value, value, value
    text = str(value)
    year = int(text[:4])
    if len(text) == 4:
        return date(year, 1, 1), date(year, 7, 1), date(year, 12, 31)
    month = int(text[5:7])
    last = calendar.monthrange(year, month)[1]
    return date(year, month, 1), date(year, month, 15), date(year, month, last)


def age_in_years(birth: date, today: date) -> int:
    """Whole years completed at ``today``."""
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def seconds(value: Any) -> float:
    """A FHIR date/dateTime/instant as seconds since 0001-01-01 UTC, for ordering only: a
    date counts from its midnight UTC, a partial date from its first day. Computed without
    a timezone conversion, which overflows near year 1."""
    if isinstance(value, datetime):
        offset = value.utcoffset() or timedelta(0)
        return (value.replace(tzinfo=None) - _EPOCH - offset).total_seconds()
    try:
        first = date_span(value)[0]
    except (ValueError, TypeError):
        return float("-inf")
    return (datetime.combine(first, time()) - _EPOCH).total_seconds()


def observed_at(obs: Any) -> float:
    """When an observation holds: its effective time, else when it was issued; an
    observation with neither sorts first."""
    for attr in ("effectiveDateTime", "effectiveInstant"):
        v = getattr(obs, attr, None)
        if v is not None:
            return seconds(v)
    period = getattr(obs, "effectivePeriod", None)
    if period is not None and (period.end or period.start) is not None:
        return seconds(period.end or period.start)
    issued = getattr(obs, "issued", None)
    return seconds(issued) if issued is not None else float("-inf")
