"""The read path's per-process caches (api/cache.py): warm reads touch no table, changes made through this
process apply at once, changes made elsewhere within ``cache_seconds``, and a racing lookup never stores a
stale row."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import event, update

from api.cache import TtlCache
from api.db import Database
from api.deps import hash_api_key
from models import ApiKey, Connection
from tests.conftest import Gateway, auth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_and_a_cleared_cache_refuses_a_stale_fill() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(5, clock=clock)
    cache.put("a", 1, cache.generation)
    assert cache.get("a") == 1
    clock.now += 5
    assert cache.get("a") is None
    started = cache.generation  # a lookup starts …
    cache.clear()  # … a change commits meanwhile …
    cache.put("a", 2, started)  # … and the lookup's (maybe old) row is not kept
    assert cache.get("a") is None
    cache.put("a", 3, cache.generation)
    assert cache.get("a") == 3


def test_a_zero_ttl_caches_nothing_and_the_size_is_bounded() -> None:
    off: TtlCache[str, int] = TtlCache(0)
    off.put("a", 1, off.generation)
    assert off.get("a") is None
    small: TtlCache[int, int] = TtlCache(60, max_entries=3)
    for i in range(10):
        small.put(i, i, small.generation)
    assert small.get(9) == 9 and sum(small.get(i) is not None for i in range(10)) <= 3


def statements(gateway: Gateway) -> list[str]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(gateway.app.state.lb.db.engine.sync_engine, "before_cursor_execute", record)
    return seen


async def test_warm_reads_touch_neither_keys_nor_connections(gateway: Gateway) -> None:
    key = await gateway.tenant()
    conn = (await gateway.sage_connection(key))["id"]
    r = await gateway.client.get("/v1/contacts", headers=auth(key, conn))
    assert r.status_code == 200, r.text
    seen = statements(gateway)
    for _ in range(20):
        r = await gateway.client.get("/v1/contacts", headers=auth(key, conn))
        assert r.status_code == 200
    await gateway.flush_log()
    assert not [s for s in seen if "api_keys" in s or "FROM connections" in s]
    assert [s for s in seen if "request_logs" in s]  # the log is still written


async def test_changes_through_this_process_apply_at_once(gateway: Gateway) -> None:
    key = await gateway.tenant()
    conn = (await gateway.sage_connection(key))["id"]
    assert (await gateway.client.get("/v1/contacts", headers=auth(key, conn))).status_code == 200
    r = await gateway.client.delete(f"/v1/connections/{conn}", headers=auth(key))
    assert r.status_code == 204
    r = await gateway.client.get("/v1/contacts", headers=auth(key, conn))
    assert r.status_code == 409 and r.json()["code"] == "connection_revoked"

    made = await gateway.client.post("/v1/api-keys", json={"name": "second"}, headers=auth(key))
    second, second_id = made.json()["api_key"], made.json()["id"]
    assert (await gateway.client.get("/v1/connections", headers=auth(second))).status_code == 200
    assert (await gateway.client.delete(f"/v1/api-keys/{second_id}", headers=auth(key))).status_code == 204
    assert (await gateway.client.get("/v1/connections", headers=auth(second))).status_code == 401


async def test_changes_made_by_another_process_apply_within_the_ttl(
    gateway: Gateway, database_url: str
) -> None:
    state = gateway.app.state.lb
    clock = Clock()
    state.principals.clock = state.connections.clock = clock
    key = await gateway.tenant()
    conn = (await gateway.sage_connection(key))["id"]
    assert (await gateway.client.get("/v1/contacts", headers=auth(key, conn))).status_code == 200

    async def elsewhere(statement: Any) -> None:
        other = Database(database_url)  # another replica: its commits do not reach this process's caches
        try:
            async with other.session() as session:
                await session.execute(statement)
        finally:
            await other.dispose()

    await elsewhere(update(Connection).where(Connection.id == conn).values(status="reauthorization_required"))
    clock.now += state.settings.cache_seconds - 0.5
    assert (await gateway.client.get("/v1/contacts", headers=auth(key, conn))).status_code == 200
    clock.now += 1
    r = await gateway.client.get("/v1/contacts", headers=auth(key, conn))
    assert r.status_code == 409 and r.json()["code"] == "reauthorization_required"

    await elsewhere(
        update(ApiKey).where(ApiKey.key_hash == hash_api_key(key)).values(revoked_at=dt.datetime.now(dt.UTC))
    )
    assert (await gateway.client.get("/v1/connections", headers=auth(key))).status_code == 200
    clock.now += state.settings.cache_seconds + 0.5
    r = await gateway.client.get("/v1/connections", headers=auth(key))
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
