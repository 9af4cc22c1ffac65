"""``/v1/admin/tenants`` and ``/v1/api-keys``."""

from __future__ import annotations

import datetime as dt
import hmac

from fastapi import APIRouter, Request, Response

from api.deps import Caller, Repo, Session, app_state
from api.errors import ApiError, unauthenticated
from api.schemas import (
    AUTH_ERRORS,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyView,
    TenantCreate,
    TenantCreated,
    problem_responses,
)
from api.tenants.service import create_api_key, create_tenant
from models import ApiKey

router = APIRouter(tags=["tenants"])


def _require_admin(request: Request) -> None:
    token = app_state(request).settings.admin_token
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if token is None or not token.get_secret_value():
        raise ApiError(404, "not_found", "The admin API is disabled (LEDGERBRIDGE_ADMIN_TOKEN is not set)")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.encode(), token.get_secret_value().encode()
    ):
        raise unauthenticated("A valid admin token is required")


@router.post("/v1/admin/tenants", status_code=201, response_model=TenantCreated, responses=AUTH_ERRORS)
async def admin_create_tenant(body: TenantCreate, request: Request, session: Session) -> TenantCreated:
    """Create a tenant and its first API key (shown once). Needs the admin token."""
    _require_admin(request)
    tenant, key = await create_tenant(session, body.name)
    return TenantCreated(id=tenant.id, name=tenant.name, api_key=key)


def _view(row: ApiKey) -> ApiKeyView:
    return ApiKeyView(
        id=row.id, name=row.name, prefix=row.prefix, created_at=row.created_at, revoked_at=row.revoked_at
    )


@router.post("/v1/api-keys", status_code=201, response_model=ApiKeyCreated, responses=AUTH_ERRORS)
async def create_key(body: ApiKeyCreate, caller: Caller, session: Session) -> ApiKeyCreated:
    """Create another API key for the calling tenant; the key is in this response only."""
    row, key = await create_api_key(session, caller.tenant_id, body.name)
    return ApiKeyCreated(**_view(row).model_dump(), api_key=key)


@router.get("/v1/api-keys", response_model=ApiKeyList, responses=problem_responses(401))
async def list_keys(repo: Repo) -> ApiKeyList:
    """The tenant's keys, without secrets."""
    rows = (await repo.session.execute(repo.scoped(ApiKey).order_by(ApiKey.created_at))).scalars()
    return ApiKeyList(data=[_view(row) for row in rows])


@router.delete("/v1/api-keys/{key_id}", status_code=204, responses=problem_responses(401, 404))
async def revoke_key(key_id: str, repo: Repo) -> Response:
    """Revoke a key: it stops working at once."""
    row = (await repo.session.execute(repo.scoped(ApiKey).where(ApiKey.id == key_id))).scalar_one_or_none()
    if row is None:
        raise ApiError(404, "not_found", "No such API key")
    if row.revoked_at is None:
        row.revoked_at = dt.datetime.now(dt.UTC)
    return Response(status_code=204)
