"""The site's own audit log: one JSON line per request it answered or refused, kept
beside its extract (times, names, counts and settings; never a row value)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline.extract import beside


def audit_log_path(extract: Path) -> Path:
    """The site's audit log, beside its extract."""
    return beside(extract, "audit.jsonl")


class AuditLog:
    """Appends a site's requests to :func:`audit_log_path` of its extract."""

    def __init__(self, extract: Path, site: str) -> None:
        self.path = audit_log_path(extract)
        self.site = site

    def write(self, request: str, job_id: str | None, **params: Any) -> None:
        """One entry; only scalar parameters are kept."""
        entry = {"time": time.time(), "site": self.site, "request": request, "job": job_id}
        entry.update({k: v for k, v in params.items() if isinstance(v, int | float | str | bool)})
        with self.path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def count(self, request: str, since_s: float) -> int:
        """Entries of `request` in the last `since_s` seconds."""
        if not self.path.exists():
            return 0
        after = time.time() - since_s
        count = 0
        with self.path.open() as fh:
            for line in fh:
                entry = json.loads(line)
                count += entry["request"] == request and entry["time"] >= after
        return count
