"""Response and request bodies of the gateway's own resources, and the documented error responses."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ProblemUpstreamError(BaseModel):
    code: str
    message: str


class ProblemUpstream(BaseModel):
    provider: str
    status: int | None = None
    request_id: str | None = None
    errors: list[ProblemUpstreamError] = Field(default_factory=list)


class Problem(BaseModel):
    """``application/problem+json`` (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str | None = None
    upstream: ProblemUpstream | None = None
    errors: list[dict[str, str]] | None = None


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Bad request (e.g. an invalid `Idempotency-Key`)",
        401: "Missing, wrong or revoked API key (`unauthenticated`)",
        403: "Forbidden",
        404: "`connection_not_found` or `not_found`",
        409: "`reauthorization_required`, `business_selection_required` or `idempotency_key_in_use`",
        413: "Body too large",
        422: "`validation_error`, `unbalanced_journal`, `unsupported_field`, `idempotency_key_reused`",
        429: "`rate_limited` or `upstream_rate_limited` (with `Retry-After`)",
        501: "`unsupported_operation`",
        502: "`upstream_error`",
        503: "`upstream_unavailable`",
        504: "`upstream_timeout` or `outcome_unknown`",
    }
    return {
        status: {
            "model": Problem,
            "description": descriptions[status],
            "content": {"application/problem+json": {}},
        }
        for status in statuses
    }


AUTH_ERRORS = problem_responses(401, 413, 422)
CONNECTION_ERRORS = problem_responses(401, 404, 409, 413, 422, 429, 502, 503, 504)
UNIFIED_READ_ERRORS = problem_responses(401, 404, 409, 422, 429, 501, 502, 503, 504)
UNIFIED_WRITE_ERRORS = problem_responses(400, 401, 404, 409, 413, 422, 429, 501, 502, 503, 504)


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)


class TenantCreated(BaseModel):
    id: str
    name: str
    api_key: str = Field(description="Shown once; only its hash is stored")


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", max_length=200)


class ApiKeyView(BaseModel):
    id: str
    name: str
    prefix: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


class ApiKeyCreated(ApiKeyView):
    api_key: str = Field(description="Shown once; only its hash is stored")


class ApiKeyList(BaseModel):
    data: list[ApiKeyView]


class Health(BaseModel):
    last_success_at: dt.datetime | None = None
    last_error_at: dt.datetime | None = None
    last_error: str | None = None
    credentials_expire_at: dt.datetime | None = None


class ConnectionView(BaseModel):
    id: str
    provider: str
    status: str
    settings: dict[str, Any]
    health: Health
    created_at: dt.datetime
    updated_at: dt.datetime
    authorization_url: str | None = None


class ConnectionList(BaseModel):
    data: list[ConnectionView]
    next_cursor: str | None = None


class ConnectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: str = Field(min_length=1, max_length=50)
    redirect_url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://")
    credentials: dict[str, Any] | None = None
    rest: dict[str, Any] | None = None


class CheckView(BaseModel):
    ok: bool
    detail: str
    connection: ConnectionView


class ProviderCapability(BaseModel):
    resource: str
    operations: list[str]
    filters: list[str]


class ProviderView(BaseModel):
    name: str
    display_name: str
    auth_mode: str
    capabilities: list[ProviderCapability]
    credentials_schema: dict[str, Any] | None = None


class ProviderList(BaseModel):
    data: list[ProviderView]
