"""Serving the champion to clinicians.

- :mod:`pipeline.serving.model`: the pyfunc risk model (contract check, probability, band,
  factors), logged with every registered version;
- :mod:`pipeline.serving.app`: the ASGI app around MLflow's scoring app (errors, limits,
  access control, metrics, hot swap of the champion);
- :mod:`pipeline.serving.cds_hooks`: the HL7 CDS Hooks service (FHIR in, cards out);
- :mod:`pipeline.serving.page`: the clinician page (no external assets);
- :mod:`pipeline.serving.client`: ``pipeline score``.
"""

from pipeline.serving.model import RequestError, RiskModel, Violation, check_request, score

__all__ = ["RequestError", "RiskModel", "Violation", "check_request", "score"]
