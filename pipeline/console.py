"""Keeping the job's terminal for the job's own progress lines.

Some libraries print straight to the console: XGBoost's native workers ("Task 3 got rank
3" from every rabit worker, reaching the coordinator's terminal through Ray) and MLflow's
registry ("Registered model ... already exists"). Those lines go to a debug log instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from typing import Literal


@contextlib.contextmanager
def printed_to_debug(
    log: logging.Logger, label: str, stream: Literal["stdout", "stderr"] = "stdout"
) -> Iterator[None]:
    """What is printed to `stream` inside the block, as debug lines of `log` prefixed
    with `label`, also when the block raises (the lines may explain why)."""
    printed = io.StringIO()
    redirect = contextlib.redirect_stdout if stream == "stdout" else contextlib.redirect_stderr
    try:
        with redirect(printed):
            yield
    finally:
        for line in printed.getvalue().splitlines():
            log.debug("%s: %s", label, line)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Inside the block, everything written to standard output goes to standard error:
    Python's prints, native libraries' and the lines Ray forwards from its workers (at the
    file-descriptor level, since those do not go through ``sys.stdout``). For commands
    whose standard output is data (``--json``): only what is written after the block
    reaches it."""
    sys.stdout.flush()
    saved = os.dup(1)
    previous = sys.stdout
    try:
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        yield
    finally:
        sys.stderr.flush()
        sys.stdout = previous
        os.dup2(saved, 1)
        os.close(saved)
