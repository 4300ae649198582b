"""The global logistic model: weights over the contract's encoded features.

Training happens across sites (pipeline.federation.coordinator); this class is the
trained result, the same for every logistic strategy, and what the served model wraps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.contract import Contract
from pipeline.features import FeatureEncoder


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class LogisticModel:
    """Weights (last entry: intercept) over :class:`FeatureEncoder` columns.

    Parameters
    ----------
    contract : Contract
    weights : array of shape (n_features_out + 1,)
    """

    kind = "logistic"

    def __init__(self, contract: Contract, weights: np.ndarray) -> None:
        self.contract = contract
        self.encoder = FeatureEncoder(contract)
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (self.encoder.n_features_out + 1,):
            raise ValueError(
                f"expected {self.encoder.n_features_out + 1} weights, got {weights.shape}"
            )
        self.weights = weights

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        X = self.encoder.transform(df)
        return _sigmoid(X @ self.weights[:-1] + self.weights[-1])

    def contributions(self, df: pd.DataFrame) -> pd.DataFrame:
        """Per-feature contributions to the log-odds (coefficient x encoded value), summed
        over each contract feature's encoded columns (one-hot blocks, missing flags)."""
        X = self.encoder.transform(df)
        parts = X * self.weights[:-1]
        owners = [
            name.split("=")[0].removesuffix("__missing") for name in self.encoder.feature_names_out
        ]
        frame = pd.DataFrame(parts, columns=owners, index=df.index)
        return frame.T.groupby(level=0, sort=False).sum().T

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "weights": self.weights.tolist(),
            "feature_names": self.encoder.feature_names_out,
        }

    def site_payload(self) -> dict:
        """What the coordinator sends sites to evaluate this model."""
        return {"kind": self.kind, "weights": self.weights}
