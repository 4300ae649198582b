"""The service's own routes beside scoring: the clinician page, the model card, the
Prometheus metrics and CDS Hooks. Each reads the champion at the start of the request,
so a swap never mixes two versions in one answer. The guard has already checked the
host, the token and the body's size; anything a route fails on is a JSON 500."""

from __future__ import annotations

import asyncio
import html
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from pipeline.serving import api_docs, cds_hooks, openapi, page
from pipeline.serving.body import parse_json
from pipeline.serving.champion import Champion, model_card
from pipeline.serving.errors import BadRequest
from pipeline.serving.metrics import Metrics


def _error(exc: BadRequest | cds_hooks.HookError, status: int | None = None) -> JSONResponse:
    code = status or getattr(exc, "status", 400)
    return JSONResponse(exc.body(), status_code=code)


def routes(
    champion: Champion,
    metrics: Metrics,
    *,
    auth_required: bool,
    public_url: str | None = None,
    max_rows: int = 10_000,
) -> FastAPI:
    """The routes; `public_url` (configured, never a request's ``Host``) makes the card's
    link to the model card and the OpenAPI document's server."""
    api = FastAPI(title="pipeline serve", docs_url=None, redoc_url=None, openapi_url=None)

    @api.exception_handler(BadRequest)
    async def refused(_request: Request, exc: BadRequest) -> JSONResponse:
        return _error(exc)

    @api.exception_handler(Exception)
    async def failed(_request: Request, _exc: Exception) -> JSONResponse:
        # Raised again to the guard, which logs it with a reference; the client gets JSON.
        return JSONResponse(
            {"error_code": "INTERNAL_ERROR", "message": "internal error"}, status_code=500
        )

    def served() -> Any:
        current = champion.current
        if current is None:
            raise BadRequest(503, None, "model", "no model is loaded yet")
        return current

    @api.get("/", response_class=HTMLResponse)
    async def clinician_page() -> HTMLResponse:
        s = served()
        body = page.render(
            s.contract, model_name=s.name, model_version=s.version, auth_required=auth_required
        )
        return HTMLResponse(body, headers={"content-security-policy": _CSP})

    @api.get("/model-card")
    async def model_card_route(request: Request) -> Response:
        s = served()
        card = s.card
        if card is None:  # logged after the version was loaded?
            card = await asyncio.to_thread(model_card, s.run_id)
        if card is None:
            return JSONResponse(
                {
                    "error_code": "RESOURCE_DOES_NOT_EXIST",
                    "message": f"model {s.name} version {s.version} has no model card "
                    f"(no model_card.md at the root of its run {s.run_id})",
                },
                status_code=404,
            )
        if "text/html" in request.headers.get("accept", ""):
            title = html.escape(f"{s.name} version {s.version}: model card")
            return HTMLResponse(
                f"<!doctype html><meta charset=utf-8><title>{title}</title>"
                f"<pre style='white-space:pre-wrap;font:14px/1.5 system-ui;max-width:80ch;"
                f"margin:24px auto'>{html.escape(card)}</pre>",
                headers={"content-security-policy": _CSP},
            )
        return Response(card, media_type="text/markdown; charset=utf-8")

    def api_document() -> dict[str, Any]:
        s = served()
        return openapi.document(
            s.contract,
            model_name=s.name,
            model_version=s.version,
            max_rows=max_rows,
            public_url=public_url,
            auth_required=auth_required,
        )

    @api.get("/openapi.json")
    async def openapi_json() -> JSONResponse:
        return JSONResponse(api_document())

    @api.get("/docs", response_class=HTMLResponse)
    async def docs() -> HTMLResponse:
        return HTMLResponse(
            api_docs.render(api_document()), headers={"content-security-policy": _CSP}
        )

    @api.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @api.get("/cds-services")
    async def discovery() -> JSONResponse:
        s = served()
        return JSONResponse(cds_hooks.discovery(s.contract, s.name))

    @api.post("/cds-services/{service}")
    async def patient_view(service: str, request: Request) -> JSONResponse:
        s = served()
        if service != cds_hooks.service_id(s.name):
            return JSONResponse(
                {
                    "error_code": "ENDPOINT_NOT_FOUND",
                    "message": "no such CDS service; see GET /cds-services (rule: service id)",
                },
                status_code=404,
            )
        raw = await request.body()  # the guard held it to serving.max_hook_bytes
        if not raw.strip():
            return _error(BadRequest(400, None, "body", "the body is empty (rule: JSON)"))
        try:
            body = parse_json(raw)
            card_url = f"{public_url}/model-card" if public_url and s.card is not None else None
            answer = await asyncio.to_thread(
                cds_hooks.hook_response,
                s.contract,
                s.risk_model.model,
                body,
                model_name=s.name,
                model_version=s.version,
                card_url=card_url,
            )
        except BadRequest as exc:
            return _error(exc)
        except cds_hooks.HookError as exc:
            return _error(exc, 400)
        return JSONResponse(answer)

    @api.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def not_found(rest: str) -> JSONResponse:
        return JSONResponse(
            {
                "error_code": "ENDPOINT_NOT_FOUND",
                "message": "no such endpoint (rule: one of /, /invocations, /ping, /health, "
                "/version, /metrics, /model-card, /cds-services, /openapi.json, /docs)",
            },
            status_code=404,
        )

    return api


# Everything the page needs is inline; nothing may load from elsewhere.
_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'"
)

__all__ = ["routes"]
