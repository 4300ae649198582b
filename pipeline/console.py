"""Keeping the job's output for the job's own lines, and whole in a log.

Some libraries print straight to the console: XGBoost's native workers ("Task 3 got rank
3" from every rabit worker, reaching the coordinator's terminal through Ray) and MLflow's
registry ("Registered model ... already exists"). Those lines go to a debug log instead,
and the INFO lines MLflow logs when it creates its sqlite store are not shown at all.

A run nobody watches (cron, a RayJob's log, a pipe) writes to no terminal, so rich falls
back to 80 columns and would cut a table's cells; `print_table` gives a table there the
width its content needs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # annotations only: a site's worker imports this module, not rich
    from rich.console import Console
    from rich.table import Table

# Loggers whose INFO lines on a normal run say nothing to an operator: MLflow creating or
# upgrading its sqlite store ("Creating initial MLflow database tables...", "Updating
# database tables") and the alembic migrations behind it.
QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic")

# Wider than any table the pipeline prints: measured against it, a table asks for the width
# its content needs.
_UNBOUNDED = 10_000


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


def quiet_library_logs() -> None:
    """Set the loggers of `QUIET_LOGGERS` to WARNING, once per process at the start of a
    command: their INFO lines interleave with the job's progress on every first run, and a
    warning or an error of theirs still shows. Only levels change, no handler: MLflow sets
    up its own loggers when it is imported and keeps these levels."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def print_table(console: Console, table: Table) -> None:
    """Print `table` with no cell cut. On a terminal, or with COLUMNS set, rich's width is
    the reader's and is kept. Otherwise (cron, a RayJob's log, ``| tee``) rich would fit
    the table into 80 columns, or the width of whatever terminal the process inherited,
    and shorten cells to ``vers…``; a log has no width, so the table gets the one its
    content needs."""
    width = _fitted_width(console, table)
    if width is None:
        console.print(table)
        return
    fitted = copy.copy(table)  # the caller's table keeps its own width
    fitted.width = width
    console.print(fitted, crop=False)  # print() crops every line to the console's width


def _fitted_width(console: Console, table: Table) -> int | None:
    """The width `table` needs when the console has no reader's width and it needs more
    than the console's; None when the console's width is to be kept."""
    if console.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return None
    needed = console.measure(table, options=console.options.update_width(_UNBOUNDED)).maximum
    return needed if needed > console.width else None
