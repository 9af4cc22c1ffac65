"""Per-request context: the gateway's request id and the upstream calls made while serving it."""

from __future__ import annotations

import secrets
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

_request: ContextVar[RequestContext | None] = ContextVar("ledgerbridge_request", default=None)


@dataclass
class RequestContext:
    request_id: str
    tenant_id: str | None = None
    connection_id: str | None = None
    provider: str | None = None
    scope: str | None = None
    idempotency_key: str | None = None
    error_code: str | None = None
    request_body: Any = None
    upstream_calls: list[dict[str, Any]] = field(default_factory=list)
    upstream_request_id: str | None = None
    rate_limit_headers: dict[str, str] = field(default_factory=dict)


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def begin(request_id: str | None = None) -> RequestContext:
    ctx = RequestContext(request_id or new_request_id())
    _request.set(ctx)
    return ctx


def current() -> RequestContext | None:
    return _request.get()


def current_request_id() -> str | None:
    ctx = _request.get()
    return ctx.request_id if ctx else None
