"""Feature encoding derived from the contract alone.

Every site must encode its rows identically without pooling anything, and differential
privacy needs a bound on each encoded row's norm that does not come from the data. Both
follow from encoding with the contract: numeric values are clipped to the declared range,
centred on the declared typical (fill) value and divided by the range width, so they lie
in [-1, 1] and gradient methods are well conditioned; missing values take the declared
fill value (encoded 0) plus a missing
indicator, categories become one-hot blocks. Each block contributes at most 1 to the
squared norm, so ``data_norm`` is known before any row is read.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.contract import Contract, Feature

# The role of an encoded column: a feature's value (numeric or boolean), one level of a
# category's one-hot block, or a nullable feature's missing flag.
VALUE, LEVEL, MISSING = "value", "level", "missing"


def encoded_columns(contract: Contract) -> list[tuple[Feature, str, str | None]]:
    """Every column of the contract encoding, in order, as (feature, role, level): the
    one layout that the encoder, the column names and the per-column privacy scales and
    centres all follow."""
    out: list[tuple[Feature, str, str | None]] = []
    for f in contract.features:
        if f.kind == "categorical":
            out += [(f, LEVEL, c) for c in f.categories or []]
        else:
            out.append((f, VALUE, None))
        if f.nullable:
            out.append((f, MISSING, None))
    return out


def _column_name(f: Feature, role: str, level: str | None) -> str:
    if role == LEVEL:
        return f"{f.name}={level}"
    return f"{f.name}__missing" if role == MISSING else f.name


def missing_mask(feature: Feature, values: pd.Series) -> np.ndarray:
    """Missing per the contract: null, NaN, or one of the feature's missing codes."""
    mask = values.isna().to_numpy().copy()
    if feature.missing_codes:
        numeric = pd.to_numeric(values, errors="coerce")
        mask |= numeric.isin(feature.missing_codes).to_numpy()
    return mask


def _numeric(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _category_codes(feature: Feature, values: pd.Series) -> np.ndarray:
    """Index of each value in the contract's category list; -1 for missing or unknown."""
    cats = list(feature.categories or [])
    kind = values.dtype.kind
    if feature.dtype == "string" and pd.api.types.is_string_dtype(values.dtype):
        return pd.Categorical(values, categories=cats).codes.astype(np.int64)
    if feature.dtype != "string" and kind in "biuf":
        # Integer-coded categories may arrive as floats (CSV, JSON): compare by value.
        as_float = values.astype("float64")
        return pd.Categorical(as_float, categories=[float(c) for c in cats]).codes.astype(np.int64)
    # Mixed objects (a hand-built frame): element by element, the same rule.
    lookup = {c: i for i, c in enumerate(cats)}
    if feature.dtype != "string":
        lookup.update({float(c): i for i, c in enumerate(cats)})
    return np.fromiter(
        (lookup.get(v, -1) if v is not None and v == v else -1 for v in values.to_numpy()),
        dtype=np.int64,
        count=len(values),
    )


class FeatureEncoder:
    """Contract-driven design matrix for linear models.

    Parameters
    ----------
    contract : Contract
        The task's contract; nothing is learned from data.

    Attributes
    ----------
    feature_names_out : list of str
        Names of the encoded columns, in order.
    data_norm : float
        Upper bound on the L2 norm of any encoded row, for DP clipping.
    """

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.feature_names_out = [_column_name(*c) for c in encoded_columns(contract)]

    @property
    def n_features_out(self) -> int:
        return len(self.feature_names_out)

    @property
    def data_norm(self) -> float:
        blocks = sum(1 + int(f.nullable) for f in self.contract.features)
        return float(np.sqrt(blocks))

    def canonical(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Each feature of raw contract columns in one canonical form: float64 for numbers
        and booleans (NaN when missing, a declared missing code included), int64 index
        into the contract's categories for categories (-1 when missing or unknown)."""
        cols: dict[str, np.ndarray] = {}
        for f in self.contract.features:
            values = df[f.name]
            if f.kind == "categorical":
                cols[f.name] = _category_codes(f, values)
                continue
            missing = missing_mask(f, values)
            x = _numeric(values.astype("float64") if values.dtype == bool else values)
            cols[f.name] = np.where(missing, np.nan, x)
        return cols

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Encode raw contract columns (clinical units) into a float64 design matrix."""
        return self.encode(self.canonical(df))

    def encode(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """The design matrix of :meth:`canonical` columns (the served model checks a
        request straight into that form)."""
        n = len(next(iter(cols.values()))) if cols else 0
        # Filled column by column: column-major while filling, row-major when returned.
        out = np.zeros((n, self.n_features_out), dtype=np.float64, order="F")
        j = 0
        for f in self.contract.features:
            x = cols[f.name]
            if f.kind == "categorical":
                missing = x < 0
                k = len(f.categories or [])
                rows = np.flatnonzero(~missing)
                out[rows, j + x[rows]] = 1.0
                j += k
            else:
                missing = np.isnan(x)
                if f.kind == "numeric":
                    lo, hi = f.range  # type: ignore[misc]
                    filled = np.where(missing, f.impute_value, x)
                    out[:, j] = (np.clip(filled, lo, hi) - f.impute_value) / (hi - lo)
                else:
                    out[:, j] = np.where(missing, 0.0, x != 0)
                j += 1
            if f.nullable:
                out[:, j] = missing
                j += 1
        return np.ascontiguousarray(out)

    def tree_matrix(self, df: pd.DataFrame) -> np.ndarray:
        """One column per contract feature for tree models: raw clinical values (NaN when
        missing), category index for categories, 0/1 for booleans. Trees need no scaling,
        and their bin grid comes from the contract's ranges
        (:func:`pipeline.models.trees.contract_grid`)."""
        return self.tree_encode(self.canonical(df))

    def tree_encode(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """The tree matrix of :meth:`canonical` columns."""
        n = len(next(iter(cols.values()))) if cols else 0
        out = np.full((n, len(self.contract.features)), np.nan, order="F")
        for j, f in enumerate(self.contract.features):
            x = cols[f.name]
            if f.kind == "categorical":
                out[:, j] = np.where(x < 0, np.nan, x)
            else:
                out[:, j] = x
        return np.ascontiguousarray(out)


Encoding = Literal["linear", "tree"]  # FeatureEncoder.transform's matrix, or tree_matrix's


class EncodedRows:
    """Rows of a split with their labels, encoded for a kind of model when a request
    first needs it: a job trains one kind, and encoding costs more than reading the rows.

    Parameters
    ----------
    frame : DataFrame
        The rows' raw contract columns.
    y : array of 0/1
        Their labels.
    contract : Contract
    """

    def __init__(self, frame: pd.DataFrame, y: np.ndarray, contract: Contract) -> None:
        self.frame, self.y, self._contract = frame, y, contract

    def __len__(self) -> int:
        return len(self.y)

    @functools.cached_property
    def linear(self) -> np.ndarray:
        """:meth:`FeatureEncoder.transform`: the design matrix of the logistic models."""
        return FeatureEncoder(self._contract).transform(self.frame)

    @functools.cached_property
    def tree(self) -> np.ndarray:
        """:meth:`FeatureEncoder.tree_matrix`: raw clinical values for the trees."""
        return FeatureEncoder(self._contract).tree_matrix(self.frame)

    def encoded(self, encoding: Encoding) -> np.ndarray:
        if encoding not in ("linear", "tree"):
            raise ValueError(f"unknown encoding {encoding!r}")
        return getattr(self, encoding)
