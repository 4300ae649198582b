"""The guard: a plain ASGI layer in front of everything the service answers.

It reads every request before anything else does, and every limit applies before the
work it limits:

- the ``Host`` header against an allow-list (by default the bound address and localhost),
  so a page on another site cannot reach the tokenless loopback default through DNS
  rebinding;
- a bearer token (compared in constant time) whenever one is configured;
- the body's size per endpoint (``Content-Length`` first, then while it is read), for
  every method that carries one, before any route sees it; a deadline per request;
- ``/invocations`` validated first, then predicted (:mod:`pipeline.serving.scoring`);
  ``/ping``, ``/health`` and ``/version`` answered as MLflow's scoring server does;
- errors: every refusal is a 4xx whose JSON names the field, the rule and what is
  allowed, one entry per rule, capped, and never echoes the request; anything else is a
  JSON 500 with a reference to the log, never a trace;
- an access log line per request (time, version, rows, status, latency, caller) holding
  no patient value, and the metrics of :mod:`pipeline.serving.metrics`.
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.serving.body import read_body
from pipeline.serving.champion import Champion, Served
from pipeline.serving.errors import ASGIApp, BadRequest, Receive, Scope, Send
from pipeline.serving.metrics import Metrics
from pipeline.serving.scoring import CSV_TYPES, JSON_TYPES, score

log = logging.getLogger("pipeline.serving")
access_log = logging.getLogger("pipeline.serving.access")

OPEN_PATHS = {"/", "/ping", "/health", "/openapi.json", "/docs"}
ENDPOINTS = {
    "/invocations",
    "/ping",
    "/health",
    "/version",
    "/metrics",
    "/model-card",
    "/",
    "/openapi.json",
    "/docs",
}
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass(frozen=True)
class Limits:
    """What one request may be (defaults: :class:`pipeline.config.ServingConfig`):
    rows and body bytes of a scoring request, body bytes of a CDS Hooks call and of any
    other request, and the deadline of each."""

    max_rows: int = 10_000
    max_body_bytes: int = 16 * 1024 * 1024
    max_hook_bytes: int = 1024 * 1024
    max_other_bytes: int = 64 * 1024
    deadline_s: float = 10.0

    def body_bytes(self, path: str) -> int:
        if path == "/invocations":
            return self.max_body_bytes
        if path.startswith("/cds-services/"):
            return self.max_hook_bytes
        return self.max_other_bytes


@dataclass
class _Exchange:
    """What the guard learns about one request, for the log and the metrics."""

    endpoint: str
    started: float = field(default_factory=time.perf_counter)
    status: int = 500
    rows: int | None = None
    version: str | None = None


async def send_json(send: Send, status: int, body: Any, headers: list | None = None) -> None:
    await send_bytes(send, status, json.dumps(body).encode(), headers=headers)


async def send_bytes(
    send: Send,
    status: int,
    raw: bytes,
    *,
    media_type: bytes = b"application/json",
    headers: list | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media_type),
                (b"content-length", str(len(raw)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


def _replay(body: bytes) -> Receive:
    """A `receive` that gives the routes the body the guard already read."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # nothing more: wait to be cancelled
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class Guard:
    """ASGI layer in front of the scoring endpoint and the service's own routes.

    Parameters
    ----------
    routes : ASGI app
        The page, CDS Hooks, model card, OpenAPI document and metrics routes.
    champion : Champion
    limits : Limits
    token : str or None
        Bearer token every request but the page and health checks must carry.
    metrics : Metrics
    hosts : iterable of str, optional
        The ``Host`` values (``name`` or ``name:port``) the service answers; None: any.
    """

    def __init__(
        self,
        routes: ASGIApp,
        champion: Champion,
        limits: Limits,
        token: str | None,
        metrics: Metrics,
        hosts: Iterable[str] | None = None,
    ) -> None:
        self.routes = routes
        self.champion = champion
        self.limits = limits
        self.token = token.encode() if token else None
        self.metrics = metrics
        self.hosts = None if hosts is None else {h.lower().encode() for h in hosts}

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
            self._check_host(scope)
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

    def _check_host(self, scope: Scope) -> None:
        if self.hosts is None:
            return
        host = next((v for k, v in scope["headers"] if k == b"host"), b"").lower()
        if host not in self.hosts:
            raise BadRequest(
                400,
                "Host",
                "host",
                "this service answers only its own host names (rule: serving.allowed_hosts)",
            )

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
        path, method = scope["path"], scope["method"]
        headers = dict(scope["headers"])
        body = b""
        if method in BODY_METHODS:
            limit = self.limits.body_bytes(path)
            body = await read_body(receive, limit, headers.get(b"content-length"))
            receive = _replay(body)
        if path in ("/ping", "/health", "/version"):
            if method != "GET":
                raise BadRequest(405, None, "method", f"{path} takes GET (rule: method)")
            await self._health(path, send, served)
            return
        if served is None:
            raise BadRequest(503, None, "model", "no model is loaded yet")
        if path != "/invocations":
            await self.routes(scope, receive, send)
            return
        if method != "POST":
            raise BadRequest(405, None, "method", "/invocations takes POST (rule: method)")
        mime = self._media_type(headers)
        if not body.strip():
            raise BadRequest(400, None, "body", "the body is empty (rule: a JSON or CSV body)")
        with _gc_paused(len(body) > GC_PAUSE_BYTES):
            answer, ex.rows = await asyncio.to_thread(
                score, served.risk_model, body, mime, self.limits.max_rows
            )
        await send_bytes(
            send,
            200,
            answer,
            headers=[
                (b"x-model-name", served.name.encode()),
                (b"x-model-version", served.version.encode()),
            ],
        )

    async def _health(self, path: str, send: Send, served: Served | None) -> None:
        """MLflow's scoring server's own answers: a newline while a model is loaded
        (404 before), and MLflow's version."""
        if path == "/version":
            from mlflow.version import VERSION

            await send_bytes(send, 200, VERSION.encode())
            return
        await send_bytes(send, 200 if served is not None else 404, b"\n")

    @staticmethod
    def _media_type(headers: dict[bytes, bytes]) -> str:
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
        return mime

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
