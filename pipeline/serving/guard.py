"""The guard: a plain ASGI layer in front of MLflow's scoring app and the service's own
routes.

MLflow's scoring app (``mlflow.pyfunc.scoring_server.init``) keeps the REST protocol
(``/invocations`` with ``dataframe_split``, ``dataframe_records``, ``inputs`` or
``instances``; ``/ping``, ``/health``, ``/version``), but its error bodies echo the request
and can carry stack traces, it takes NaN for a number and it has no access control. The
guard adds:

- errors: every bad request is a 4xx whose JSON names the field, the rule and what is
  allowed; MLflow's error bodies are dropped, never forwarded; nothing of the request is
  echoed; limits on body size and rows; NaN, Infinity and booleans for numbers refused;
  a deadline per request;
- access: a bearer token (compared in constant time) whenever one is configured; an
  access log line per request (time, version, rows, status, latency, caller) holding no
  patient value; the metrics of :mod:`pipeline.serving.metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.models.risk_model import REQUEST_STATE, RequestState
from pipeline.serving.body import NON_FINITE, count_rows, drain, parse_json, read_body
from pipeline.serving.champion import Champion, Served
from pipeline.serving.errors import ASGIApp, BadRequest, Receive, Scope, Send
from pipeline.serving.metrics import Metrics

log = logging.getLogger("pipeline.serving")
access_log = logging.getLogger("pipeline.serving.access")

SCORING_PATHS = {"/invocations", "/ping", "/health", "/version"}
OPEN_PATHS = {"/", "/ping", "/health"}
ENDPOINTS = {"/invocations", "/ping", "/health", "/version", "/metrics", "/model-card", "/"}
JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv",)


@dataclass(frozen=True)
class Limits:
    """What one request may be (defaults: :class:`pipeline.config.ServingConfig`)."""

    max_rows: int = 10_000
    max_body_bytes: int = 16 * 1024 * 1024
    deadline_s: float = 10.0


@dataclass
class _Exchange:
    """What the guard learns about one request, for the log and the metrics."""

    endpoint: str
    started: float = field(default_factory=time.perf_counter)
    status: int = 500
    rows: int | None = None
    version: str | None = None


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
        self,
        routes: ASGIApp,
        champion: Champion,
        limits: Limits,
        token: str | None,
        metrics: Metrics,
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
            await drain(receive, int(length))
            raise BadRequest(
                413,
                None,
                "body size",
                f"the body is larger than {self.limits.max_body_bytes} bytes (rule: body size)",
                {"max_bytes": self.limits.max_body_bytes},
            )
        body = await read_body(receive, self.limits.max_body_bytes)
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
        if NON_FINITE.search(body) is None and brackets <= self.limits.max_rows + 8:
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
