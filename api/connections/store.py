"""The gateway's :class:`~connectors.base.CredentialStore`: encrypted rows, cached plaintext, refresh lock.

* Plaintext secrets are cached per process by ``(connection id, credentials_version)``: a call whose
  connection row shows the cached version never decrypts (the row is read anyway for the tenant check).
* ``exclusive()`` is the single-flight refresh lock (reliability-notes.md §3.5): an ``asyncio.Lock`` per
  connection collapses callers in one process; on PostgreSQL a ``SELECT … FOR UPDATE`` on the connection
  row serializes processes and replicas, held across the one short refresh call. SQLite is single-process
  (§6.3): the in-process lock is the whole story and the write is one short transaction.
* ``save()`` writes every field and bumps ``credentials_version`` in one transaction and commits before
  returning, so a rotated refresh token is durable before the new access token is used.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.db import Database
from api.vault import Keyring
from connectors.base import StoredSecrets
from models import Connection, Credential

if TYPE_CHECKING:
    from api.connections.refs import ConnectionRef


@dataclass
class SecretCache:
    """Per-process plaintext cache and refresh locks, keyed by connection id."""

    entries: dict[str, StoredSecrets] = field(default_factory=dict)
    locks: weakref.WeakValueDictionary[str, asyncio.Lock] = field(default_factory=weakref.WeakValueDictionary)

    def lock(self, connection_id: str) -> asyncio.Lock:
        lock = self.locks.get(connection_id)
        if lock is None:
            lock = asyncio.Lock()
            self.locks[connection_id] = lock
        return lock

    def forget(self, connection_id: str) -> None:
        self.entries.pop(connection_id, None)


async def read_secrets(session: AsyncSession, keyring: Keyring, connection: Connection) -> StoredSecrets:
    rows = (
        await session.execute(select(Credential).where(Credential.connection_id == connection.id))
    ).scalars()
    values = {
        row.field: keyring.decrypt(
            row.ciphertext, tenant_id=connection.tenant_id, connection_id=connection.id, field=row.field
        )
        for row in rows
    }
    return StoredSecrets(values, connection.credentials_expire_at, connection.credentials_version)


async def write_secrets(
    session: AsyncSession,
    keyring: Keyring,
    connection: Connection,
    values: Mapping[str, str],
    expires_at: dt.datetime | None,
) -> StoredSecrets:
    """Replace every secret of ``connection`` and bump its version (caller commits)."""
    await session.execute(delete(Credential).where(Credential.connection_id == connection.id))
    for name, value in values.items():
        session.add(
            Credential(
                tenant_id=connection.tenant_id,
                connection_id=connection.id,
                field=name,
                key_id=keyring.active,
                ciphertext=keyring.encrypt(
                    value, tenant_id=connection.tenant_id, connection_id=connection.id, field=name
                ),
            )
        )
    version = connection.credentials_version + 1
    await session.execute(
        update(Connection)
        .where(Connection.id == connection.id)
        .values(
            credentials_version=version, credentials_expire_at=expires_at, updated_at=dt.datetime.now(dt.UTC)
        )
    )
    connection.credentials_version = version
    connection.credentials_expire_at = expires_at
    return StoredSecrets(dict(values), expires_at, version)


class DbCredentialStore:
    """A connection's secrets for one request."""

    def __init__(self, db: Database, keyring: Keyring, cache: SecretCache, connection: ConnectionRef) -> None:
        self.db = db
        self.keyring = keyring
        self.cache = cache
        self.connection_id = connection.id
        self.tenant_id = connection.tenant_id
        self._known_version = connection.credentials_version
        self._locked_session: AsyncSession | None = None
        self._locked_row: Connection | None = None

    async def load(self) -> StoredSecrets:
        cached = self.cache.entries.get(self.connection_id)
        if cached is not None and cached.version >= self._known_version:
            return cached
        async with self.db.sessions() as session:
            row = await session.get(Connection, self.connection_id)
            if row is None:
                return StoredSecrets({})
            secrets = await read_secrets(session, self.keyring, row)
        self.cache.entries[self.connection_id] = secrets
        return secrets

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[StoredSecrets]:
        async with self.cache.lock(self.connection_id), self.db.sessions() as session:
            stmt = select(Connection).where(Connection.id == self.connection_id)
            if not self.db.sqlite:
                stmt = stmt.with_for_update()
            row = (await session.execute(stmt.execution_options(populate_existing=True))).scalar_one()
            current = await read_secrets(session, self.keyring, row)
            self.cache.entries[self.connection_id] = current
            self._known_version = current.version
            self._locked_session, self._locked_row = session, row
            try:
                yield current
            finally:
                self._locked_session = self._locked_row = None
                await session.rollback()

    def exclusive(self) -> AbstractAsyncContextManager[StoredSecrets]:
        return self._exclusive()

    async def save(self, values: Mapping[str, str], expires_at: dt.datetime | None) -> StoredSecrets:
        session, row = self._locked_session, self._locked_row
        if session is None or row is None:
            raise RuntimeError("save() must be called inside exclusive()")
        stored = await write_secrets(session, self.keyring, row, values, expires_at)
        await session.commit()
        if not self.db.sqlite:
            # Committing released the row lock; take it again so the rest of the critical section stays single.
            await session.execute(
                select(Connection.id).where(Connection.id == self.connection_id).with_for_update()
            )
        self.cache.entries[self.connection_id] = stored
        self._known_version = stored.version
        return stored

    async def require_reauthorization(self, reason: str) -> None:
        async with self.db.session() as session:
            await session.execute(
                update(Connection)
                .where(Connection.id == self.connection_id)
                .values(
                    status="reauthorization_required",
                    last_error=reason[:1000],
                    last_error_at=dt.datetime.now(dt.UTC),
                )
            )
        self.cache.forget(self.connection_id)
