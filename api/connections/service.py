"""Building connectors from connection rows, connection views, and health bookkeeping."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from typing import Any

from sqlalchemy import update

from api import context
from api.cache import KEEPS_CACHES
from api.connections.refs import ConnectionRef
from api.connections.store import DbCredentialStore
from api.errors import ApiError
from api.schemas import ConnectionView, Health
from api.state import AppState
from api.upstream import GatewayGate
from connectors import registry
from connectors.base import Connector, ConnectorContext
from models import Connection

log = logging.getLogger(__name__)

HEALTH_SUCCESS_INTERVAL = dt.timedelta(seconds=30)

#: Connector error codes that say something about the connection's health (not about the caller's input).
HEALTH_CODES = frozenset(
    {
        "upstream_error",
        "upstream_unavailable",
        "upstream_timeout",
        "reauthorization_required",
        "business_selection_required",
        "upstream_rate_limited",
        "outcome_unknown",
    }
)

_BLOCKED = {
    "pending_authorization": (409, "authorization_pending", "The connection has not been authorized yet"),
    "business_selection_required": (
        409,
        "business_selection_required",
        'Pick a business with PATCH /v1/connections/{id} {"business_id": …}',
    ),
    "reauthorization_required": (409, "reauthorization_required", "The end customer must authorize again"),
    "revoked": (409, "connection_revoked", "The connection was deleted"),
}


def connector_class(provider: str) -> type[Connector]:
    cls = registry.get(provider)
    if cls is None:
        raise ApiError(422, "validation_error", f"Unknown provider {provider!r}")
    return cls


def build_connector(state: AppState, connection: ConnectionRef, *, require_active: bool = True) -> Connector:
    if require_active and connection.status != "active":
        status, code, detail = _BLOCKED.get(
            connection.status, (409, "connection_inactive", "Inactive connection")
        )
        raise ApiError(status, code, detail)
    cls = connector_class(connection.provider)
    settings = connection.settings or {}
    request_ctx = context.current()
    if request_ctx is not None:
        request_ctx.provider = connection.provider
        request_ctx.scope = settings.get("business_id") or settings.get("company_id")
    ctx = ConnectorContext(
        http=state.http,
        app=state.settings.provider_apps[connection.provider],
        settings=cls.Settings.model_validate(connection.settings),
        store=DbCredentialStore(state.db, state.keyring, state.secret_cache, connection),
        gate=GatewayGate(state.limiter, connection.tenant_id, connection.id),
        connection_id=connection.id,
    )
    return cls(ctx)


def public_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if not k.startswith("_")}


def connection_view(row: Connection, authorization_url: str | None = None) -> ConnectionView:
    return ConnectionView(
        id=row.id,
        provider=row.provider,
        status=row.status,
        settings=public_settings(row.settings or {}),
        health=Health(
            last_success_at=row.last_success_at,
            last_error_at=row.last_error_at,
            last_error=row.last_error,
            credentials_expire_at=row.credentials_expire_at,
        ),
        created_at=row.created_at,
        updated_at=row.updated_at,
        authorization_url=authorization_url,
    )


async def record_health(state: AppState, connection: ConnectionRef, error: str | None) -> None:
    """Note a call's outcome on the connection: successes at most every 30 s, errors as they come but one
    write at a time per connection and process (a burst of concurrent calls makes one write, not one each:
    on SQLite a herd of writers waits on the one write lock for seconds). Never fails the caller's call."""
    now = dt.datetime.now(dt.UTC)
    if error is None:
        seen = [t for t in (connection.last_success_at, state.health_success.get(connection.id)) if t]
        if seen and now - max(seen) < HEALTH_SUCCESS_INTERVAL:
            return
        state.health_success[connection.id] = now  # before the write: concurrent successes skip it
        values: dict[str, Any] = {"last_success_at": now}
    else:
        if connection.id in state.health_errors:
            return
        state.health_errors.add(connection.id)
        values = {"last_error_at": now, "last_error": error[:1000]}
    try:
        async with state.db.session() as session:
            # Health fields are not part of the cached snapshot (but ``last_success_at``, updated below): no
            # need to drop every cached connection of the process each time one of them succeeds.
            await session.execute(
                update(Connection)
                .where(Connection.id == connection.id)
                .values(**values)
                .execution_options(**KEEPS_CACHES)
            )
    except Exception:
        log.warning("could not record the health of connection %s", connection.id, exc_info=True)
        if error is None:
            state.health_success.pop(connection.id, None)  # a later success tries again
        return
    finally:
        if error is not None:
            state.health_errors.discard(connection.id)
    if error is None:
        state.connections.update(
            (connection.tenant_id, connection.id), lambda ref: replace(ref, last_success_at=now)
        )
