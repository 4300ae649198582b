"""A site's rows for one job: its extract read (or the rows it has just validated),
split by a keyed hash of the patient key, encoded when a request first needs them."""

from __future__ import annotations

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
