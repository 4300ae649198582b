"""Which class a registered version or a site's payload holds, by its ``kind``.

Versions registered before the model kinds were named for the model (not the strategy
family) carry another ``kind``: their spec is read by what it holds, weights or a booster
file, which is what told them apart then too.
"""

from __future__ import annotations

from typing import Any

from pipeline.contract import Contract
from pipeline.models.base import Model
from pipeline.models.logistic import LogisticModel
from pipeline.models.tree_model import TreeModel

KINDS: dict[str, type[Model]] = {cls.kind: cls for cls in (LogisticModel, TreeModel)}


def model_class(spec: dict[str, Any], artifacts: dict[str, str] | None = None) -> type[Model]:
    """The class of a spec or payload; unknown kinds that hold weights or a booster are
    read as the earlier versions wrote them."""
    cls = KINDS.get(str(spec.get("kind")))
    if cls is not None:
        return cls
    if "weights" in spec:
        return LogisticModel
    if "booster" in spec or "booster" in (artifacts or {}):
        return TreeModel
    raise ValueError(f"unknown model kind {spec.get('kind')!r}")


def from_spec(contract: Contract, spec: dict[str, Any], artifacts: dict[str, str]) -> Model:
    """The model of a registered version: its ``model.json`` and artifact paths."""
    return model_class(spec, artifacts).from_spec(contract, spec, artifacts)


def from_payload(contract: Contract, payload: dict[str, Any]) -> Model:
    """The model a site was sent to evaluate (:meth:`Model.site_payload`)."""
    return model_class(payload).from_payload(contract, payload)
