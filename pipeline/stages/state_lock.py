"""One lock for everything that changes a federation's shared state: a job that spends
privacy budget or registers a model, a promotion by hand, a rollback, a scheduled
retraining. Two of them at once could promote against a champion the other just
replaced, or reserve budget the other is spending.

An exclusive ``flock`` on a file beside the coordinator's ledger (portalocker): the
operating system releases it when the holding process ends in any way, SIGKILL
included, so a killed run never leaves it held. It does not wait: a second process is
refused at once with who holds it (the file keeps the holder's pid, host, command and
start), and does nothing. Within one process it is re-entrant, so a retraining run that
holds it runs its jobs under it.
"""

from __future__ import annotations

import os
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.config import FederationConfig
from pipeline.errors import PipelineError

_HELD: dict[Path, tuple[Any, int]] = {}  # path -> (open file, depth) in this process


class LockedError(PipelineError):
    """Another process holds the federation's lock."""


def lock_path(cfg: FederationConfig) -> Path:
    return cfg.privacy.ledger.parent / "federation.lock"


class FederationLock:
    """The federation's lock for the duration of a `with` block (`what`: the command, for
    the message of whoever is refused)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path.resolve()
        self.what = what
        self.first = False  # whether this block took the lock (not re-entered it)

    def __enter__(self) -> FederationLock:
        import portalocker

        if self.path in _HELD:
            fh, depth = _HELD[self.path]
            _HELD[self.path] = (fh, depth + 1)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            portalocker.lock(fh, portalocker.LOCK_EX | portalocker.LOCK_NB)
        except portalocker.LockException:
            fh.seek(0)
            holder = fh.read().strip() or "unknown holder"
            fh.close()
            raise LockedError(
                f"another run holds {self.path} ({holder}); this {self.what} did nothing"
            ) from None
        fh.seek(0)
        fh.truncate()
        when = datetime.now(UTC).isoformat(timespec="seconds")
        command = " ".join(os.path.basename(a) for a in sys.argv[:2]) or "python"
        fh.write(
            f"{self.what}: pid {os.getpid()} ({command}) on {socket.gethostname()} since {when}\n"
        )
        fh.flush()
        _HELD[self.path] = (fh, 1)
        self.first = True
        return self

    def __exit__(self, *exc: object) -> None:
        import portalocker

        fh, depth = _HELD[self.path]
        if depth > 1:
            _HELD[self.path] = (fh, depth - 1)
            return
        del _HELD[self.path]
        portalocker.unlock(fh)
        fh.close()
