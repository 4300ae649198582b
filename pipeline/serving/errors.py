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


MAX_ERRORS = 20  # entries one error body lists; a request breaking more rules is told how many


class BadRequest(Exception):
    """A request refused before the model sees it: status, field, rule, message, and
    every broken rule when there are several (``errors``, each one a dict of the same
    keys)."""

    def __init__(
        self,
        status: int,
        field: str | None,
        rule: str,
        message: str,
        allowed: Any = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.field, self.rule, self.allowed = status, field, rule, allowed
        self.errors = errors

    @classmethod
    def from_violations(cls, violations: list[Any]) -> BadRequest:
        """A request that breaks the contract: its first violation, and all of them (at
        most :data:`MAX_ERRORS`, then a count); a refused row count is a 413."""
        first = violations[0]
        status = 413 if first.rule == "rows" and first.allowed else 400
        errors = [v.to_dict() for v in violations[:MAX_ERRORS]]
        if len(violations) > MAX_ERRORS:
            errors.append(
                {
                    "field": None,
                    "rule": "errors",
                    "message": f"{len(violations) - MAX_ERRORS} more broken rules not listed",
                }
            )
        return cls(status, first.field, first.rule, first.message, first.allowed, errors)

    def body(self) -> dict[str, Any]:
        one = {"field": self.field, "rule": self.rule, "message": str(self)}
        if self.allowed is not None:
            one["allowed"] = self.allowed
        return {"error_code": error_code(self.status), **one, "errors": self.errors or [one]}


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
