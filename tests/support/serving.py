"""What the serving tests share: a realistic registered model without Ray, and the real
`pipeline serve` started on loopback in its own process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from support import ROOT

CONTRACT = ROOT / "schemas" / "diabetes_ehr.yaml"
MODEL_NAME = "diabetes-risk"

PATIENT: dict[str, Any] = {
    "age": 58,
    "sex": "female",
    "race_ethnicity": "south_asian",
    "bmi": 33.4,
    "waist_cm": None,
    "sbp": 142.0,
    "dbp": 88.0,
    "fasting_glucose": 112.0,
    "hba1c": 6.2,
    "hdl": 41.0,
    "ldl": 131.0,
    "triglycerides": 210.0,
    "smoking_status": "former",
    "physical_activity": "inactive",
    "family_history_diabetes": True,
    "hypertension_dx": True,
    "antihypertensive_use": True,
    "gestational_diabetes_history": False,
}


def fitted_logistic(extract_dir: Path, *, seed: int = 3, rows: int = 4000, c: float = 1.0):
    """A logistic model fitted in process (scikit-learn) on a synthetic extract."""
    from sklearn.linear_model import LogisticRegression

    from pipeline.config import load_config
    from pipeline.contract import load_contract
    from pipeline.extract import read_frame
    from pipeline.features import FeatureEncoder
    from pipeline.models.logistic import LogisticModel
    from pipeline.synth import synthesize

    contract = load_contract(CONTRACT)
    config, _ = synthesize(extract_dir, sites=1, rows=rows, seed=seed)
    frame = read_frame(load_config(config).sites[0].path)
    X = FeatureEncoder(contract).transform(frame)
    fit = LogisticRegression(C=c, max_iter=2000).fit(X, contract.labels(frame))
    return LogisticModel(contract, np.append(fit.coef_[0], fit.intercept_[0])), frame


def register(tracking_uri: str, model: Any, name: str = MODEL_NAME) -> str:
    from pipeline.registry import JobTracker

    with JobTracker(tracking_uri, "serving-tests", "fit") as tracker:
        return tracker.register(model, str(CONTRACT), name)


def registered_champion(tmp: Path, *, card: str | None = None) -> tuple[str, Any, Any]:
    """A fitted logistic model registered as version 1 and made champion (with a model
    card when `card` is given): the tracking URI, the model and its extract."""
    from pipeline.champion import move_champion
    from pipeline.registry import registry_client

    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    model, frame = fitted_logistic(tmp / "extract")
    version = register(uri, model)
    client = registry_client(uri)
    move_champion(client, MODEL_NAME, version)
    if card is not None:
        run_id = client.get_model_version(MODEL_NAME, version).run_id
        client.log_text(run_id, card, "model_card.md")
    return uri, model, frame


def write_config(tmp: Path, tracking_uri: str, **serving: Any) -> Path:
    """A federation config whose only purpose here is the registry and serving."""
    raw = {
        "federation": "serving-test",
        "contract": str(CONTRACT),
        "sites": [{"name": "unused", "path": str(tmp / "unused")}],
        "mlflow": {"tracking_uri": tracking_uri, "model_name": MODEL_NAME},
        "serving": {k: str(v) if isinstance(v, Path) else v for k, v in serving.items()},
    }
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `pipeline serve` process."""

    def __init__(
        self, proc: subprocess.Popen, url: str, log: Path, tls_ca: Path | None = None
    ) -> None:
        self.proc, self.url, self.log = proc, url, log
        self.context = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | dict | None = None,
        *,
        content_type: str = "application/json",
        token: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], bytes]:
        if isinstance(body, dict | list):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.context) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def score(self, records: list[dict], **kw: Any) -> tuple[int, Any]:
        status, _, body = self.request("POST", "/invocations", {"dataframe_records": records}, **kw)
        return status, json.loads(body)


def wait_until_up(
    proc: subprocess.Popen,
    url: str,
    log: Path,
    wait_s: float,
    *,
    context: ssl.SSLContext | None = None,
) -> None:
    """Until the server at `url` answers ``GET /ping`` with 200; its log when it exits or
    does not answer within `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2, context=context) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args[:4]} did not start: {log.read_text()[-3000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def running_server(
    config: Path,
    *,
    host: str = "127.0.0.1",
    alias: str = "champion",
    env: dict[str, str] | None = None,
    wait_s: float = 120,
    tls_ca: Path | None = None,
) -> Iterator[Server]:
    """`pipeline serve` in a child process, until /ping answers; stopped afterwards."""
    port = free_port()
    log = config.parent / f"serve-{port}.log"
    full_env = {**os.environ, **(env or {})}
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "serve",
        "--config",
        str(config),
        "--host",
        host,
        "--port",
        str(port),
        "--alias",
        alias,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    scheme = "https" if tls_ca else "http"
    server = Server(proc, f"{scheme}://127.0.0.1:{port}", log, tls_ca)
    try:
        wait_until_up(proc, server.url, log, wait_s, context=server.context)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def fhir_observation(
    loinc: str, value: float, unit: str, when: str = "2026-10-01T09:30:00Z"
) -> dict:
    """A LOINC-coded laboratory Observation of one patient, as an EHR sends it."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": "Patient/p-42"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
    }


def fhir_bundle(*resources: dict) -> dict:
    """A FHIR searchset Bundle, the shape of a CDS Hooks prefetch entry."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in enumerate(resources)],
    }
