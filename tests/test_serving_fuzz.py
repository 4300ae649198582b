"""Schemathesis against the live service, from the OpenAPI document it serves: requests
generated to fit the document (positive) and to break it (negative), to the scoring
endpoint in MLflow's four formats and CSV and to the CDS Hooks service. No answer may be
a 5xx, break the document (status, media type, body schema), accept data the document
refuses, or repeat a value the request carried. Bounded in count; the run prints how many
requests it sent and how long they took (the README quotes it)."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from support.serving import registered_champion, running_server, write_config

from pipeline.models.request import safe_name

pytestmark = pytest.mark.slow

SERVICE = {"service": "diabetes-risk"}
# (operation, generation mode, requests, fixed path parameters, request format): the
# positive scoring requests are spread over the formats so that each gets its share.
PLAN = [
    *[
        ("/invocations", GenerationMode.POSITIVE, 45, None, fmt)
        for fmt in ("dataframe_records", "dataframe_split", "instances", "inputs")
    ],
    ("/invocations", GenerationMode.POSITIVE, 20, None, "csv"),
    ("/invocations", GenerationMode.NEGATIVE, 200, None, None),
    ("/cds-services/{service}", GenerationMode.POSITIVE, 80, SERVICE, None),
    ("/cds-services/{service}", GenerationMode.NEGATIVE, 80, SERVICE, None),
    ("/cds-services/{service}", GenerationMode.POSITIVE, 20, None, None),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("fuzz")
    uri, _, _ = registered_champion(tmp, card="# diabetes-risk\n")
    with running_server(write_config(tmp, uri)) as s:
        yield s


def _carried(node: Any) -> set[str]:
    """What a request carried that an answer must not repeat: strings that are not names
    (names of fields may be named) and numbers written with many digits."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            found |= _carried(key) | _carried(value)
    elif isinstance(node, list):
        for value in node:
            found |= _carried(value)
    elif isinstance(node, str):
        if len(node) >= 6 and safe_name(node) is None:
            found.add(node)
    elif isinstance(node, float) and len(repr(node)) >= 9:
        found.add(repr(node))
    return found


@schemathesis.check
def echoes_nothing(ctx: Any, response: Any, case: Any) -> bool | None:
    """A refusal never repeats what the request carried."""
    if response.status_code < 400:
        return None
    text = response.text
    if "Traceback" in text or 'File "' in text:
        raise AssertionError("a refusal carries a stack trace")
    body = case.body if isinstance(case.body, dict | list) else None
    for value in _carried(body):
        if value in text and value not in _answer_without(response, body, value):
            raise AssertionError(f"a {response.status_code} repeats a value of the request")
    return True


def _answer_without(response: Any, body: Any, value: str) -> str:
    """The answer to the same request with `value` replaced by another string of its
    length: a value the request carried is echoed only if it leaves the answer with it (a
    generated value may happen to be a phrase of the service's own wording)."""
    stand_in = "q" * len(value) if value != "q" * len(value) else "z" * len(value)
    sent = response.request
    headers = {k: v for k, v in sent.headers.items() if k.lower() != "content-length"}
    again = requests.post(
        sent.url, data=json.dumps(_replaced(body, value, stand_in)), headers=headers, timeout=30
    )
    return again.text


def _replaced(node: Any, value: str, stand_in: str) -> Any:
    if isinstance(node, dict):
        return {
            _replaced(k, value, stand_in): _replaced(v, value, stand_in) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_replaced(v, value, stand_in) for v in node]
    if node == value:
        return stand_in
    if isinstance(node, float) and repr(node) == value:
        return 1.5
    return node


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    echoes_nothing,
]


def _format(case: Any) -> str:
    if case.media_type == "text/csv":
        return "csv"
    keys = set(case.body) - {"params"} if isinstance(case.body, dict) else set()
    if len(keys) != 1:
        return "other"
    key = keys.pop()
    columns = key in ("instances", "inputs") and isinstance(case.body[key], dict)
    return f"{key} as columns" if columns else key


def _generate(strategy: Any, count: int, send: Any) -> None:
    """`count` cases drawn from `strategy`, each given to `send` (no shrinking: a failure
    is reported as found, with its curl line)."""

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=["generate"],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        send(case)

    run()


# A request the document refuses must get one of these: 413 is the service's word for
# more rows than `max_rows` (the document's maxItems), which schemathesis does not expect.
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 404, 413, 415]}}}
)


def test_generated_requests_get_no_5xx_and_answers_that_keep_the_document(server) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", config=CONFIG)
    http = requests.Session()
    started = time.monotonic()
    sent: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    statuses: Counter[int] = Counter()

    def sender(path: str, scoring: bool):
        def send(case: Any) -> None:
            response = case.call(base_url=server.url, session=http, timeout=30)
            sent[path] += 1
            statuses[response.status_code] += 1
            if scoring:
                formats[_format(case)] += 1
            case.validate_response(response, checks=CHECKS)

        return send

    for path, mode, count, path_parameters, fmt in PLAN:
        strategy = schema[path]["POST"].as_strategy(
            generation_mode=mode, path_parameters=path_parameters
        )
        if fmt is not None:
            strategy = strategy.filter(lambda case, fmt=fmt: _format(case).startswith(fmt))
        _generate(strategy, count, sender(path, scoring=fmt is not None))
    elapsed = time.monotonic() - started
    total = sum(sent.values())
    print(
        f"\nfuzz: {total} requests ({dict(sent)}) in {elapsed:.1f} s; statuses {dict(statuses)}; "
        f"scoring formats {dict(formats)}"
    )
    assert total >= 500
    assert not [s for s in statuses if s >= 500]
    for fmt in ("dataframe_records", "dataframe_split", "instances", "inputs"):
        assert formats[fmt] + formats[f"{fmt} as columns"] >= 40, formats
    assert statuses[200] >= 50, statuses  # the document's valid requests are scored
    assert server.request("GET", "/ping")[0] == 200
    log = server.log.read_text()
    assert "internal error" not in log, log[-2000:]


def test_the_scoring_document_admits_only_what_the_service_scores(server) -> None:
    """Positive data is accepted: every request the document's scoring schema admits is
    answered 200. Not for CSV (a string to the document), dataframe_split (JSON Schema
    cannot tie a cell to its column) or columns (nor lists to an equal length): the
    service checks those."""
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    refused, sent = [], []

    def send(case: Any) -> None:
        response = case.call(base_url=server.url, timeout=30)
        sent.append(response.status_code)
        if response.status_code != 200:
            refused.append((response.status_code, json.loads(response.text).get("rule")))

    records = ("dataframe_records", "instances", "inputs")
    strategy = (
        schema["/invocations"]["POST"]
        .as_strategy(generation_mode=GenerationMode.POSITIVE)
        .filter(lambda case: _format(case) in records)
    )
    _generate(strategy, 150, send)
    assert len(sent) >= 100, "too few requests in the record formats"
    assert not refused, Counter(refused)
