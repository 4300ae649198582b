"""Great Expectations, imported once per process and kept quiet while it runs.

Imported inside the functions that run it: importing the validation package is cheap, so
a site that never validates in a job does not pay for GE (seconds of CPU per process).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

_GX_LOGGER = "great_expectations"


def import_gx() -> Any:
    """Great Expectations, imported on first use with its usage analytics off.

    The import creates a few hundred thousand long-lived objects, and the cyclic garbage
    collector, triggered again and again by them, found nothing to free but cost a fifth
    of the import's CPU time: it is paused while the import runs. That time is paid once
    per site process, all of them at once when a job starts its sites."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if "great_expectations" in sys.modules:
        return sys.modules["great_expectations"]
    enabled = gc.isenabled()
    gc.disable()
    try:
        import great_expectations
        import great_expectations.expectations  # noqa: F401
    finally:
        if enabled:
            gc.enable()
    return great_expectations


@contextlib.contextmanager
def quiet_gx() -> Iterator[None]:
    """Great Expectations' logging and library warnings off while it runs: its messages can
    quote row values, and they would land in the site's (shipped) logs."""
    logger = logging.getLogger(_GX_LOGGER)
    saved = (logger.level, logger.propagate, list(logger.handlers))
    null = logging.NullHandler()
    logger.addHandler(null)
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.removeHandler(null)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
