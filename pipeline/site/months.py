"""The follow-up months a site last trained on, kept beside its extract: the reference
its drift is measured against (its own record, never a list a coordinator sends)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def months_path(extract: Path) -> Path:
    return extract.parent / f"{extract.name}.months.json"


def trained_months(extract: Path) -> list[str]:
    path = months_path(Path(extract))
    return list(json.loads(path.read_text())["trained"]) if path.exists() else []


def record_trained_months(extract: Path, months: Sequence[str]) -> None:
    months_path(Path(extract)).write_text(json.dumps({"trained": sorted(months)}))
