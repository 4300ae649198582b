"""Admission: which sites take part in a job, from their validation summaries."""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.errors import QuorumError
from pipeline.validation.summary import ValidationSummary


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
