"""Serving the champion to clinicians.

- :mod:`~pipeline.serving.server`: ``pipeline serve``, assembling the service and running it;
- :mod:`~pipeline.serving.guard`: the ASGI layer around MLflow's scoring app (errors,
  limits, access control, the access log);
- :mod:`~pipeline.serving.body`: reading a request's body in MLflow's four formats;
- :mod:`~pipeline.serving.champion`: the served version, following its registry alias;
- :mod:`~pipeline.serving.routes`: the page, CDS Hooks, the model card and the metrics;
- :mod:`~pipeline.serving.cds_hooks`: the HL7 CDS Hooks service (FHIR in, cards out);
- :mod:`~pipeline.serving.page`: the clinician page (no external assets);
- :mod:`~pipeline.serving.metrics` and :mod:`~pipeline.serving.errors`;
- :mod:`~pipeline.serving.client`: ``pipeline score``, which imports none of the above.

The risk model every registered version is lives in :mod:`pipeline.models.risk_model`.
"""
