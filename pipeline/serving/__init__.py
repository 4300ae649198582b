"""Serving the champion to clinicians.

- :mod:`pipeline.serving.model`: the pyfunc risk model (contract check, probability, band,
  factors), logged with every registered version;
- :mod:`pipeline.serving.app`: the ASGI app around MLflow's scoring app (errors, limits,
  access control, metrics, hot swap of the champion);
- :mod:`pipeline.serving.routes`: the page, CDS Hooks, the model card and the metrics;
- :mod:`pipeline.serving.cds_hooks`: the HL7 CDS Hooks service (FHIR in, cards out);
- :mod:`pipeline.serving.page`: the clinician page (no external assets);
- :mod:`pipeline.serving.client`: ``pipeline score``.

The model's names are imported on first use, so ``pipeline score`` never imports MLflow.
"""

from typing import Any

__all__ = ["RequestError", "RiskModel", "Violation", "check_request", "score"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pipeline.serving import model

        return getattr(model, name)
    raise AttributeError(name)
