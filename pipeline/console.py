"""Keeping the job's terminal for the job's own progress lines.

Some libraries print straight to the console: XGBoost's native workers ("Task 3 got rank
3" from every rabit worker, reaching the coordinator's terminal through Ray) and MLflow's
registry ("Registered model ... already exists"). Those lines go to a debug log instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
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
