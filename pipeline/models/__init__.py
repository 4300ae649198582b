"""The models: what a job trains and what clinicians are served.

- :mod:`~pipeline.models.base`: what every trained global model offers;
- :mod:`~pipeline.models.logistic` and :mod:`~pipeline.models.tree_model`: the two kinds,
  and :mod:`~pipeline.models.kinds`, which tells them apart in a spec or a payload;
- :mod:`~pipeline.models.digest`: a model's digest, by which a site recognises it;
- :mod:`~pipeline.models.trees`: XGBoost on the contract's bin grid (training workers,
  prediction, explanations);
- :mod:`~pipeline.models.risk_model`: the MLflow pyfunc every registered version is, with
  :mod:`~pipeline.models.request` (the contract check of a request) and
  :mod:`~pipeline.models.answer` (the clinician-facing answer).
"""
