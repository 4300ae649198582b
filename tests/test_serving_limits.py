"""The served model against hostile and broken clients, on a live `pipeline serve`: every
malformed request in MLflow's four formats is a 4xx naming its rule; a 200 MiB body to any
endpoint is refused without the server's memory growing; a client that never finishes its
headers is disconnected; a foreign ``Host`` is refused; links and the OpenAPI document
name the configured public URL, never the request's."""

from __future__ import annotations

import copy
import http.client
import itertools
import json
import re
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from support.serving import (
    CONTRACT,
    PATIENT,
    fhir_bundle,
    fhir_observation,
    registered_champion,
    running_server,
    write_config,
)

from pipeline.contract import load_contract

pytestmark = pytest.mark.slow

MARK = "Zelda-Quux-7731"  # never a safe name: no error may repeat it
PUBLIC_URL = "https://cds.example.org/risk"
MiB = 1024 * 1024
contract = load_contract(CONTRACT)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The champion (with a model card) served with a 1 s header deadline and a public URL."""
    tmp = tmp_path_factory.mktemp("limits")
    uri, _, _ = registered_champion(tmp, card="# diabetes-risk\n\nA model card.\n")
    config = write_config(tmp, uri, header_timeout_s=1.0, public_url=PUBLIC_URL)
    with running_server(config) as s:
        s.port = int(s.url.rsplit(":", 1)[1])
        yield s


# --- malformed requests, one field at a time -------------------------------------------

# Stand-ins replaced in the JSON text by raw numbers no Python value serializes to.
RAW = {
    "__HUGE__": "1e400",
    "__TINY__": "1e-400",
    "__BIGINT__": str(10**400),
    "__LONGINT__": "9" * 5000,
}
REPLACEMENTS: dict[str, Any] = {
    "scalar": 7,
    "string": MARK,
    "empty string": "",
    "list": [MARK],
    "empty list": [],
    "object": {MARK: 1},
    "null": None,
    **{name.strip("_").lower(): name for name in RAW},
}


def _documents() -> dict[str, dict]:
    cols = list(PATIENT)
    return {
        "dataframe_records": {"dataframe_records": [PATIENT]},
        "dataframe_split": {"dataframe_split": {"columns": cols, "data": [list(PATIENT.values())]}},
        "instances": {"instances": [PATIENT]},
        "inputs": {"inputs": {c: [v] for c, v in PATIENT.items()}},
    }


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a document a value sits (the document's own root excluded)."""
    found = []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in items:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


def _replaced(doc: dict, path: tuple, value: Any) -> bytes:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    text = json.dumps(doc)
    for stand_in, raw in RAW.items():
        text = text.replace(f'"{stand_in}"', raw)
    return text.encode()


def malformed_corpus() -> list[tuple[str, bytes]]:
    """Each format's valid document with one field replaced by each kind of bad value,
    plus bodies that are wrong as a whole."""
    corpus = []
    for fmt, doc in _documents().items():
        for path, (kind, value) in itertools.product(_paths(doc), REPLACEMENTS.items()):
            corpus.append((f"{fmt}:{'.'.join(map(str, path))}={kind}", _replaced(doc, path, value)))
    whole = {
        "instances string": b'{"instances": "x"}',
        "inputs scalar": b'{"inputs": 5}',
        "inputs null": b'{"inputs": null}',
        "split string": b'{"dataframe_split": "x"}',
        "records object": b'{"dataframe_records": {}}',
        "empty records": b'{"dataframe_records": []}',
        "empty object": b"{}",
        "deep object": b'{"a":' * 3000 + b"1" + b"}" * 3000,
        "deep list": b"[" * 3000 + b"]" * 3000,
        "a number": b"1e400",
        "a string": json.dumps(MARK).encode(),
        "null": b"null",
        "truncated": b'{"dataframe_records": [{"age": 5',
    }
    corpus.extend(whole.items())
    return corpus


def test_every_malformed_request_is_a_4xx_naming_its_rule_and_echoing_nothing(server) -> None:
    corpus = malformed_corpus()
    assert len(corpus) >= 1000
    statuses: Counter[int] = Counter()
    accepted = []
    for name, body in corpus:
        status, headers, raw = server.request("POST", "/invocations", body)
        statuses[status] += 1
        assert status < 500, (name, raw[:300])
        assert headers["content-type"] == "application/json", name
        if status == 200:
            accepted.append(name)
            continue
        error = json.loads(raw)
        assert error["error_code"] and error["rule"] and error["message"], name
        assert 1 <= len(error["errors"]) <= 21, name
        text = raw.decode()
        assert MARK not in text and "Traceback" not in text, (name, text[:300])
        assert "9999999999" not in text and "1e400" not in text, name
    # Only a tiny number can turn a cell into an admissible one (it reads as 0 or null
    # turns an optional value missing); nothing else passes.
    assert {n.rsplit("=", 1)[1] for n in accepted} <= {"tiny", "null"}, accepted
    assert statuses[400] > 0.9 * len(corpus), statuses
    print(f"\nmalformed corpus: {len(corpus)} requests, statuses {dict(statuses)}")


def test_twenty_thousand_undeclared_columns_get_a_small_error(server) -> None:
    row = {**PATIENT, **{f"extra_{i}": 1 for i in range(20_000)}}
    status, _, raw = server.request("POST", "/invocations", {"dataframe_records": [row]})
    assert status == 400
    error = json.loads(raw)
    assert error["rule"] == "declared features"
    assert len(error["errors"]) <= 21
    assert len(raw) < 16 * 1024, len(raw)
    print(
        f"\n20,000 undeclared columns ({len(json.dumps({'dataframe_records': [row]}))} bytes): "
        f"a {len(raw)}-byte 400 with {len(error['errors'])} entries"
    )
    assert "20000" in error["message"] or "20,000" in error["message"]


def test_huge_and_long_numbers_are_refused_as_not_finite(server) -> None:
    for raw_number in ("1e400", str(10**400), "9" * 5000, "-" + "9" * 5000):
        body = json.dumps({"dataframe_records": [{**PATIENT, "age": 0}]}).replace(
            '"age": 0', f'"age": {raw_number}'
        )
        status, _, raw = server.request("POST", "/invocations", body)
        assert status == 400, raw[:300]
        assert json.loads(raw)["field"] == "age"


# --- limits that apply before the work they limit --------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class _RssPeak:
    """The server's peak resident memory while a block runs, sampled every 5 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, _rss_kib(pid), threading.Event()

    def __enter__(self) -> _RssPeak:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_kib(self.pid))
            time.sleep(0.005)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_kib(self.pid))


def _huge_post(port: int, path: str, total: int, *, chunked: bool) -> tuple[int, int]:
    """POST `total` bytes to `path` as a client that keeps sending until the server
    answers: the status, and how many bytes the client got out before it stopped."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n".encode()
    )
    piece = b"[" * MiB
    if chunked:
        piece = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    answered = threading.Event()

    def send() -> None:
        nonlocal sent
        try:
            while sent < total and not answered.is_set():
                sock.sendall(piece)
                sent += MiB
        except OSError:
            pass  # the server answered and closed: what a refused upload looks like

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    answered.set()
    sock.close()
    sender.join(timeout=30)
    return int(head.split()[1]), sent


# (path, chunked, MiB the server may grow by): a body without Content-Length is read up to
# the endpoint's limit (16 MiB for scoring, 1 MiB for CDS Hooks, 64 KiB elsewhere).
@pytest.mark.parametrize(
    ("path", "chunked", "bound"),
    [
        ("/invocations", False, 4),
        ("/invocations", True, 16 + 4),
        ("/cds-services/diabetes-risk", False, 4),
        ("/cds-services/diabetes-risk", True, 4),
        ("/metrics", False, 4),
        ("/", True, 4),
        ("/nowhere", False, 4),
    ],
)
def test_a_200_mib_body_is_refused_without_the_server_growing(server, path, chunked, bound) -> None:
    server.request("POST", "/invocations", {"dataframe_records": [PATIENT]})  # warm
    with _RssPeak(server.proc.pid) as rss:
        before = _rss_kib(server.proc.pid)
        status, sent = _huge_post(server.port, path, 200 * MiB, chunked=chunked)
    assert status == 413
    assert sent < 100 * MiB, "the server should stop the upload long before its end"
    grown = (rss.peak - before) / 1024
    print(
        f"\n{path} ({'chunked' if chunked else 'Content-Length'}): 413 after {sent // MiB} MiB "
        f"sent; server RSS {before / 1024:.0f} MiB, grew {grown:.2f} MiB at most"
    )
    assert grown < bound, f"{path}: the server grew by {grown:.1f} MiB"
    assert server.request("GET", "/ping")[0] == 200


def test_a_client_that_never_finishes_its_headers_is_disconnected(server) -> None:
    def open_until_closed(trickle: bool) -> float:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        started = time.monotonic()
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.settimeout(0.2)
        try:
            while time.monotonic() - started < 10:
                if trickle:
                    sock.sendall(b"X")  # one byte of a header every 0.2 s: never finished
                try:
                    if sock.recv(1024) == b"":
                        return time.monotonic() - started
                except TimeoutError:
                    continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
        finally:
            sock.close()
        return float("inf")

    assert open_until_closed(trickle=False) < 3
    assert open_until_closed(trickle=True) < 3
    assert server.request("GET", "/ping")[0] == 200


def test_a_kept_alive_connection_is_still_answered_within_the_deadline(server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for _ in range(3):
        conn.request("GET", "/ping")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b"\n"
        time.sleep(0.5)  # under the deadline between requests: the same connection serves
    conn.close()


# --- hosts and links --------------------------------------------------------------------


def _hook() -> dict:
    patient = {
        "resourceType": "Patient",
        "id": "p-42",
        "gender": "female",
        "birthDate": "1968-05-02",
    }
    observations = fhir_bundle(
        fhir_observation("4548-4", 6.2, "%"),
        fhir_observation("39156-5", 33.4, "kg/m2"),
    )
    return {
        "hook": "patient-view",
        "hookInstance": "5c2d0d4e-8f7b-4a8e-9d67-0f7c8b3f2a11",
        "context": {"userId": "Practitioner/1", "patientId": "p-42"},
        "prefetch": {"patient": patient, "observations": observations},
    }


@pytest.mark.parametrize(
    "host", ["evil.example:666", "evil.example", "127.0.0.1.evil.example", "localhost:1"]
)
def test_a_foreign_host_is_refused_on_every_endpoint(server, host) -> None:
    for method, path, body in (
        ("POST", "/invocations", {"dataframe_records": [PATIENT]}),
        ("POST", "/cds-services/diabetes-risk", _hook()),
        ("GET", "/", None),
        ("GET", "/model-card", None),
    ):
        status, _, raw = server.request(method, path, body, headers={"Host": host})
        assert status == 400, (host, path)
        assert json.loads(raw)["rule"] == "host"
        assert host not in raw.decode()


def test_the_cards_link_is_the_configured_public_url(server) -> None:
    status, _, raw = server.request("POST", "/cds-services/diabetes-risk", _hook())
    assert status == 200, raw[:500]
    urls = [card["source"].get("url") for card in json.loads(raw)["cards"]]
    assert urls == [f"{PUBLIC_URL}/model-card"]
    status, _, raw = server.request(
        "POST", "/cds-services/diabetes-risk", _hook(), headers={"Host": f"localhost:{server.port}"}
    )
    assert status == 200
    assert "localhost" not in raw.decode()


def test_the_live_openapi_document_validates_and_names_every_column(server) -> None:
    status, headers, raw = server.request("GET", "/openapi.json")
    assert status == 200 and headers["content-type"] == "application/json"
    doc = json.loads(raw)
    validate(doc)
    assert set(doc["components"]["schemas"]["Patient"]["properties"]) == set(contract.feature_names)
    assert doc["servers"] == [{"url": PUBLIC_URL}]
    assert doc["info"]["version"] == "1"
    status, headers, page = server.request("GET", "/docs")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert not re.search(rb"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "default-src 'none'" in headers["content-security-policy"]
