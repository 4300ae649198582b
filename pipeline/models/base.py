"""What every trained global model offers, whichever strategy trained it.

The same object is what a site scores its held-out rows with (built from the payload the
coordinator sends), what the registry stores (its spec and artifacts) and what the served
pyfunc answers with (probability and each feature's contribution), so none of those
places asks which kind of model it holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pipeline.contract import Contract
from pipeline.features import EncodedRows, Encoding


class Model(ABC):
    """A global risk model over the contract's features.

    Attributes
    ----------
    kind : str
        What a registered version's ``model.json`` says it holds.
    encoding : {"linear", "tree"}
        The encoding of the rows it predicts from (:class:`pipeline.features.EncodedRows`).
    contract : Contract
    """

    kind: ClassVar[str]
    encoding: ClassVar[Encoding]
    contract: Contract

    @abstractmethod
    def predict_encoded(self, X: np.ndarray) -> np.ndarray:
        """Risk probabilities of rows already in this model's :attr:`encoding`."""

    @abstractmethod
    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Risk probabilities for rows of the contract's raw feature columns."""

    @abstractmethod
    def explain(self, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and per-feature contributions to the log-odds (rows x contract
        features) of checked rows in canonical form
        (:func:`pipeline.models.request.check_request`)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The spec logged as the registered version's ``model.json``."""

    @abstractmethod
    def site_payload(self) -> dict[str, Any]:
        """What the coordinator sends sites to evaluate this model."""

    def extra_artifacts(self, tmp: Path) -> dict[str, str]:
        """Files to log beside ``model.json`` (name -> path written under `tmp`)."""
        return {}

    def predict_rows(self, rows: EncodedRows) -> np.ndarray:
        """Risk probabilities of a site's rows, encoded once for this model's kind."""
        return self.predict_encoded(rows.encoded(self.encoding))

    @classmethod
    @abstractmethod
    def from_spec(
        cls, contract: Contract, spec: dict[str, Any], artifacts: dict[str, str]
    ) -> Model:
        """The model of a registered version (its ``model.json`` and artifact paths)."""

    @classmethod
    @abstractmethod
    def from_payload(cls, contract: Contract, payload: dict[str, Any]) -> Model:
        """The model a site is asked to evaluate (:meth:`site_payload`)."""
