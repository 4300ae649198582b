"""The scoring service: MLflow's own scoring app for the champion, hardened around it.

MLflow's scoring app (``mlflow.pyfunc.scoring_server.init``) keeps the REST protocol
(``/invocations`` with ``dataframe_split``, ``dataframe_records``, ``inputs`` or
``instances``; ``/ping``, ``/health``, ``/version``), but its error bodies echo the request
and can carry stack traces, it takes NaN for a number and it has no access control. The
:class:`Guard` in front of it, a plain ASGI layer, adds:

- errors: every bad request is a 4xx whose JSON names the field, the rule and what is
  allowed; MLflow's error bodies are dropped, never forwarded; nothing of the request is
  echoed; limits on body size and rows; NaN, Infinity and booleans for numbers refused;
  a deadline per request;
- access: a bearer token (compared in constant time) whenever one is configured, and
  always off loopback; an access log line per request (time, version, rows, status,
  latency, caller) holding no patient value; Prometheus metrics at ``/metrics``;
- hot swap: :class:`Champion` follows the registry alias (polling, and at once on
  SIGHUP), loads a new version beside the old one and swaps one reference, so requests
  already running finish on the version they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import ipaddress
import json
import logging
import os
import re
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.serving.model import REQUEST_STATE, RequestState, RiskModel

log = logging.getLogger("pipeline.serving")
access_log = logging.getLogger("pipeline.serving.access")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
SCORING_PATHS = {"/invocations", "/ping", "/health", "/version"}
OPEN_PATHS = {"/", "/ping", "/health"}
ENDPOINTS = {"/invocations", "/ping", "/health", "/version", "/metrics", "/model-card", "/"}
JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv",)


class ServeError(PipelineError):
    """The service cannot start as configured."""


@dataclass(frozen=True)
class Limits:
    """What one request may be (defaults: :class:`pipeline.config.ServingConfig`)."""

    max_rows: int = 10_000
    max_body_bytes: int = 16 * 1024 * 1024
    deadline_s: float = 10.0


class BadRequest(Exception):
    """A request refused before the model sees it: status, field, rule, message."""

    def __init__(
        self, status: int, field: str | None, rule: str, message: str, allowed: Any = None
    ) -> None:
        super().__init__(message)
        self.status, self.field, self.rule, self.allowed = status, field, rule, allowed

    def body(self) -> dict[str, Any]:
        one = {"field": self.field, "rule": self.rule, "message": str(self)}
        if self.allowed is not None:
            one["allowed"] = self.allowed
        return {"error_code": _error_code(self.status), **one, "errors": [one]}


def _error_code(status: int) -> str:
    return {
        400: "INVALID_PARAMETER_VALUE",
        401: "UNAUTHENTICATED",
        404: "ENDPOINT_NOT_FOUND",
        405: "METHOD_NOT_ALLOWED",
        413: "REQUEST_LIMIT_EXCEEDED",
        415: "UNSUPPORTED_MEDIA_TYPE",
        503: "TEMPORARILY_UNAVAILABLE",
    }.get(status, "INTERNAL_ERROR")


# -- the served version ------------------------------------------------------------------
@dataclass(frozen=True)
class Served:
    """One loaded registry version and MLflow's scoring app around it."""

    name: str
    version: str
    run_id: str | None
    risk_model: RiskModel
    scoring: ASGIApp
    card: str | None

    @property
    def contract(self) -> Any:
        return self.risk_model.contract


def predictions_to_json(raw_predictions: Any, output: Any, metadata: dict | None = None) -> None:
    """MLflow's ``predictions_to_json``, the same bytes, through ``json.dumps``.

    MLflow writes its answer with ``json.dump``, which never takes the C encoder (that is
    for one-shot ``dumps`` only): about 45 us per patient of this model's answer, most of
    the time of a 10,000-row batch. ``dumps`` with the same encoder class gives the same
    text (tested) from the C encoder.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.utils.proto_json_utils import NumpyEncoder, _get_jsonable_obj

    if metadata and "predictions" in metadata:
        raise MlflowException(
            "metadata cannot contain 'predictions' key", error_code=INVALID_PARAMETER_VALUE
        )
    predictions = _get_jsonable_obj(raw_predictions, pandas_orient="records")
    output.write(json.dumps({"predictions": predictions, **(metadata or {})}, cls=NumpyEncoder))


def load_version(client: Any, name: str, version: str) -> Served:
    """Load a registered version, its model card, and MLflow's scoring app for it."""
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    if scoring_server.predictions_to_json is not predictions_to_json:
        scoring_server._mlflow_predictions_to_json = scoring_server.predictions_to_json
        scoring_server.predictions_to_json = predictions_to_json

    mv = client.get_model_version(name, version)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    risk_model = pyfunc.unwrap_python_model()
    if not isinstance(risk_model, RiskModel):
        raise ServeError(f"model {name} version {version} is not the pipeline's risk model")
    risk_model.model_name = name
    risk_model.model_version = str(version)
    return Served(
        name=name,
        version=str(version),
        run_id=mv.run_id,
        risk_model=risk_model,
        scoring=scoring_server.init(pyfunc),
        card=model_card(mv.run_id),
    )


def model_card(run_id: str | None) -> str | None:
    """The version's model card (``model_card.md`` at the root of its run), or None."""
    if not run_id:
        return None
    import mlflow.artifacts

    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model_card.md")
    except Exception:  # no card logged for this version (MLflow raises several kinds)
        return None
    return Path(path).read_text()


class Champion:
    """The version an alias points at, followed: re-read every ``poll_s`` and at once
    on :meth:`wake` (SIGHUP). A new version is loaded beside the serving one; then one
    reference is replaced, so a request keeps the version it started with.

    Parameters
    ----------
    tracking_uri, model_name, alias : str
    poll_s : float
    on_swap : callable, optional
        Called with (old, new) after every swap.
    """

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        alias: str,
        *,
        poll_s: float = 30.0,
        on_swap: Callable[[Served | None, Served], None] | None = None,
    ) -> None:
        from pipeline.registry import registry_client

        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.alias = alias
        self.poll_s = poll_s
        self.on_swap = on_swap
        self.client = registry_client(tracking_uri)
        self.current: Served | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Load and swap in the alias's version if it changed; True when it swapped."""
        from pipeline.registry import alias_version

        with self._lock:
            version = alias_version(self.client, self.model_name, self.alias)
            if version is None:
                if self.current is None:
                    raise ServeError(
                        f"no version of model {self.model_name!r} has the alias "
                        f"{self.alias!r} in {self.tracking_uri}"
                    )
                log.warning(
                    "alias %s of %s is unset; still serving version %s",
                    self.alias,
                    self.model_name,
                    self.current.version,
                )
                return False
            if self.current is not None and self.current.version == version:
                return False
            new = load_version(self.client, self.model_name, version)
            old, self.current = self.current, new
        log.info("serving %s version %s (%s)", self.model_name, version, self.alias)
        if self.on_swap is not None:
            self.on_swap(old, new)
        return True

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self.current is None:
            self.refresh()
        self._thread = threading.Thread(target=self._follow, name="champion-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except Exception as exc:  # keep serving the loaded version
                log.error("could not load the new %s: %s", self.alias, type(exc).__name__)


# -- request bodies ----------------------------------------------------------------------
# A NaN or Infinity literal where a JSON value may start (false positives, inside text,
# only cost a full parse).
_NON_FINITE = re.compile(rb"(?<![\w\"])-?(?:NaN|Infinity)(?![\w\"])")


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFinite(name)


class _Marker:
    """Stands for a NaN/Infinity literal while looking for where it was (error path)."""


def _marker(name: str) -> _Marker:
    return _Marker()


def _marked_fields(doc: Any) -> list[str]:
    """Columns whose values hold a NaN/Infinity literal (walks the request: error path)."""
    found: set[str] = set()

    def walk(node: Any, column: str | None) -> None:
        if isinstance(node, _Marker):
            found.add(column or "(unknown)")
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, k if isinstance(k, str) and k not in FORMATS else column)
        elif isinstance(node, list):
            for v in node:
                walk(v, column)

    if isinstance(doc, dict) and isinstance(doc.get("dataframe_split"), dict):
        split = doc["dataframe_split"]
        columns = split.get("columns") or []
        for row in split.get("data") or []:
            for i, v in enumerate(row if isinstance(row, list) else []):
                if isinstance(v, _Marker):
                    found.add(columns[i] if i < len(columns) else "(unknown)")
    else:
        walk(doc, None)
    return sorted(found)


def parse_json(body: bytes) -> Any:
    """The request document; NaN and Infinity literals refused with the field named."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except _NonFinite:
        fields = _marked_fields(json.loads(body, parse_constant=_marker))
        shown = ", ".join(f for f in fields if _safe(f)) or "a field"
        raise BadRequest(
            400,
            fields[0] if fields and _safe(fields[0]) else None,
            "finite",
            f"{shown}: NaN and Infinity are not numbers (rule: finite numbers; send null "
            "for a missing value)",
        ) from None
    except RecursionError:
        raise BadRequest(
            400, None, "depth", "the JSON is nested too deeply (rule: rows of scalar values)"
        ) from None
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(
            400, None, "json", "the body is not valid JSON (rule: UTF-8 JSON)"
        ) from None


def _safe(name: object) -> bool:
    from pipeline.serving.model import _name

    return _name(name) is not None


def count_rows(doc: Any) -> int:
    """Rows of an MLflow scoring document, checking its shape (builtins only)."""
    shape = (
        "rule: a JSON object with exactly one of dataframe_split, dataframe_records, inputs, "
        "instances"
    )
    if not isinstance(doc, dict):
        raise BadRequest(400, None, "shape", f"the body is not a JSON object ({shape})")
    keys = set(doc) - {"params"}
    unknown = keys - set(FORMATS)
    if unknown:
        names = sorted(k for k in unknown if _safe(k))
        raise BadRequest(
            400,
            names[0] if names else None,
            "shape",
            f"unknown key {', '.join(map(repr, names)) or '(name withheld)'} ({shape})",
            {"keys": [*FORMATS, "params"]},
        )
    if len(keys) != 1:
        raise BadRequest(400, None, "shape", f"no or several input keys ({shape})")
    if "params" in doc and not isinstance(doc["params"], dict):
        raise BadRequest(400, "params", "shape", "params must be a JSON object (rule: object)")
    fmt = keys.pop()
    data = doc[fmt]
    if fmt == "dataframe_split":
        if not isinstance(data, dict) or set(data) - {"columns", "data", "index"}:
            raise BadRequest(
                400,
                fmt,
                "shape",
                f"{fmt} must be an object with columns and data "
                '(rule: {"columns": [names], "data": [[values]]})',
            )
        columns, rows = data.get("columns"), data.get("data")
        if not isinstance(columns, list) or not all(map(isinstance, columns, repeat(str))):
            raise BadRequest(400, f"{fmt}.columns", "shape", "columns must be a list of names")
        if not isinstance(rows, list) or set(map(type, rows)) - {list}:
            raise BadRequest(400, f"{fmt}.data", "shape", "data must be a list of rows (arrays)")
        if set(map(len, rows)) - {len(columns)}:
            raise BadRequest(
                400, f"{fmt}.data", "shape", "every row must have one value per column"
            )
        return len(rows)
    if isinstance(data, list):
        if set(map(type, data)) - {dict}:
            raise BadRequest(400, fmt, "shape", f"{fmt} must be a list of objects (records)")
        return len(data)
    if fmt != "dataframe_records" and isinstance(data, dict):
        lists = list(data.values())
        if set(map(type, lists)) - {list} or len(set(map(len, lists))) > 1:
            raise BadRequest(
                400, fmt, "shape", f"{fmt} as columns must map each name to a list of equal length"
            )
        return len(lists[0]) if lists else 0
    raise BadRequest(400, fmt, "shape", f"{fmt} must be a list of records")


# -- the guard ---------------------------------------------------------------------------
@dataclass
class _Exchange:
    """What the guard learns about one request, for the log and the metrics."""

    endpoint: str
    started: float = field(default_factory=time.perf_counter)
    status: int = 500
    rows: int | None = None
    version: str | None = None


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest(400, None, "body", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest(
                413,
                None,
                "body size",
                f"the body is larger than {limit} bytes (rule: body size)",
                {"max_bytes": limit},
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _drain(receive: Receive, length: int, cap: int = 64 * 1024 * 1024) -> None:
    """Read and drop a refused body (up to ``cap`` bytes) so the client, still sending,
    reads the 413 instead of a reset connection."""
    if length > cap:
        return
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def send_json(send: Send, status: int, body: Any, headers: list | None = None) -> None:
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


class Guard:
    """ASGI layer in front of MLflow's scoring app and the service's own routes.

    Parameters
    ----------
    routes : ASGI app
        The page, CDS Hooks, model card and metrics routes.
    champion : Champion
    limits : Limits
    token : str or None
        Bearer token every request but the page and health checks must carry.
    metrics : Metrics
    """

    def __init__(
        self, routes: ASGIApp, champion: Champion, limits: Limits, token: str | None, metrics: Any
    ) -> None:
        self.routes = routes
        self.champion = champion
        self.limits = limits
        self.token = token.encode() if token else None
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.routes(scope, receive, send)
            return
        path = scope["path"]
        ex = _Exchange(endpoint=_endpoint(path))
        served = self.champion.current
        ex.version = served.version if served else None
        started = False

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                ex.status = message["status"]
                started = True
            await send(message)

        try:
            if self.token is not None and path not in OPEN_PATHS and not self._authorized(scope):
                raise BadRequest(
                    401,
                    "Authorization",
                    "bearer token",
                    "missing or wrong bearer token (rule: Authorization: Bearer <token>)",
                )
            await asyncio.wait_for(
                self._dispatch(scope, receive, tracked_send, served, ex),
                timeout=self.limits.deadline_s,
            )
        except BadRequest as exc:
            if not started:
                headers = [(b"www-authenticate", b"Bearer")] if exc.status == 401 else None
                await send_json(tracked_send, exc.status, exc.body(), headers)
        except TimeoutError:
            if not started:
                await send_json(
                    tracked_send,
                    503,
                    BadRequest(
                        503,
                        None,
                        "deadline",
                        f"the request took longer than {self.limits.deadline_s:g} s "
                        "(rule: deadline); retry, or send fewer rows",
                    ).body(),
                    [(b"retry-after", b"1")],
                )
        except Exception as exc:  # never a traceback or a value to the caller
            reference = uuid.uuid4().hex[:12]
            log.error(
                "internal error %s on %s: %s\n%s",
                reference,
                ex.endpoint,
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            if not started:
                await send_json(
                    tracked_send,
                    500,
                    {
                        "error_code": "INTERNAL_ERROR",
                        "message": "internal error",
                        "reference": reference,
                    },
                )
        finally:
            self._record(scope, ex)

    def _authorized(self, scope: Scope) -> bool:
        for key, value in scope["headers"]:
            if key == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    given.strip(), self.token or b""
                )
        return False

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send, served: Served | None, ex: _Exchange
    ) -> None:
        path = scope["path"]
        if served is None:
            raise BadRequest(503, None, "model", "no model is loaded yet")
        if path not in SCORING_PATHS:
            await self.routes(scope, receive, send)
            return
        if path != "/invocations":
            if scope["method"] != "GET":
                raise BadRequest(405, None, "method", f"{path} takes GET (rule: method)")
            await served.scoring(scope, receive, send)
            return
        if scope["method"] != "POST":
            raise BadRequest(405, None, "method", "/invocations takes POST (rule: method)")
        await self._invocations(scope, receive, send, served, ex)

    async def _invocations(
        self, scope: Scope, receive: Receive, send: Send, served: Served, ex: _Exchange
    ) -> None:
        headers = dict(scope["headers"])
        mime, _, params = headers.get(b"content-type", b"").decode("latin-1").partition(";")
        mime = mime.strip().lower()
        if mime not in JSON_TYPES + CSV_TYPES or (
            params.strip() and params.strip().lower().replace(" ", "") != "charset=utf-8"
        ):
            raise BadRequest(
                415,
                "Content-Type",
                "media type",
                "send application/json or text/csv, UTF-8 (rule: media type)",
                {"types": [*JSON_TYPES, *CSV_TYPES]},
            )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            await _drain(receive, int(length))
            raise BadRequest(
                413,
                None,
                "body size",
                f"the body is larger than {self.limits.max_body_bytes} bytes (rule: body size)",
                {"max_bytes": self.limits.max_body_bytes},
            )
        body = await _read_body(receive, self.limits.max_body_bytes)
        if not body.strip():
            raise BadRequest(400, None, "body", "the body is empty (rule: a JSON or CSV body)")
        rows = await self._rows(body, mime)
        if rows is not None:
            ex.rows = rows
            self._check_rows(rows)
        state = RequestState(max_rows=self.limits.max_rows)
        token = REQUEST_STATE.set(state)
        try:
            with _gc_paused(len(body) > GC_PAUSE_BYTES):
                status, out_headers, chunks = await _call(served.scoring, scope, body)
        finally:
            REQUEST_STATE.reset(token)
        ex.rows = state.rows if state.rows is not None else rows
        if status == 200:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        *[(k, v) for k, v in out_headers if k.lower() != b"content-length"],
                        (b"content-length", str(sum(map(len, chunks))).encode()),
                        (b"x-model-name", served.name.encode()),
                        (b"x-model-version", served.version.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"".join(chunks)})
            return
        # MLflow's own error body echoes the request: it is dropped here, always.
        if state.violations:
            first = state.violations[0]
            if first.rule == "shape" and mime in JSON_TYPES and rows is None:
                count_rows(await asyncio.to_thread(parse_json, body))  # names the input key
            await send_json(
                send,
                413 if first.rule == "rows" and first.allowed else 400,
                {
                    "error_code": "INVALID_PARAMETER_VALUE",
                    **first.to_dict(),
                    "errors": [v.to_dict() for v in state.violations],
                },
            )
            return
        if state.failed is not None or state.predicted:
            raise RuntimeError(f"the model failed: {type(state.failed).__name__}")
        if mime in JSON_TYPES and rows is None:  # say which rule MLflow's parser tripped on
            self._check_rows(count_rows(await asyncio.to_thread(parse_json, body)))
        what = "JSON in MLflow's scoring format" if mime in JSON_TYPES else "CSV with a header row"
        raise BadRequest(
            400, None, "format", f"the body could not be read as {what} (rule: format)"
        )

    async def _rows(self, body: bytes, mime: str) -> int | None:
        """Rows of the request when they must be counted before MLflow parses it: a CSV
        body's lines; a JSON body parsed here (NaN and Infinity refused, shape checked)
        only when it could hold a non-finite literal or more rows than the limit (more
        brackets than rows allow), since MLflow parses it anyway. None: within limits."""
        if mime in CSV_TYPES:
            return max(0, body.strip().count(b"\n"))
        brackets = body.count(b"[") + body.count(b"{")
        if _NON_FINITE.search(body) is None and brackets <= self.limits.max_rows + 8:
            return None
        doc = parse_json(body) if len(body) < 65536 else await asyncio.to_thread(parse_json, body)
        return count_rows(doc)

    def _check_rows(self, rows: int) -> None:
        if rows > self.limits.max_rows:
            raise BadRequest(
                413,
                None,
                "rows",
                f"{rows} rows in one request; at most {self.limits.max_rows} (rule: rows per "
                "request)",
                {"max_rows": self.limits.max_rows},
            )
        if rows == 0:
            raise BadRequest(400, None, "rows", "the request has no rows (rule: at least 1)")

    def _record(self, scope: Scope, ex: _Exchange) -> None:
        latency = time.perf_counter() - ex.started
        self.metrics.observe(ex.endpoint, ex.status, latency, ex.rows)
        client = scope.get("client")
        access_log.info(
            json.dumps(
                {
                    "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "method": scope.get("method"),
                    "endpoint": ex.endpoint,
                    "status": ex.status,
                    "rows": ex.rows,
                    "latency_ms": round(latency * 1000, 2),
                    "model_version": ex.version,
                    "caller": client[0] if client else None,
                    "auth": "token" if self.token is not None else "open",
                }
            )
        )


def _endpoint(path: str) -> str:
    """A bounded label for metrics and logs (never the raw path of an unknown route)."""
    if path in ENDPOINTS:
        return path
    if path == "/cds-services" or path.startswith("/cds-services/"):
        return "/cds-services" if path == "/cds-services" else "/cds-services/{id}"
    return "other"


GC_PAUSE_BYTES = 256 * 1024
_gc_lock = threading.Lock()
_gc_pauses = 0


@contextlib.contextmanager
def _gc_paused(pause: bool):
    """The cyclic garbage collector off while a large batch is answered: parsing it and
    building its answer allocate a few hundred thousand containers, and the collections
    they trigger over that live heap took a third of a 10,000-row request (measured).
    Reference counting still frees everything; the collector runs again after the last
    paused request (a count, since requests overlap)."""
    global _gc_pauses
    if not pause:
        yield
        return
    with _gc_lock:
        _gc_pauses += 1
        if _gc_pauses == 1:
            gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0:
                gc.enable()


async def _call(app: ASGIApp, scope: Scope, body: bytes) -> tuple[int, list, list[bytes]]:
    """Run an ASGI app on a request body held in memory; collect its response."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # nothing more: wait to be cancelled
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    status, headers, chunks = 500, [], []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(dict(scope), receive, send)
    return status, headers, chunks


# -- metrics -----------------------------------------------------------------------------
class Metrics:
    """Prometheus metrics of one service (its own registry, so tests can run several)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pipeline_serving_requests",
            "Requests by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pipeline_serving_request_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.rows = Counter("pipeline_serving_rows", "Patients scored", registry=self.registry)
        self.model = Gauge(
            "pipeline_serving_model_version",
            "The registry version being served",
            ["model_name", "alias"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "pipeline_serving_model_swaps", "Versions swapped in", registry=self.registry
        )

    def observe(self, endpoint: str, status: int, latency: float, rows: int | None) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(latency)
        if endpoint == "/invocations" and status == 200 and rows:
            self.rows.inc(rows)

    def served(self, name: str, alias: str, version: str) -> None:
        self.model.labels(name, alias).set(float(version) if version.isdigit() else -1)
        self.swaps.inc()

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# -- assembling and running --------------------------------------------------------------
def read_token(token_file: Path | None, token_env: str | None) -> str | None:
    """The bearer token from a file (first line) or an environment variable."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ServeError(f"token file {token_file}: {exc.strerror}") from None
        if len(token) < 16:
            raise ServeError(f"token file {token_file}: the token needs 16 characters or more")
        return token
    token = os.environ.get(token_env) if token_env else None
    if token is not None and len(token.strip()) < 16:
        raise ServeError(f"${token_env}: the token needs 16 characters or more")
    return token.strip() if token else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_app(champion: Champion, limits: Limits, token: str | None) -> Guard:
    """The whole service: MLflow's scoring app for the champion, the clinician page, CDS
    Hooks, the model card and the metrics, behind the guard."""
    from pipeline.serving.routes import routes

    metrics = Metrics()
    previous = champion.on_swap

    def on_swap(old: Served | None, new: Served) -> None:
        metrics.served(new.name, champion.alias, new.version)
        if previous is not None:
            previous(old, new)

    champion.on_swap = on_swap
    if champion.current is not None:
        metrics.served(champion.current.name, champion.alias, champion.current.version)
    app = routes(champion, metrics, auth_required=token is not None)
    return Guard(app, champion, limits, token, metrics)


def serve(
    *,
    tracking_uri: str,
    model_name: str,
    alias: str,
    host: str,
    port: int,
    serving: Any,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the service until interrupted (``pipeline serve``)."""
    import uvicorn

    _log_to(serving.access_log)
    token = read_token(serving.token_file, serving.token_env)
    if not is_loopback(host) and token is None:
        raise ServeError(
            f"binding {host} (not loopback) needs a bearer token: set serving.token_file in "
            f"the config or ${serving.token_env}"
        )
    if not is_loopback(host) and serving.tls_cert is None:
        log.warning("serving %s without TLS: the token and answers travel in clear", host)
    champion = Champion(tracking_uri, model_name, alias, poll_s=serving.poll_s)
    champion.refresh()
    limits = Limits(serving.max_rows, serving.max_body_bytes, serving.deadline_s)
    app = build_app(champion, limits, token)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(serving.tls_cert) if serving.tls_cert else None,
        ssl_keyfile=str(serving.tls_key) if serving.tls_key else None,
        access_log=False,
        server_header=False,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    scheme = "https" if serving.tls_cert else "http"
    url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"

    with _sighup(champion):
        champion.start()
        try:
            if on_ready is not None:
                on_ready(url)
            server.run()
        finally:
            champion.stop()


@contextlib.contextmanager
def _sighup(champion: Champion):
    """SIGHUP re-reads the alias at once (the main thread only can install it)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        yield
        return
    before = signal.signal(signal.SIGHUP, lambda *_: champion.wake())
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, before)


def _log_to(path: Path | None) -> None:
    """Access log lines to stderr, and to a file when configured."""
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    if not access_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
    if path is not None:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def serve_config(cfg: Any, *, alias: str, host: str, port: int, console: Any) -> None:
    """``pipeline serve``: the federation's registry and serving settings."""

    def ready(url: str) -> None:
        console.print(
            f"serving [bold]{cfg.mlflow.model_name}[/] @{alias} on {url}  "
            f"(page {url}/, REST {url}/invocations, CDS Hooks {url}/cds-services, "
            f"metrics {url}/metrics); Ctrl-C stops",
            highlight=False,
        )

    serve(
        tracking_uri=cfg.tracking_uri,
        model_name=cfg.mlflow.model_name,
        alias=alias,
        host=host,
        port=port,
        serving=cfg.serving,
        on_ready=ready,
    )
