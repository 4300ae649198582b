"""The registered model on its own: the code it bundles and the distributions it pins, its
signature and input example from the contract, loading it where the project cannot be
imported, and MLflow's own server answering as `pipeline serve` does."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.metadata import packages_distributions, version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.pyfunc import PyFuncModel
from mlflow.pyfunc.scoring_server import infer_and_parse_data
from support import ROOT
from support.serving import (
    CONTRACT,
    MODEL_NAME,
    PATIENT,
    fitted_logistic,
    free_port,
    register,
    running_server,
    wait_until_up,
    write_config,
)

from pipeline.champion import move_champion
from pipeline.contract import Contract, load_contract
from pipeline.model_package import MODEL_CODE_FILE
from pipeline.models.request import RequestError, check_request
from pipeline.models.risk_model import as_frame, score
from pipeline.models.signature import column_type, input_example, model_signature, typical_value
from pipeline.registry import registry_client

HEART = ROOT / "schemas" / "heart_disease.yaml"
BIN = Path(sys.executable).parent
TREES = "diabetes-risk-trees"
TYPE_HINT_WARNING = "Add type hints"
contract = load_contract(CONTRACT)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A fitted logistic model registered as version 1 of the diabetes model, champion."""
    tmp = tmp_path_factory.mktemp("package")
    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    model, frame = fitted_logistic(tmp / "extract")
    version = register(uri, model)
    move_champion(registry_client(uri), MODEL_NAME, version)
    return SimpleNamespace(tmp=tmp, uri=uri, model=model, frame=frame, version=version)


@pytest.fixture(scope="module")
def trees(registry: SimpleNamespace) -> Any:
    """A small XGBoost model on the same rows, registered beside it (its kind imports
    XGBoost only when a booster loads)."""
    from pipeline.config import load_config
    from pipeline.features import FeatureEncoder
    from pipeline.models.tree_model import TreeModel
    from pipeline.pooled import train_xgboost

    cfg = load_config(write_config(registry.tmp, registry.uri))
    cfg.training.xgboost.rounds = 20
    frame = registry.frame
    T = FeatureEncoder(contract).tree_matrix(frame)
    booster = train_xgboost(contract, cfg, [(T, contract.labels(frame))], nthread=1)
    model = TreeModel(contract, bytes(booster.save_raw("ubj")))
    return model, register(registry.uri, model, TREES)


def _download(registry: SimpleNamespace, name: str, version: str) -> Path:
    registry_client(registry.uri)
    dst = registry.tmp / f"download-{name}-{version}"
    dst.mkdir(exist_ok=True)
    uri = f"models:/{name}/{version}"
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))


def _top_level_imports(source: str) -> set[str]:
    """Top-level names of every absolute import in a module, wherever it is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


def test_a_version_has_the_contracts_signature_and_a_typical_input_example(registry) -> None:
    local = _download(registry, MODEL_NAME, registry.version)
    inputs = Model.load(str(local)).signature.inputs.inputs
    assert [c.name for c in inputs] == contract.feature_names
    assert {c.name: c.required for c in inputs} == {
        f.name: not f.nullable for f in contract.features
    }
    assert {c.name: c.type for c in inputs} == {f.name: column_type(f) for f in contract.features}

    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    # Inferred from type hints, MLflow's server would read the `inputs` key only.
    assert mlmodel["is_signature_from_type_hint"] is False
    # Loaded from code, not unpickled.
    flavor = mlmodel["flavors"]["python_function"]
    assert "python_model" not in flavor and (local / MODEL_CODE_FILE).is_file()

    example = json.loads((local / "serving_input_example.json").read_text())["dataframe_split"]
    assert example["columns"] == contract.feature_names
    typical, sparse = (dict(zip(example["columns"], row, strict=True)) for row in example["data"])
    assert typical == {f.name: typical_value(f) for f in contract.features}
    assert sparse == {f.name: None if f.nullable else typical[f.name] for f in contract.features}


def test_the_requirements_pin_every_distribution_the_bundled_code_imports(registry) -> None:
    local = _download(registry, MODEL_NAME, registry.version)
    code = local / "code"
    bundled = {p.relative_to(code).as_posix() for p in code.rglob("*.py")}
    # What loading and predicting import, nothing else of the project.
    assert {"pipeline/models/risk_model.py", "pipeline/models/trees.py"} <= bundled
    assert not {p for p in bundled if p.split("/")[1] in ("serving", "strategies", "site")}

    imported = _top_level_imports((local / MODEL_CODE_FILE).read_text())
    for path in code.rglob("*.py"):
        imported |= _top_level_imports(path.read_text())
    outside = imported - set(sys.stdlib_module_names) - {"pipeline"}
    pins = dict(line.split("==") for line in (local / "requirements.txt").read_text().split())
    provided = packages_distributions()
    missing = {m for m in outside if not set(provided.get(m, [])) & set(pins)}
    assert not missing, f"imported but not pinned: {missing}"
    assert {"mlflow", "xgboost"} <= set(pins)
    assert {name: version(name) for name in pins} == pins


_LOG_AND_LOAD = """
import json, logging, sys, warnings

import mlflow.pyfunc
import numpy as np

from pipeline.contract import load_contract
from pipeline.features import FeatureEncoder
from pipeline.models.logistic import LogisticModel
from pipeline.registry import JobTracker

uri, contract_path = sys.argv[1:3]
contract = load_contract(contract_path)
width = FeatureEncoder(contract).n_features_out + 1
model = LogisticModel(contract, np.random.default_rng(1).normal(size=width))
logged = []
handler = logging.Handler(logging.WARNING)
handler.emit = lambda record: logged.append(f"{record.name}: {record.getMessage()}")
logging.getLogger("mlflow").addHandler(handler)
with JobTracker(uri, "warnings", "log-and-load") as tracker:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        version = tracker.register(model, contract_path, "warnings-test")
        loaded = mlflow.pyfunc.load_model(f"models:/warnings-test/{version}")
        loaded.predict(loaded.input_example)
shown = [f"{w.category.__name__} {w.filename}: {w.message}" for w in caught]
print(json.dumps({"warnings": shown, "logged": logged}))
"""


@pytest.mark.slow
def test_logging_and_loading_a_version_warn_nothing(tmp_path: Path) -> None:
    """In a fresh interpreter, so the risk model's class is defined inside the block (the
    type-hint warning comes when MLflow sees the class)."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    done = subprocess.run(
        [sys.executable, "-c", _LOG_AND_LOAD, uri, str(CONTRACT)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert not any(TYPE_HINT_WARNING in w for w in seen["warnings"] + seen["logged"])
    assert seen == {"warnings": [], "logged": []}


_ISOLATED = """
import importlib.util, json, sys, warnings
from pathlib import Path

root = Path(sys.argv[1])
sys.meta_path[:] = [
    f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")
]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in (root, root / "tests")]
assert importlib.util.find_spec("pipeline") is None, "the project is importable"

import mlflow.artifacts
import mlflow.pyfunc
import pandas as pd

uri, model_uri, rows, local = sys.argv[2:6]
mlflow.set_tracking_uri(uri)
mlflow.set_registry_uri(uri)
local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=local)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    answer = mlflow.pyfunc.load_model(local).predict(pd.read_parquet(rows))
import pipeline

print(json.dumps({
    "pipeline": pipeline.__file__,
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    "answer": json.loads(answer.to_json(orient="records")),
}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["logistic", "trees"])
def test_a_version_answers_where_the_project_cannot_be_imported(
    registry, kind: str, request: pytest.FixtureRequest
) -> None:
    if kind == "trees":
        model, version = request.getfixturevalue("trees")
        name = TREES
    else:
        model, version, name = registry.model, registry.version, MODEL_NAME
    rows = registry.frame[contract.feature_names].head(300)
    path = registry.tmp / f"rows-{kind}.parquet"
    rows.to_parquet(path)
    (registry.tmp / f"isolated-{kind}").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", _ISOLATED, str(ROOT), registry.uri, f"models:/{name}/{version}"]
        + [str(path), str(registry.tmp / f"isolated-{kind}")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=registry.tmp,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/pipeline/" in seen["pipeline"] and str(ROOT) not in seen["pipeline"]
    assert seen["warnings"] == []

    expected = json.loads(score(contract, model, rows).to_json(orient="records"))
    got = seen["answer"]
    np.testing.assert_allclose(
        [r["risk_probability"] for r in got],
        [r["risk_probability"] for r in expected],
        rtol=0,
        atol=1e-12,
    )
    for g, e in zip(got, expected, strict=True):
        assert {k: v for k, v in g.items() if k != "risk_probability"} == {
            k: v for k, v in e.items() if k != "risk_probability"
        }


# -- MLflow's parsers and the contract ---------------------------------------------------
def _bodies(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The same rows in MLflow's four JSON input formats."""
    cols = list(rows[0])
    return {
        "dataframe_split": {
            "dataframe_split": {"columns": cols, "data": [list(r.values()) for r in rows]}
        },
        "dataframe_records": {"dataframe_records": rows},
        "instances": {"instances": rows},
        "inputs": {"inputs": {c: [r[c] for r in rows] for c in cols}},
    }


def _typical_rows(c: Contract) -> list[dict[str, Any]]:
    """Rows a contract accepts: its example's two patients, then one with every number a
    JSON integer, every category the last one and every boolean true."""
    typical, sparse = input_example(c).to_dict("records")
    varied = {}
    for f in c.features:
        if f.kind == "numeric":
            varied[f.name] = round(typical[f.name])
        elif f.kind == "categorical":
            varied[f.name] = (f.categories or [])[-1]
        else:
            varied[f.name] = True
    return [typical, sparse, varied]


def _checked(c: Contract, frame: Any) -> dict[str, list] | str:
    try:
        return {k: np.asarray(v, dtype=float).tolist() for k, v in check_request(c, frame).items()}
    except RequestError as exc:
        return f"refused: {sorted((v.field, v.rule) for v in exc.violations)}"


def _through_mlflow(c: Contract, body: dict[str, Any]) -> dict[str, list] | str:
    """What the contract decides on a request as MLflow's server hands it over: parsed
    with the signature, then enforced by a pyfunc that has it."""
    echo = SimpleNamespace(predict=lambda data, params=None: data)
    pyfunc = PyFuncModel(model_meta=Model(signature=model_signature(c)), model_impl=echo)
    try:
        data = pyfunc.predict(infer_and_parse_data(body, pyfunc.metadata.get_input_schema()))
    except MlflowException:
        return "refused by MLflow"
    return _checked(c, as_frame(data))


@pytest.mark.parametrize("path", [CONTRACT, HEART], ids=["diabetes", "heart"])
def test_mlflows_parsers_pass_every_accepted_row_through_unchanged(path: Path) -> None:
    c = load_contract(path)
    rows = _typical_rows(c)
    optional = {f.name for f in c.features if f.nullable}
    for label, body_rows in (
        ("all columns", rows),
        (
            "optional columns left out",
            [{k: v for k, v in r.items() if k not in optional} for r in rows],
        ),
    ):
        for fmt, body in _bodies(body_rows).items():
            expected = _checked(c, as_frame(infer_and_parse_data(body)))
            assert isinstance(expected, dict), (label, fmt, expected)
            got = _through_mlflow(c, body)
            assert isinstance(got, dict), (label, fmt, got)
            np.testing.assert_array_equal(
                np.array(list(got.values())), np.array(list(expected.values())), err_msg=fmt
            )
            assert list(got) == list(expected)


@pytest.mark.parametrize("path", [CONTRACT, HEART], ids=["diabetes", "heart"])
def test_a_row_the_contract_refuses_is_still_refused_after_mlflows_parsers(path: Path) -> None:
    c = load_contract(path)
    typical = _typical_rows(c)[0]
    number = next(f for f in c.features if f.kind == "numeric")
    category = next(f for f in c.features if f.kind == "categorical")
    required = next(f for f in c.features if not f.nullable)
    boolean = next(f for f in c.features if f.kind == "boolean")
    unknown = "unknown" if category.dtype == "string" else 99
    for change in (
        {number.name: number.range[1] + 1},
        {category.name: unknown},
        {required.name: None},
        {boolean.name: "yes"},
        {boolean.name: 2},
    ):
        for fmt, body in _bodies([typical, {**typical, **change}]).items():
            assert isinstance(_checked(c, as_frame(infer_and_parse_data(body))), str)
            assert isinstance(_through_mlflow(c, body), str), (change, fmt)


# -- MLflow's own server -------------------------------------------------------------------
def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(
        url + "/invocations",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the server and the worker it started (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def mlflow_server(uri: str, log: Path, wait_s: float = 180) -> Iterator[str]:
    """`mlflow models serve` of the champion on loopback, until /ping answers; stopped
    afterwards, also when the block fails."""
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_REGISTRY_URI": uri,
    }
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url, log, wait_s)
        yield url
    finally:
        _stop_group(proc)


def _request_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Patients as a client sends them: the README's, the example's sparse one (every
    optional feature null) and rows of the extract with their missing values."""
    sparse = {f.name: None if f.nullable else PATIENT[f.name] for f in contract.features}
    extract = json.loads(frame[contract.feature_names].head(20).to_json(orient="records"))
    return [PATIENT, sparse, *extract]


def _clinical(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: answer[k] for k in ("risk_band", "top_factors")}


@pytest.mark.slow
def test_mlflows_server_answers_the_champion_like_pipeline_serve(registry) -> None:
    rows = _request_rows(registry.frame)
    optional = {f.name for f in contract.features if f.nullable}
    sparse_columns = [{k: v for k, v in r.items() if k not in optional} for r in rows]
    config = write_config(registry.tmp, registry.uri)
    with (
        running_server(config) as ours,
        mlflow_server(registry.uri, registry.tmp / "mlflow-serve.log") as theirs,
    ):
        for body_rows in (rows, sparse_columns):
            for fmt, body in _bodies(body_rows).items():
                status, _, raw = ours.request("POST", "/invocations", body)
                assert status == 200, (fmt, raw)
                expected = json.loads(raw)["predictions"]
                status, got = _post(theirs, body)
                assert status == 200, (fmt, got)
                got = got["predictions"]
                assert len(got) == len(expected) == len(body_rows)
                for g, e in zip(got, expected, strict=True):
                    assert g["risk_probability"] == pytest.approx(e["risk_probability"], abs=1e-12)
                    assert _clinical(g) == _clinical(e), fmt
                    # MLflow's server knows the contract, not the registry version.
                    assert (e["model_name"], e["model_version"]) == (MODEL_NAME, "1")
                    assert (g["model_name"], g["model_version"]) == (contract.name, None)

        refused = {"dataframe_records": [PATIENT, {**PATIENT, "hba1c": 9.5}]}
        assert ours.request("POST", "/invocations", refused)[0] == 400
        status, error = _post(theirs, refused)
        assert 400 <= status < 500
        assert error["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "'hba1c'" in error["message"] and "(rule: range)" in error["message"]

        # The one difference in what is refused: MLflow drops a column its signature does
        # not declare (and logs its name) before the model sees the request.
        named = {"dataframe_records": [{**PATIENT, "patient_name": "x"}]}
        assert ours.request("POST", "/invocations", named)[0] == 400
        assert _post(theirs, named)[0] == 200
