"""Library console output goes to a debug log, also when the block raises."""

from __future__ import annotations

import logging
import sys

import pytest

from pipeline.console import printed_to_debug

log = logging.getLogger("tests.console")


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_printed_lines_become_debug_records_even_when_the_block_raises(
    stream: str, capsys, caplog
) -> None:
    caplog.set_level(logging.DEBUG, logger=log.name)
    with pytest.raises(RuntimeError), printed_to_debug(log, "lib", stream):  # type: ignore[arg-type]
        print("Task 3 got rank 3", file=getattr(sys, stream))
        print("second line", file=getattr(sys, stream))
        raise RuntimeError("boom")
    printed = capsys.readouterr()
    assert "Task 3" not in printed.out + printed.err
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "lib: Task 3 got rank 3"),
        (logging.DEBUG, "lib: second line"),
    ]


def test_library_store_noise_is_quiet_and_warnings_still_show() -> None:
    """As the CLI does it: the levels are set first, then MLflow is imported (and sets up
    its own loggers); its store-creation INFO lines stay off, warnings and errors show,
    and MLflow's other INFO lines are untouched."""
    import json
    import subprocess

    code = (
        "import json, logging\n"
        "from pipeline.console import QUIET_LOGGERS, quiet_library_logs\n"
        "quiet_library_logs()\n"
        "import mlflow.store.db.utils, alembic.runtime.migration\n"
        "names = [*QUIET_LOGGERS, 'alembic.runtime.migration', 'mlflow.tracking']\n"
        "print(json.dumps({n: [logging.getLogger(n).isEnabledFor(level)\n"
        "    for level in (logging.INFO, logging.WARNING, logging.ERROR)] for n in names}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    enabled = json.loads(done.stdout.splitlines()[-1])
    assert enabled["mlflow.store.db.utils"] == [False, True, True]
    assert enabled["alembic"] == enabled["alembic.runtime.migration"] == [False, True, True]
    assert enabled["mlflow.tracking"] == [True, True, True]
