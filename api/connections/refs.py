"""What a call needs of a connection row, as an immutable snapshot cached per process (``api.cache``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from api import context
from api.deps import TenantRepository
from api.errors import connection_not_found
from models import Connection

if TYPE_CHECKING:
    from api.state import AppState


@dataclass(frozen=True, slots=True)
class ConnectionRef:
    """A connection as the connector, the rate limiter and the health bookkeeping see it. Frozen: one
    instance is shared by every request that hits the cache, so nothing may change it."""

    id: str
    tenant_id: str
    provider: str
    status: str
    settings: dict[str, Any]
    credentials_version: int
    credentials_expire_at: dt.datetime | None
    last_success_at: dt.datetime | None

    @classmethod
    def of(cls, row: Connection) -> ConnectionRef:
        return cls(
            id=row.id,
            tenant_id=row.tenant_id,
            provider=row.provider,
            status=row.status,
            settings=dict(row.settings or {}),
            credentials_version=row.credentials_version,
            credentials_expire_at=row.credentials_expire_at,
            last_success_at=row.last_success_at,
        )


async def load_connection(state: AppState, tenant_id: str, connection_id: str | None) -> ConnectionRef:
    """The tenant's connection ``connection_id`` (404 ``connection_not_found`` for any other tenant's)."""
    if not connection_id or len(connection_id) > 64:
        raise connection_not_found()
    key = (tenant_id, connection_id)
    ref = state.connections.get(key)
    if ref is None:
        generation = state.connections.generation
        async with state.db.sessions() as session:
            ref = ConnectionRef.of(await TenantRepository(session, tenant_id).connection(connection_id))
        state.connections.put(key, ref, generation)
    ctx = context.current()
    if ctx is not None:
        ctx.connection_id = ref.id
    return ref
