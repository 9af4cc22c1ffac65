"""Request dependencies: the unit of work, the caller's tenant, and the tenant-scoped repository."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from api import context
from api.errors import connection_not_found, unauthenticated
from api.state import AppState
from models import ApiKey, Connection

M = TypeVar("M")


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.lb
    return state


async def db_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with app_state(request).db.session() as session:
        yield session


# scope="function": the unit of work commits before the response is sent, so a client acting on a 201 at
# once (e.g. following an authorization_url) always finds the row, and a failed commit is never a 2xx.
Session = Annotated[AsyncSession, Depends(db_session, scope="function")]


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    api_key_id: str


async def principal(request: Request) -> Principal:
    """The caller's tenant, from ``Authorization: Bearer lb_…`` (cached per process: ``api.cache``)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.startswith("lb_") or len(token) > 200:
        raise unauthenticated()
    digest = hash_api_key(token.strip())
    state = app_state(request)
    found = state.principals.get(digest)
    if found is None:
        generation = state.principals.generation
        async with state.db.sessions() as session:
            row = (
                await session.execute(
                    select(ApiKey.id, ApiKey.tenant_id, ApiKey.key_hash, ApiKey.revoked_at).where(
                        ApiKey.key_hash == digest
                    )
                )
            ).one_or_none()
        if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
            raise unauthenticated()
        found = Principal(row.tenant_id, row.id)
        state.principals.put(digest, found, generation)
    ctx = context.current()
    if ctx is not None:
        ctx.tenant_id = found.tenant_id
    return found


Caller = Annotated[Principal, Depends(principal)]


class TenantRepository:
    """Every tenant-owned query starts from :meth:`scoped`: the tenant filter is written only here."""

    def __init__(self, session: AsyncSession, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def scoped(self, model: type[M]) -> Select[M]:
        column: Any = model.tenant_id  # type: ignore[attr-defined]
        return select(model).where(column == self.tenant_id)

    async def connection(self, connection_id: str | None, *, for_update: bool = False) -> Connection:
        if not connection_id or len(connection_id) > 64:
            raise connection_not_found()
        stmt = self.scoped(Connection).where(Connection.id == connection_id)
        if for_update:
            stmt = stmt.with_for_update()
        row = (await self.session.execute(stmt)).scalar_one_or_none()
        if row is None:
            raise connection_not_found()
        ctx = context.current()
        if ctx is not None:
            ctx.connection_id = row.id
        return row


async def repository(caller: Caller, session: Session) -> TenantRepository:
    return TenantRepository(session, caller.tenant_id)


Repo = Annotated[TenantRepository, Depends(repository)]
