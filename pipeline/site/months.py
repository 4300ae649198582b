"""The follow-up months a site last trained on, kept beside its extract: the reference
its drift is measured against (its own record, never a list a coordinator sends)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pipeline.extract import beside


def trained_months(extract: Path) -> list[str]:
    path = beside(extract, "months.json")
    return list(json.loads(path.read_text())["trained"]) if path.exists() else []


def record_trained_months(extract: Path, months: Sequence[str]) -> None:
    beside(extract, "months.json").write_text(json.dumps({"trained": sorted(months)}))
