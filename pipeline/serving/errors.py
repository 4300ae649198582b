"""The service's errors: what a refused request is told, and what stops the service from
starting. A refusal names the field, the rule and what is allowed, in MLflow's error
body convention (``error_code`` and ``message``), and never echoes the request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pipeline.errors import PipelineError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServeError(PipelineError):
    """The service cannot start as configured."""


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
        return {"error_code": error_code(self.status), **one, "errors": [one]}


def error_code(status: int) -> str:
    return {
        400: "INVALID_PARAMETER_VALUE",
        401: "UNAUTHENTICATED",
        404: "ENDPOINT_NOT_FOUND",
        405: "METHOD_NOT_ALLOWED",
        413: "REQUEST_LIMIT_EXCEEDED",
        415: "UNSUPPORTED_MEDIA_TYPE",
        503: "TEMPORARILY_UNAVAILABLE",
    }.get(status, "INTERNAL_ERROR")
