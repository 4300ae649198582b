"""The global logistic model: weights over the contract's encoded features.

Training happens across sites (the logistic strategies under :mod:`pipeline.strategies`);
this class is the trained result, the same for every one of them, and what the served
model wraps.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contract import Contract
from pipeline.features import FeatureEncoder
from pipeline.link import sigmoid
from pipeline.models.base import Model


class LogisticModel(Model):
    """Weights (last entry: intercept) over :class:`FeatureEncoder` columns.

    Parameters
    ----------
    contract : Contract
    weights : array of shape (n_features_out + 1,)
    """

    kind = "logistic-regression"
    encoding = "linear"

    def __init__(self, contract: Contract, weights: np.ndarray) -> None:
        self.contract = contract
        self.encoder = FeatureEncoder(contract)
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (self.encoder.n_features_out + 1,):
            raise ValueError(
                f"expected {self.encoder.n_features_out + 1} weights, got {weights.shape}"
            )
        self.weights = weights

    def predict_encoded(self, X: np.ndarray) -> np.ndarray:
        return sigmoid(X @ self.weights[:-1] + self.weights[-1])

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        return self.predict_encoded(self.encoder.transform(df))

    def explain(self, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Coefficient x encoded value, summed over each feature's encoded columns
        (numbers are centred on the contract's typical value, so a number's contribution
        is relative to a typical patient); a category's contribution is taken relative to
        the mean over its categories, so a category the model does not distinguish is no
        factor."""
        X = self.encoder.encode(cols)
        w = self.weights
        p = self.predict_encoded(X)
        contrib = (X * w[:-1]) @ self._owner
        for j, f in enumerate(self.contract.features):
            if self._category_centre[j]:
                contrib[:, j] -= (cols[f.name] >= 0) * self._category_centre[j]
        return p, contrib

    @functools.cached_property
    def _owner(self) -> np.ndarray:
        """Encoded column -> the contract feature it belongs to (one-hot, missing flag)."""
        names = self.encoder.feature_names_out
        owners = [n.split("=")[0].removesuffix("__missing") for n in names]
        index = {f: j for j, f in enumerate(self.contract.feature_names)}
        owner = np.zeros((len(names), len(index)))
        owner[np.arange(len(names)), [index[o] for o in owners]] = 1.0
        return owner

    @functools.cached_property
    def _category_centre(self) -> np.ndarray:
        """Per feature, the mean weight of its categories (0 for other features)."""
        names = self.encoder.feature_names_out
        w = self.weights[:-1]
        centre = np.zeros(len(self.contract.features))
        for j, f in enumerate(self.contract.features):
            if f.kind == "categorical":
                cols = [i for i, n in enumerate(names) if n.startswith(f"{f.name}=")]
                centre[j] = float(np.mean(w[cols]))
        return centre

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "weights": self.weights.tolist(),
            "feature_names": self.encoder.feature_names_out,
        }

    def site_payload(self) -> dict[str, Any]:
        return {"kind": self.kind, "weights": self.weights}

    @classmethod
    def from_spec(
        cls, contract: Contract, spec: dict[str, Any], artifacts: dict[str, str]
    ) -> LogisticModel:
        return cls(contract, np.asarray(spec["weights"]))

    @classmethod
    def from_payload(cls, contract: Contract, payload: dict[str, Any]) -> LogisticModel:
        return cls(contract, np.asarray(payload["weights"]))
