"""The stages of a federated job, shared by ``pipeline train`` (:mod:`pipeline.job`) and
the scheduled retraining (:mod:`pipeline.retrain`): the sites (placement, validation,
loading), privacy (plan and reservation), evaluation and promotion. Each stage reads the
federation config and records what it did on the job's run; a strategy is asked, never
named."""
