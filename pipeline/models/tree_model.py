"""The global federated XGBoost model: one booster over the contract's tree matrix.

Training happens across sites (pipeline.models.tree_training); this class is the trained
result and what the served model wraps. It takes the contract's raw columns in clinical
units, exactly like :class:`pipeline.models.logistic.LogisticModel`, so the pyfunc risk
model serves either without knowing which one it holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.contract import Contract
from pipeline.features import FeatureEncoder
from pipeline.models import trees

BOOSTER_FILE = "booster.ubj"


class TreeModel:
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

    kind = "xgboost"

    def __init__(self, contract: Contract, booster: bytes) -> None:
        self.contract = contract
        self.encoder = FeatureEncoder(contract)
        self.raw = bytes(booster)
        self.booster_ = trees.load_booster(self.raw)
        names = list(self.booster_.feature_names or [])
        if names != contract.feature_names:
            raise ValueError(
                f"booster features {names} are not the contract's {contract.feature_names}"
            )

    @classmethod
    def load(cls, contract: Contract, booster_path: str | Path) -> TreeModel:
        """The model from a booster file written by :meth:`extra_artifacts`."""
        return cls(contract, Path(booster_path).read_bytes())

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Risk probabilities for rows of the contract's raw feature columns."""
        return trees.predict_proba(self.booster_, self.encoder.tree_matrix(df)).astype(np.float64)

    def contributions(self, df: pd.DataFrame) -> pd.DataFrame:
        """Per-feature SHAP contributions to the log-odds (Lundberg et al. 2020, TreeSHAP),
        one column per contract feature; the bias column is dropped."""
        values = trees.contributions(self.booster_, self.encoder.tree_matrix(df))
        return pd.DataFrame(
            values[:, :-1].astype(np.float64), columns=self.contract.feature_names, index=df.index
        )

    def feature_importance(self) -> dict[str, float]:
        """Average gain per split of each contract feature (0 when unused)."""
        return trees.feature_importance(self.booster_, self.contract.feature_names)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "feature_names": list(self.contract.feature_names)}

    def extra_artifacts(self, tmp: Path) -> dict[str, str]:
        """The booster file to log beside model.json."""
        path = Path(tmp) / BOOSTER_FILE
        path.write_bytes(self.raw)
        return {"booster": str(path)}

    def site_payload(self) -> dict:
        """What the coordinator sends sites to evaluate this model."""
        return {"kind": self.kind, "booster": self.raw}
