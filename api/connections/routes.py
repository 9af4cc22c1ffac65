"""``/v1/connections``, ``/v1/oauth/callback`` and ``/v1/providers`` (CONTRACT §3, §6)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import delete, select, update

from api.connections.refs import ConnectionRef
from api.connections.service import (
    build_connector,
    connection_view,
    connector_class,
    record_health,
)
from api.connections.store import write_secrets
from api.deps import Repo, Session, app_state
from api.errors import ApiError
from api.schemas import (
    CONNECTION_ERRORS,
    CheckView,
    ConnectionCreate,
    ConnectionList,
    ConnectionView,
    ProviderCapability,
    ProviderList,
    ProviderView,
    problem_responses,
)
from connectors import registry
from connectors.errors import ConnectorError
from connectors.sage_accounting.config import SageAccountingPatch
from models import Connection, Credential, OAuthState

router = APIRouter(tags=["connections"])

PATCH_TYPES: dict[str, type[BaseModel]] = {"sage_accounting": SageAccountingPatch}


def _hash_state(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def _pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _validation(exc: ValidationError, prefix: str) -> ApiError:
    problems = [
        {"field": ".".join([prefix, *(str(p) for p in e["loc"])]), "code": e["type"], "message": e["msg"]}
        for e in exc.errors()
    ]
    return ApiError(422, "validation_error", "Invalid " + prefix, extra={"errors": problems})


@router.get("/v1/providers", response_model=ProviderList, responses=problem_responses(401))
async def list_providers(repo: Repo) -> ProviderList:
    """Connectors and their capabilities (resources × operations × filters)."""
    data = []
    for cls in registry.providers().values():
        data.append(
            ProviderView(
                name=cls.info.name,
                display_name=cls.info.display_name,
                auth_mode=cls.info.auth_mode,
                capabilities=[
                    ProviderCapability(
                        resource=c.resource.value,
                        operations=sorted(o.value for o in c.operations),
                        filters=sorted(c.filters),
                    )
                    for c in cls.capabilities
                ],
                credentials_schema=cls.Credentials.model_json_schema() if cls.Credentials else None,
            )
        )
    return ProviderList(data=data)


@router.post("/v1/connections", status_code=201, response_model=ConnectionView, responses=CONNECTION_ERRORS)
async def create_connection(body: ConnectionCreate, request: Request, repo: Repo) -> ConnectionView:
    """Create a connection: OAuth providers answer with an ``authorization_url``; credential providers
    are verified upstream first (bad credentials → 422, nothing stored)."""
    state = app_state(request)
    cls = connector_class(body.provider)
    app = state.settings.provider_apps[body.provider]
    if cls.info.auth_mode == "oauth2":
        if body.credentials is not None or body.rest is not None:
            raise ApiError(422, "unsupported_field", f"{body.provider} connections take no credentials")
        connection = Connection(
            tenant_id=repo.tenant_id,
            provider=body.provider,
            status="pending_authorization",
            settings={},
            redirect_url=body.redirect_url,
        )
        repo.session.add(connection)
        await repo.session.flush()
        oauth_state = secrets.token_urlsafe(32)
        verifier, challenge = _pkce_pair()
        repo.session.add(
            OAuthState(
                state_hash=_hash_state(oauth_state),
                tenant_id=repo.tenant_id,
                connection_id=connection.id,
                code_verifier=state.keyring.encrypt(
                    verifier, tenant_id=repo.tenant_id, connection_id=connection.id, field="pkce_verifier"
                ),
                expires_at=dt.datetime.now(dt.UTC)
                + dt.timedelta(seconds=state.settings.oauth_state_ttl_seconds),
            )
        )
        url = cls.authorization_url(
            app, redirect_uri=state.settings.redirect_uri, state=oauth_state, code_challenge=challenge
        )
        return connection_view(connection, url)
    if cls.Credentials is None or body.credentials is None:
        raise ApiError(422, "validation_error", f"{body.provider} connections need credentials")
    raw: dict[str, Any] = dict(body.credentials)
    if body.rest is not None:
        raw["rest"] = body.rest
    try:
        credentials = cls.Credentials.model_validate(raw)
    except ValidationError as exc:
        raise _validation(exc, "credentials") from None
    tokens = await cls.establish(state.http, app, credentials)
    connection = Connection(
        tenant_id=repo.tenant_id,
        provider=body.provider,
        status="active",
        settings=tokens.settings,
        redirect_url=body.redirect_url,
    )
    repo.session.add(connection)
    await repo.session.flush()
    await write_secrets(repo.session, state.keyring, connection, tokens.secrets, tokens.expires_at)
    return connection_view(connection)


@router.get("/v1/connections", response_model=ConnectionList, responses=problem_responses(401, 422))
async def list_connections(
    repo: Repo,
    page_size: int = Query(50, ge=1, le=200),
    cursor: str | None = Query(None, max_length=64),
) -> ConnectionList:
    stmt = repo.scoped(Connection).order_by(Connection.id).limit(page_size + 1)
    if cursor:
        stmt = stmt.where(Connection.id > cursor)
    rows = list((await repo.session.execute(stmt)).scalars())
    more = len(rows) > page_size
    rows = rows[:page_size]
    return ConnectionList(data=[connection_view(r) for r in rows], next_cursor=rows[-1].id if more else None)


@router.get("/v1/connections/{connection_id}", response_model=ConnectionView, responses=CONNECTION_ERRORS)
async def get_connection(connection_id: str, repo: Repo) -> ConnectionView:
    return connection_view(await repo.connection(connection_id))


@router.patch("/v1/connections/{connection_id}", response_model=ConnectionView, responses=CONNECTION_ERRORS)
async def patch_connection(connection_id: str, request: Request, repo: Repo) -> ConnectionView:
    """Change settings, e.g. ``{"business_id": "…"}`` to pick one of the Sage businesses listed."""
    connection = await repo.connection(connection_id, for_update=True)
    patch_type = PATCH_TYPES.get(connection.provider)
    if patch_type is None:
        raise ApiError(
            422, "unsupported_field", f"{connection.provider} connections have no settings to change"
        )
    try:
        patch = patch_type.model_validate_json(await request.body())
    except ValidationError as exc:
        raise _validation(exc, "body") from None
    settings = dict(connection.settings or {})
    changes = patch.model_dump(exclude_unset=True)
    if "business_id" in changes:
        known = {b.get("id") for b in settings.get("businesses", [])}
        if changes["business_id"] not in known:
            raise ApiError(
                422,
                "validation_error",
                "business_id is not one of this connection's businesses",
                extra={
                    "errors": [
                        {"field": "business_id", "code": "unknown_business", "message": "Unknown business"}
                    ]
                },
            )
    settings.update(changes)
    connection.settings = settings
    if connection.status == "business_selection_required" and settings.get("business_id"):
        connection.status = "active"
    app_state(request).secret_cache.forget(connection.id)
    return connection_view(connection)


@router.post("/v1/connections/{connection_id}/check", response_model=CheckView, responses=CONNECTION_ERRORS)
async def check_connection(connection_id: str, request: Request, repo: Repo) -> CheckView:
    """A live credential check against the upstream; the result lands on the connection's ``health``."""
    state = app_state(request)
    connection = await repo.connection(connection_id)
    ref = ConnectionRef.of(connection)
    if connection.status in ("pending_authorization", "revoked"):
        build_connector(state, ref)
    connector = build_connector(state, ref, require_active=False)
    try:
        result = await connector.check()
    except ConnectorError as exc:
        await record_health(state, ref, f"{exc.code}: {exc.detail}")
        raise
    await record_health(state, ref, None if result.ok else result.detail)
    await repo.session.refresh(connection)
    if result.settings:
        connection.settings = {**(connection.settings or {}), **result.settings}
    return CheckView(ok=result.ok, detail=result.detail, connection=connection_view(connection))


@router.delete("/v1/connections/{connection_id}", status_code=204, responses=CONNECTION_ERRORS)
async def delete_connection(connection_id: str, request: Request, repo: Repo) -> Response:
    """Revoke upstream tokens where the provider supports it and erase the credentials."""
    state = app_state(request)
    connection = await repo.connection(connection_id)
    if connection.status != "revoked" and connection.credentials_version > 0:
        try:
            await build_connector(state, ConnectionRef.of(connection), require_active=False).revoke()
        except ConnectorError:
            pass  # best effort: the credentials are erased either way
    await repo.session.execute(delete(Credential).where(Credential.connection_id == connection.id))
    await repo.session.execute(delete(OAuthState).where(OAuthState.connection_id == connection.id))
    connection.status = "revoked"
    connection.credentials_version += 1
    connection.credentials_expire_at = None
    state.secret_cache.forget(connection.id)
    return Response(status_code=204)


@router.get(
    "/v1/oauth/callback",
    response_model=ConnectionView,
    responses={
        302: {"description": "Back to the connection's redirect_url"},
        **problem_responses(400, 502, 503),
    },
)
async def oauth_callback(
    request: Request,
    session: Session,
    state: str = Query("", max_length=500),
    code: str | None = Query(None, max_length=2000),
    error: str | None = Query(None, max_length=200),
) -> Response:
    """OAuth redirect target. ``state`` is single-use, bound to one connection, and expires."""
    lb = app_state(request)
    now = dt.datetime.now(dt.UTC)
    row = await session.get(OAuthState, _hash_state(state)) if state else None
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise ApiError(400, "invalid_state", "Unknown, used or expired OAuth state")
    claimed = await session.execute(
        update(OAuthState)
        .where(OAuthState.state_hash == row.state_hash, OAuthState.used_at.is_(None))
        .values(used_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise ApiError(400, "invalid_state", "Unknown, used or expired OAuth state")
    await session.commit()
    connection = (
        await session.execute(select(Connection).where(Connection.id == row.connection_id))
    ).scalar_one()
    if error or not code:
        raise ApiError(
            400, "authorization_denied", f"The authorization was not granted: {error or 'no code'}"
        )
    cls = connector_class(connection.provider)
    verifier = lb.keyring.decrypt(
        row.code_verifier, tenant_id=row.tenant_id, connection_id=connection.id, field="pkce_verifier"
    )
    tokens = await cls.exchange_code(
        lb.http,
        lb.settings.provider_apps[connection.provider],
        code=code,
        redirect_uri=lb.settings.redirect_uri,
        code_verifier=verifier,
    )
    await write_secrets(session, lb.keyring, connection, tokens.secrets, tokens.expires_at)
    connection.settings = {**(connection.settings or {}), **tokens.settings}
    connection.status = "active"
    await session.commit()
    result = await build_connector(lb, ConnectionRef.of(connection)).check()
    connection.settings = {**connection.settings, **result.settings}
    has_business = bool(connection.settings.get("business_id"))
    connection.status = "active" if has_business else "business_selection_required"
    if not result.ok:
        connection.last_error, connection.last_error_at = result.detail[:1000], now
    await session.commit()
    if connection.redirect_url:
        sep = "&" if "?" in connection.redirect_url else "?"
        target = (
            connection.redirect_url
            + sep
            + urlencode({"connection_id": connection.id, "status": connection.status})
        )
        return RedirectResponse(target, status_code=302)
    return JSONResponse(connection_view(connection).model_dump(mode="json"))
