"""MLflow tracking and registry for federated jobs.

One run per job. A run that raises ends FAILED with the reason as a tag and registers
nothing; a model version is created only by :meth:`JobTracker.register`, which the job
calls last, after every stage completed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.console import printed_to_debug

os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous-champion"

log = logging.getLogger(__name__)


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a local sqlite store (mlruns/mlflow.db -> mlruns/artifacts)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


def use_tracking(tracking_uri: str) -> None:
    import mlflow

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


class JobTracker:
    """Context manager around one MLflow run.

    Parameters
    ----------
    tracking_uri, experiment, run_name : str
    """

    def __init__(self, tracking_uri: str, experiment: str, run_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.run_id: str | None = None
        self.model_version: str | None = None

    def __enter__(self) -> JobTracker:
        import mlflow

        use_tracking(self.tracking_uri)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            exp_id = client.create_experiment(
                self.experiment, artifact_location=artifact_root(self.tracking_uri)
            )
        else:
            exp_id = exp.experiment_id
        run = mlflow.start_run(experiment_id=exp_id, run_name=self.run_name)
        self.run_id = run.info.run_id
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        import mlflow

        if exc is None:
            mlflow.end_run(status="FINISHED")
            return
        reason = f"{type(exc).__name__}: {exc}"[:4000]
        try:
            mlflow.set_tag("failure_reason", reason)
            mlflow.log_text(reason, "failure_reason.txt")
        finally:
            mlflow.end_run(status="FAILED")

    # -- logging -----------------------------------------------------------------------
    def params(self, params: dict[str, Any]) -> None:
        import mlflow

        mlflow.log_params({k: v for k, v in params.items() if v is not None})

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def tags(self, tags: dict[str, str]) -> None:
        import mlflow

        mlflow.set_tags(tags)

    def json(self, obj: Any, name: str) -> None:
        import mlflow

        mlflow.log_text(json.dumps(obj, indent=2, default=str), name)

    def artifact(self, path: Path, folder: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), folder)

    # -- registry ----------------------------------------------------------------------
    def register(self, model: Any, contract_path: str, model_name: str) -> str:
        """Log the pyfunc risk model and register it as a new version, aliased challenger."""
        import mlflow

        from pipeline.serving import RiskModel

        # MLflow warns that a Python-object model is pickled (this one holds only paths) and
        # that no signature was inferred (the contract checks input instead): both known.
        # It also prints its registry steps straight to stderr, between the job's own
        # progress lines; they go to this module's debug log (the job reports the version).
        with (
            tempfile.TemporaryDirectory() as tmp,
            _mlflow_level(logging.ERROR),
            printed_to_debug(log, "mlflow", "stderr"),
        ):
            spec = Path(tmp) / "model.json"
            spec.write_text(json.dumps(model.to_dict()))
            artifacts = {"contract": contract_path, "model": str(spec)}
            artifacts.update(
                model.extra_artifacts(Path(tmp)) if hasattr(model, "extra_artifacts") else {}
            )
            info = mlflow.pyfunc.log_model(
                name="risk_model",
                python_model=RiskModel(),
                artifacts=artifacts,
                code_paths=[str(Path(__file__).resolve().parent)],
                registered_model_name=model_name,
                pip_requirements=_requirements(),
            )
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        client.set_registered_model_alias(model_name, CHALLENGER, version)
        self.model_version = version
        return version


@contextlib.contextmanager
def _mlflow_level(level: int) -> Iterator[None]:
    logger = logging.getLogger("mlflow")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def _requirements() -> list[str]:
    from importlib.metadata import version

    names = [
        "mlflow",
        "numpy",
        "pandas",
        "pyarrow",
        "pydantic",
        "pyyaml",
        "scikit-learn",
        "xgboost",
    ]
    return [f"{n}=={version(n)}" for n in names]


def registry_client(tracking_uri: str) -> Any:
    """An MLflow client on the federation's tracking and registry store."""
    import mlflow

    use_tracking(tracking_uri)
    return mlflow.MlflowClient(tracking_uri, tracking_uri)


def alias_version(client: Any, model_name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the alias (or the model) is unset."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def move_champion(client: Any, model_name: str, version: str) -> str | None:
    """Make `version` the champion; the champion it replaces becomes `previous-champion`
    (so a rollback is one alias move). Returns the replaced version, if any."""
    former = alias_version(client, model_name, CHAMPION)
    if former == str(version):
        return former
    if former is not None:
        client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, former)
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
    return former
