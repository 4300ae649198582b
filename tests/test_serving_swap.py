"""Hot swap: the server follows the champion alias while clients keep sending requests."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from support.serving import (
    MODEL_NAME,
    PATIENT,
    fitted_logistic,
    register,
    running_server,
    write_config,
)

from pipeline.champion import alias_version, move_champion
from pipeline.registry import registry_client

pytestmark = pytest.mark.slow


def _two_versions(tmp: Path) -> tuple[str, object, object]:
    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    first, _ = fitted_logistic(tmp / "a", seed=3, c=1.0)
    second, _ = fitted_logistic(tmp / "b", seed=4, c=0.01)
    assert register(uri, first) == "1"
    move_champion(registry_client(uri), MODEL_NAME, "1")
    assert register(uri, second) == "2"
    return uri, first, second


def _log_card(uri: str, version: str, text: str) -> None:
    client = registry_client(uri)
    run_id = client.get_model_version(MODEL_NAME, version).run_id
    mlflow.MlflowClient(uri).log_text(run_id, text, "model_card.md")


def test_promoting_a_new_champion_under_load_fails_no_request(tmp_path: Path) -> None:
    uri, first, second = _two_versions(tmp_path)
    _log_card(uri, "2", "# diabetes-risk version 2\n\nThresholds: low < 10 %.\n")
    frame = pd.DataFrame([PATIENT])
    expected = {"1": first.predict_proba(frame)[0], "2": second.predict_proba(frame)[0]}
    assert abs(expected["1"] - expected["2"]) > 1e-3
    config = write_config(tmp_path, uri, poll_s=0.5)

    with running_server(config) as server:
        answers: list[tuple[float, int, str | None, float | None]] = []
        stop = threading.Event()

        def client() -> None:
            deadline = time.monotonic() + 120  # bounded, whatever happens
            while not stop.is_set() and time.monotonic() < deadline:
                status, body = server.score([PATIENT])
                a = body["predictions"][0] if status == 200 else {}
                answers.append(
                    (time.monotonic(), status, a.get("model_version"), a.get("risk_probability"))
                )

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        promoted_at = time.monotonic()
        move_champion(registry_client(uri), MODEL_NAME, "2")
        while time.monotonic() - promoted_at < 60:
            if sum(1 for a in answers if a[2] == "2") >= 30:
                break
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(timeout=60)

        status, _, card = server.request("GET", "/model-card")
        metrics = server.request("GET", "/metrics")[2].decode()

    statuses = [a[1] for a in answers]
    assert len(answers) > 100 and set(statuses) == {200}, sorted(set(statuses))
    versions = [a[2] for a in answers]
    assert versions[0] == "1" and versions[-1] == "2"
    # Once a thread saw version 2, nothing answered by version 1 started after it.
    first_two = min(a[0] for a in answers if a[2] == "2")
    assert all(a[2] == "2" for a in answers if a[0] > first_two + 1.0)
    for _, _, version, p in answers:
        assert p == pytest.approx(expected[version], abs=1e-9)
    assert status == 200 and b"version 2" in card
    assert "pipeline_serving_model_swaps_total 2.0" in metrics
    assert f'model_name="{MODEL_NAME}"}} 2.0' in metrics


def test_sighup_reloads_the_alias_at_once(tmp_path: Path) -> None:
    uri, _, _ = _two_versions(tmp_path)
    config = write_config(tmp_path, uri, poll_s=3600)
    with running_server(config) as server:
        assert server.score([PATIENT])[1]["predictions"][0]["model_version"] == "1"
        move_champion(registry_client(uri), MODEL_NAME, "2")
        assert alias_version(registry_client(uri), MODEL_NAME, "previous-champion") == "1"
        time.sleep(1)
        assert server.score([PATIENT])[1]["predictions"][0]["model_version"] == "1"
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        version = "1"
        while version != "2" and time.monotonic() < deadline:
            time.sleep(0.2)
            version = server.score([PATIENT])[1]["predictions"][0]["model_version"]
        assert version == "2"
        log = server.log.read_text()
        assert "serving diabetes-risk version 2" in log
        assert json.dumps(PATIENT["bmi"]) not in log


def test_rows_in_a_swap_answer_from_one_version(tmp_path: Path) -> None:
    """A batch is answered by one version only (its whole answer carries one version)."""
    uri, _, _ = _two_versions(tmp_path)
    config = write_config(tmp_path, uri, poll_s=0.3)
    with running_server(config) as server:
        move_champion(registry_client(uri), MODEL_NAME, "2")
        seen = set()
        deadline = time.monotonic() + 60
        while "2" not in seen and time.monotonic() < deadline:
            status, body = server.score([PATIENT] * 2000)
            assert status == 200
            versions = {a["model_version"] for a in body["predictions"]}
            assert len(versions) == 1
            seen |= versions
        assert "2" in seen
