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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.console import printed_to_debug
from pipeline.model_package import (
    MODEL_CODE,
    MODEL_CODE_FILE,
    bundle,
    model_code,
    requirements,
    sys_path_kept,
)

if TYPE_CHECKING:
    from pipeline.contract import Contract
    from pipeline.models.base import Model

os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

CHALLENGER = "challenger"

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

    def __exit__(self, *exc_info: Any) -> None:
        """End the run FINISHED, or FAILED with the reason when the job raised."""
        import mlflow

        exc = exc_info[1]
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
    def register(
        self,
        model: Model,
        contract_path: str,
        model_name: str,
        tags: dict[str, str] | None = None,
    ) -> str:
        """Log the pyfunc risk model and register it as a new version, aliased challenger,
        with `tags` on the version (what ``pipeline models`` lists without opening runs).

        The version stands on its own: MLflow loads it from a short model file
        (models-from-code, so nothing is pickled) that imports :class:`RiskModel` from
        the bundled modules, exactly those loading and predicting import; its
        requirements pin every distribution they import; its signature and input example
        come from the contract (:mod:`pipeline.models.signature`)."""
        import mlflow

        from pipeline.contract import load_contract
        from pipeline.models.signature import input_example, model_signature

        contract = load_contract(contract_path)
        sources, imported = model_code()
        # MLflow prints its registry steps straight to stderr, between the job's own
        # progress lines; they go to this module's debug log (the job reports the version).
        # Its INFO lines are dropped; a warning of its own still shows.
        with (
            tempfile.TemporaryDirectory() as tmp,
            _mlflow_level(logging.WARNING),
            sys_path_kept(),
            printed_to_debug(log, "mlflow", "stderr"),
        ):
            spec = Path(tmp) / "model.json"
            spec.write_text(json.dumps(model.to_dict()))
            artifacts = {"contract": contract_path, "model": str(spec)}
            artifacts.update(model.extra_artifacts(Path(tmp)))
            code = Path(tmp) / MODEL_CODE_FILE
            code.write_text(MODEL_CODE)
            info = mlflow.pyfunc.log_model(
                name="risk_model",
                python_model=str(code),
                artifacts=artifacts,
                code_paths=[str(bundle(sources, Path(tmp) / "code"))],
                registered_model_name=model_name,
                pip_requirements=requirements(imported),
                signature=model_signature(contract),
                input_example=input_example(contract),
            )
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        for key, value in (tags or {}).items():
            client.set_model_version_tag(model_name, version, key, str(value))
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


def registry_client(tracking_uri: str) -> Any:
    """An MLflow client on the federation's tracking and registry store."""
    import mlflow

    use_tracking(tracking_uri)
    return mlflow.MlflowClient(tracking_uri, tracking_uri)


def run_document(client: Any, run_id: str, name: str) -> Any | None:
    """A JSON artifact at the root of a run (``sites.json``, ``gate.json``, ...), or None
    when the run has none (a run that failed before that stage)."""
    import mlflow

    run = client.get_run(run_id)
    try:
        text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{name}")
    except Exception:  # noqa: BLE001 - MLflow raises several kinds for a missing file
        return None
    return json.loads(text)


@dataclass(frozen=True)
class RegisteredModel:
    """A registered version loaded for evaluation in a job (not for serving)."""

    version: str
    run_id: str
    model: Model
    contract: Contract


def load_version(client: Any, model_name: str, version: str, workdir: Path) -> RegisteredModel:
    """A version's model object, built from its logged artifacts with the project's own
    code (not the copy bundled with the model: loading that through pyfunc would put a
    second ``pipeline`` package on this process's path)."""
    import mlflow
    import yaml

    from pipeline.contract import load_contract
    from pipeline.models.kinds import from_spec

    mv = client.get_model_version(model_name, version)
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model_name}/{version}", dst_path=str(workdir)
        )
    )
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    artifacts = {k: str(local / v["path"]) for k, v in flavor["artifacts"].items()}
    contract = load_contract(artifacts["contract"])
    spec = json.loads(Path(artifacts["model"]).read_text())
    return RegisteredModel(str(version), mv.run_id, from_spec(contract, spec, artifacts), contract)


@dataclass(frozen=True)
class VersionRow:
    """One registered version as ``pipeline models`` lists it."""

    version: str
    aliases: list[str]
    created: str
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "aliases": self.aliases,
            "created": self.created,
            **{k: self.tags[k] for k in sorted(self.tags)},
        }


def list_versions(client: Any, model_name: str) -> list[VersionRow]:
    """Every version of `model_name`, newest first, with its aliases and tags."""
    from mlflow.exceptions import MlflowException

    versions = client.search_model_versions(f"name='{model_name}'")
    if not versions:
        return []
    try:
        aliases = dict(client.get_registered_model(model_name).aliases or {})
    except MlflowException:
        aliases = {}
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC)
        rows.append(
            VersionRow(
                version=str(mv.version),
                aliases=sorted(by_version.get(str(mv.version), [])),
                created=created.isoformat(timespec="seconds"),
                tags=dict(mv.tags or {}),
            )
        )
    return rows
