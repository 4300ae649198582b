"""The global gradient-boosted trees: one booster over the contract's tree matrix.

Training happens across sites (the trees' strategy under :mod:`pipeline.strategies`);
this class is the trained result and what the served model wraps. It takes the
contract's raw columns in clinical units, exactly like
:class:`pipeline.models.logistic.LogisticModel`, so the pyfunc risk model serves either
without knowing which one it holds. XGBoost (1.2 s to import) is imported only when a
booster is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contract import Contract
from pipeline.features import FeatureEncoder
from pipeline.models.base import Model

BOOSTER_FILE = "booster.ubj"


class TreeModel(Model):
    """A booster trained by the sites' XGBoost collective.

    Parameters
    ----------
    contract : Contract
        The task's contract; its features are the booster's features, in order.
    booster : bytes
        The model as :func:`pipeline.models.trees.train_worker` returns it (UBJSON).

    Attributes
    ----------
    booster_ : xgboost.Booster
        The loaded booster (single-threaded prediction).
    """

    kind = "boosted-trees"
    encoding = "tree"

    def __init__(self, contract: Contract, booster: bytes) -> None:
        from pipeline.models import trees

        self.contract = contract
        self.encoder = FeatureEncoder(contract)
        self.raw = bytes(booster)
        self.booster_ = trees.load_booster(self.raw)
        names = list(self.booster_.feature_names or [])
        if names != contract.feature_names:
            raise ValueError(
                f"booster features {names} are not the contract's {contract.feature_names}"
            )

    def predict_encoded(self, X: np.ndarray) -> np.ndarray:
        from pipeline.models import trees

        return trees.predict_proba(self.booster_, X).astype(np.float64)

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        return self.predict_encoded(self.encoder.tree_matrix(df))

    def explain(self, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """TreeSHAP contributions (Lundberg et al. 2020), relative to the average
        prediction; the bias column is dropped."""
        from pipeline.models import trees

        T = self.encoder.tree_encode(cols)
        return self.predict_encoded(T), trees.contributions(self.booster_, T)[:, :-1].astype(
            np.float64
        )

    def contributions(self, df: pd.DataFrame) -> pd.DataFrame:
        """Per-feature SHAP contributions to the log-odds, one column per contract
        feature, for rows of raw contract columns."""
        _, values = self.explain(self.encoder.canonical(df))
        return pd.DataFrame(values, columns=self.contract.feature_names, index=df.index)

    def feature_importance(self) -> dict[str, float]:
        """Average gain per split of each contract feature (0 when unused)."""
        from pipeline.models import trees

        return trees.feature_importance(self.booster_, self.contract.feature_names)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "feature_names": list(self.contract.feature_names)}

    def extra_artifacts(self, tmp: Path) -> dict[str, str]:
        """The booster file to log beside model.json."""
        path = Path(tmp) / BOOSTER_FILE
        path.write_bytes(self.raw)
        return {"booster": str(path)}

    def site_payload(self) -> dict[str, Any]:
        return {"kind": self.kind, "booster": self.raw}

    @classmethod
    def from_spec(
        cls, contract: Contract, spec: dict[str, Any], artifacts: dict[str, str]
    ) -> TreeModel:
        return cls(contract, Path(artifacts["booster"]).read_bytes())

    @classmethod
    def from_payload(cls, contract: Contract, payload: dict[str, Any]) -> TreeModel:
        return cls(contract, bytes(payload["booster"]))
