"""Errors rendered as ``application/problem+json`` (RFC 9457, CONTRACT §5).

Gateway errors carry their own status and code (:class:`ApiError`); connector errors are translated here,
in one handler, so routes never build error responses by hand.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.context import current, current_request_id
from api.vault import VaultError
from connectors.errors import ConnectorError, RateLimited

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
TYPE_BASE = "https://ledgerbridge.dev/problems/"
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"


class ApiError(Exception):
    """A gateway-side failure with its HTTP status and stable code."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code.replace("_", " ").capitalize()
        self.headers = headers or {}
        self.extra = extra or {}


def unauthenticated(detail: str = "A valid API key is required") -> ApiError:
    return ApiError(401, "unauthenticated", detail, headers={"WWW-Authenticate": "Bearer"})


def connection_not_found() -> ApiError:
    return ApiError(404, "connection_not_found", "No such connection")


def problem_body(
    status: int, code: str, title: str, detail: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        # The rate-limit drafts register a problem type for an exhausted quota (reliability-notes.md §1.6).
        "type": QUOTA_EXCEEDED if status == 429 else TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": current_request_id(),
    }
    if extra:
        body.update(extra)
    ctx = current()
    if ctx is not None:
        ctx.error_code = code
    return body


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    response = JSONResponse(
        problem_body(status, code, title, detail, extra),
        status_code=status,
        media_type=PROBLEM,
        headers=headers,
    )
    if status == 429:
        response.headers["Cache-Control"] = "no-store"
    return response


def connector_error_response(exc: ConnectorError) -> JSONResponse:
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if exc.upstream is not None:
        extra["upstream"] = exc.upstream.as_dict()
    if exc.problems:
        extra["errors"] = [p.as_dict() for p in exc.problems]
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    if isinstance(exc, RateLimited):
        extra["violated-policies"] = [exc.policy]
    return problem_response(exc.status, exc.code, exc.title, exc.detail, headers=headers, extra=extra)


def _validation_problems(exc: RequestValidationError) -> tuple[str, list[dict[str, str]]]:
    problems = []
    code = "validation_error"
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body",)]
        kind = str(error.get("type", "value_error"))
        if kind == "unbalanced_journal":
            code = "unbalanced_journal"
        problems.append(
            {"field": ".".join(loc) or "body", "code": kind, "message": str(error.get("msg", ""))}
        )
    return code, problems


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem_response(
            exc.status, exc.code, exc.title, exc.detail, headers=dict(exc.headers or {}), extra=exc.extra
        )

    @app.exception_handler(ConnectorError)
    async def _connector_error(request: Request, exc: ConnectorError) -> JSONResponse:
        return connector_error_response(exc)

    @app.exception_handler(VaultError)
    async def _vault(request: Request, exc: VaultError) -> JSONResponse:
        # A stored secret that fails authentication was tampered with or moved: never use it, and say so.
        log.error("stored credentials failed to decrypt", extra={"reason": str(exc)})
        return problem_response(
            409,
            "credentials_unreadable",
            "Credentials unreadable",
            "The connection's stored credentials cannot be decrypted; reconnect it",
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        code, problems = _validation_problems(exc)
        title = "Unbalanced journal" if code == "unbalanced_journal" else "Validation failed"
        detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems)[:2000]
        return problem_response(422, code, title, detail, extra={"errors": problems})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
            401: "unauthenticated",
        }
        code = codes.get(exc.status_code, "http_error")
        return problem_response(
            exc.status_code,
            code,
            code.replace("_", " ").capitalize(),
            str(exc.detail),
            headers=dict(exc.headers or {}),
        )
