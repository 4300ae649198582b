"""The models this site's jobs produced, by digest, kept beside its extract
(``<extract>.models.json``): the only models the site scores for a coordinator.

A coordinator that could send any model to be scored would hold an oracle on the site's
held-out patients: a few hundred crafted threshold models isolate one patient's label.
So each job fixes one model, its own, before it is evaluated, and a site scores only
models on this record: the job's own and those of earlier jobs it trained in, which are
the only models the registry's aliases can name. A crafted model then costs a whole job,
which the site's policy counts (its budget, its cap on non-private jobs a day).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.extract import beside


class ModelRecord:
    """Digests of the models the site's jobs fixed, one per job, kept across processes."""

    def __init__(self, extract: Path) -> None:
        self.path = beside(extract, "models.json")

    def _read(self) -> dict[str, dict[str, Any]]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def of_job(self, job_id: str) -> str | None:
        entry = self._read().get(job_id)
        return None if entry is None else str(entry["digest"])

    def known(self, digests: Iterable[str]) -> set[str]:
        """Which of `digests` a job of this site fixed."""
        on_record = {str(e["digest"]) for e in self._read().values()}
        return on_record & set(digests)

    def fix(self, job_id: str, strategy: str, digest: str) -> None:
        """Record `job_id`'s model (the caller checked it has none yet)."""
        entries = self._read()
        entries[job_id] = {"digest": digest, "strategy": strategy, "time": time.time()}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        os.replace(tmp, self.path)
