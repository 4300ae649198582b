"""Temporary directories of a job (certificates, keys, a champion's files), named after
the job, so that what a killed job left on disk is found and deleted by the next run.

A job deletes its own when it ends in any Python way; a process killed with SIGKILL
cannot, and a private key left in ``/tmp`` is key material nobody owns.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

_PREFIX = "fl-job-"


def scratch_prefix(job_id: str, what: str) -> str:
    """The prefix of a `what` directory of `job_id`, for :mod:`tempfile`."""
    return f"{_PREFIX}{job_id}-{what}-"


def remove_scratch(job_id: str) -> list[Path]:
    """Delete every temporary directory of `job_id` on this machine; returns them."""
    found = sorted(Path(tempfile.gettempdir()).glob(f"{_PREFIX}{job_id}-*"))
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found
