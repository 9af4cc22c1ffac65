from __future__ import annotations

import asyncio
import base64
import json

from sqlalchemy import select

from api.connections.store import read_secrets, write_secrets
from api.db import Database
from api.keyring_rotation import rotate
from api.vault import Keyring
from models import Connection, Credential, Tenant

OLD = base64.b64encode(b"o" * 32).decode()
NEW = base64.b64encode(b"n" * 32).decode()


async def _seed(db: Database, keyring: Keyring, connections: int) -> list[str]:
    ids = []
    async with db.session() as session:
        tenant = Tenant(name="t")
        session.add(tenant)
        await session.flush()
        for i in range(connections):
            conn = Connection(tenant_id=tenant.id, provider="sage_accounting", status="active", settings={})
            session.add(conn)
            await session.flush()
            await write_secrets(
                session, keyring, conn, {"access_token": f"at-{i}", "refresh_token": f"rt-{i}"}, None
            )
            ids.append(conn.id)
    return ids


async def test_rotation_is_batched_resumable_and_idempotent(database_url: str) -> None:
    old = Keyring.from_json(json.dumps({"old": OLD}), "old")
    both = Keyring.from_json(json.dumps({"old": OLD, "new": NEW}), "new")
    db = Database(database_url)
    try:
        ids = await _seed(db, old, 7)
        partial = await rotate(db, both, batch_size=3, max_batches=2)
        assert partial.rotated == 6 and partial.remaining == 8
        rest = await rotate(db, both, batch_size=3)
        assert rest.rotated == 8 and rest.remaining == 0
        again = await rotate(db, both, batch_size=3)
        assert again.rotated == 0 and again.remaining == 0
        new_only = Keyring.from_json(json.dumps({"new": NEW}), "new")
        async with db.sessions() as session:
            kids = set((await session.execute(select(Credential.key_id))).scalars())
            assert kids == {"new"}
            for i, cid in enumerate(ids):
                conn = await session.get(Connection, cid)
                assert conn is not None
                secrets = await read_secrets(session, new_only, conn)
                assert dict(secrets.values) == {"access_token": f"at-{i}", "refresh_token": f"rt-{i}"}
    finally:
        await db.dispose()


async def test_rotation_keeps_concurrent_writes(database_url: str) -> None:
    """A refresh that rewrites a secret while the rotation runs is never overwritten with the old value."""
    old = Keyring.from_json(json.dumps({"old": OLD}), "old")
    both = Keyring.from_json(json.dumps({"old": OLD, "new": NEW}), "new")
    db = Database(database_url)
    try:
        ids = await _seed(db, old, 20)

        async def refresh_all() -> None:
            for i, cid in enumerate(ids):
                async with db.session() as session:
                    conn = await session.get(Connection, cid)
                    assert conn is not None
                    await write_secrets(
                        session, both, conn, {"access_token": f"fresh-{i}", "refresh_token": f"r2-{i}"}, None
                    )
                await asyncio.sleep(0)

        await asyncio.gather(rotate(db, both, batch_size=2), refresh_all())
        await rotate(db, both)
        async with db.sessions() as session:
            for i, cid in enumerate(ids):
                conn = await session.get(Connection, cid)
                assert conn is not None
                values = dict((await read_secrets(session, both, conn)).values)
                assert values == {"access_token": f"fresh-{i}", "refresh_token": f"r2-{i}"}
            assert set((await session.execute(select(Credential.key_id))).scalars()) == {"new"}
    finally:
        await db.dispose()
