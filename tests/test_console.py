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
