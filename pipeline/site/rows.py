"""A site's rows for one job: its extract read (or the rows it has just validated),
split by a keyed hash of the patient key, encoded when a request first needs them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.contract import Contract
from pipeline.extract import Window, read_frame
from pipeline.features import EncodedRows
from pipeline.splits import train_test


@dataclass(frozen=True)
class SplitKey:
    """What a split depends on besides the rows: the same key gives the same split."""

    test_fraction: float
    seed: int


def split(
    df: pd.DataFrame, contract: Contract, key: SplitKey, held: pd.DataFrame | None = None
) -> tuple[EncodedRows, EncodedRows]:
    """(train, test) rows, not yet encoded: `df` split by key, or, with the held-out
    extract's rows `held`, all of `df` against `held`."""
    train, test = train_test(df, contract, key.seed, key.test_fraction, held=held)
    return EncodedRows(*train, contract), EncodedRows(*test, contract)


def read_split(
    extract: Path,
    test_extract: Path | None,
    contract: Contract,
    key: SplitKey,
    window: Window | None,
) -> tuple[EncodedRows, EncodedRows]:
    """The extract (and the held-out extract a site keeps apart) read now and split."""
    df = read_frame(extract, contract.arrow_schema, window)
    held = None
    if test_extract is not None:
        held = read_frame(test_extract, contract.arrow_schema, window)
    return split(df, contract, key, held)


Split = tuple[EncodedRows, EncodedRows]


class Preparation:
    """A job's rows split and encoded in a thread of the site's process, started the
    moment its validation passed: a site that finished validating prepares while the
    coordinator waits for the others, instead of after admission while they all wait.
    :meth:`rows` waits for it; the rows are the job's only for the same split key."""

    def __init__(self, key: SplitKey, work: Callable[[], Split]) -> None:
        self.key = key
        self._rows: Split | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], Split]) -> None:
        try:
            self._rows = work()
        except Exception:  # noqa: BLE001 - nothing prepared: load reads again and says why
            self._rows = None

    def rows(self, key: SplitKey) -> Split | None:
        """The prepared rows (None: failed, or prepared for another split)."""
        self._thread.join()
        return self._rows if key == self.key else None
