"""Assembling and running the service (``pipeline serve``): scoring, the clinician page,
CDS Hooks, the model card, the OpenAPI document and the metrics, behind the guard; a
bearer token always off loopback; the hosts it answers; uvicorn, with a deadline on a
request's headers; SIGHUP re-reads the alias at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.hosts import is_loopback, is_wildcard
from pipeline.serving.champion import Champion, Served
from pipeline.serving.errors import ServeError
from pipeline.serving.guard import Guard, Limits, access_log
from pipeline.serving.metrics import Metrics

log = logging.getLogger("pipeline.serving")


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


def allowed_hosts(host: str, port: int, configured: list[str] | None) -> set[str] | None:
    """The ``Host`` values the service answers: the configured ones, else the bound
    address and localhost, with and without the port. None (any) for a wildcard bind
    with none configured: the machine's names are unknown, and the token guards it."""
    if configured:
        return set(configured)
    if is_wildcard(host):
        log.warning("bound to every interface with no serving.allowed_hosts: any Host is answered")
        return None
    names = {host if ":" not in host else f"[{host}]", "localhost", "127.0.0.1", "[::1]"}
    return names | {f"{name}:{port}" for name in names}


def build_app(
    champion: Champion,
    limits: Limits,
    token: str | None,
    *,
    hosts: set[str] | None = None,
    public_url: str | None = None,
) -> Guard:
    """The whole service behind the guard. `public_url` is where clients reach it (links
    on CDS Hooks cards, the OpenAPI document's server); never taken from a request."""
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
    app = routes(
        champion,
        metrics,
        auth_required=token is not None,
        public_url=public_url,
        max_rows=limits.max_rows,
    )
    return Guard(app, champion, limits, token, metrics, hosts)


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
    limits = Limits(
        max_rows=serving.max_rows,
        max_body_bytes=serving.max_body_bytes,
        max_hook_bytes=serving.max_hook_bytes,
        deadline_s=serving.deadline_s,
    )
    scheme = "https" if serving.tls_cert else "http"
    url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"
    app = build_app(
        champion,
        limits,
        token,
        hosts=allowed_hosts(host, port, serving.allowed_hosts),
        public_url=(serving.public_url or (None if is_wildcard(host) else url)),
    )
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
        http=header_deadline(serving.header_timeout_s),
    )
    server = uvicorn.Server(config)

    with _sighup(champion):
        champion.start()
        try:
            if on_ready is not None:
                on_ready(url)
            server.run()
        finally:
            champion.stop()


def header_deadline(seconds: float) -> type:
    """uvicorn's HTTP/1.1 protocol with a deadline on every request's headers: a client
    that has not finished them within `seconds` of connecting (or of its last answer, on
    a kept-alive connection) is disconnected, so slow headers cannot hold connections
    open (uvicorn's own keep-alive timer stops at the first byte received)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _due: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._due = self.loop.call_later(seconds, self._late)

        def _disarm(self) -> None:
            if self._due is not None:
                self._due.cancel()
                self._due = None

        def _late(self) -> None:
            self._due = None
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a request's headers have arrived

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline


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
