"""The request log end to end (CONTRACT §9): every ``/v1`` call, its upstream calls with retries, redacted
write bodies; ``GET /v1/requests`` tenant-scoped, paged and filtered; retention with a reaper."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select, update

import connectors.http
from api.db import Database
from api.requestlog import RequestLogWriter
from models import RequestLog
from sandbox.faults import Fault
from tests.api.test_idempotency import sage
from tests.conftest import Gateway, auth


@pytest.fixture(autouse=True)
def no_real_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connectors.http, "backoff_delay", lambda attempt, policy, retry_after=None: 0.001)


async def entry(gateway: Gateway, key: str, request_id: str) -> dict[str, Any]:
    await gateway.flush_log()
    r = await gateway.client.get(f"/v1/requests/{request_id}", headers=auth(key))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def walk(gateway: Gateway, key: str, query: str = "", page_size: int = 3) -> list[dict[str, Any]]:
    """Every entry of a filtered listing, following ``next_cursor`` to the end."""
    await gateway.flush_log()
    seen: list[dict[str, Any]] = []
    url = f"/v1/requests?page_size={page_size}{query}"
    while True:
        r = await gateway.client.get(url, headers=auth(key))
        assert r.status_code == 200, r.text
        page = r.json()
        seen += page["data"]
        if page["next_cursor"] is None:
            return seen
        url = f"/v1/requests?page_size={page_size}{query}&cursor={page['next_cursor']}"


async def test_a_write_is_logged_with_every_upstream_attempt(gateway: Gateway) -> None:
    s = await sage(gateway)
    gateway.sims.sage.faults.add(Fault(match="POST /v3.1/journals", kind="status", status=503, times=1))
    r = await s.post("/v1/journals", s.journal("LOG-1"), "log-key-1")
    assert r.status_code == 201, r.text
    e = await entry(gateway, s.key, r.headers["x-request-id"])
    assert e["method"] == "POST" and e["path"] == "/v1/journals" and e["status"] == 201
    assert e["connection_id"] == s.connection_id
    assert e["idempotency_key"] == "log-key-1"
    assert e["duration_ms"] > 0
    assert e["request_body"]["reference"] == "LOG-1"
    posts = [c for c in e["upstream_calls"] if c["path"] == "POST /journals"]
    assert [(c["attempt"], c["status"]) for c in posts] == [(1, 503), (2, 201)]
    assert all(c["upstream_request_id"] for c in posts)
    assert posts[1]["request_body"]["journal"]["reference"] == "LOG-1"
    assert r.headers["upstream-request-id"] == posts[1]["upstream_request_id"]
    # A replay is logged too, without upstream calls.
    again = await s.post("/v1/journals", s.journal("LOG-1"), "log-key-1")
    replayed = await entry(gateway, s.key, again.headers["x-request-id"])
    assert replayed["status"] == 201 and replayed["upstream_calls"] == []


async def test_secrets_in_write_bodies_are_redacted(gateway: Gateway) -> None:
    if gateway.sims.intacct is None:
        pytest.skip("the Intacct simulator is not available")
    key = await gateway.tenant()
    conn = await gateway.intacct_connection(key)
    await gateway.flush_log()
    [created] = [e for e in await walk(gateway, key) if e["path"] == "/v1/connections"]
    assert created["request_body"]["provider"] == "sage_intacct"
    assert created["request_body"]["credentials"] == "[redacted]"
    body = {
        "date": "2026-11-03",
        "reference": "LOG-XML",
        "lines": [{"account_id": "6000", "debit": "1.00"}, {"account_id": "1000", "credit": "1.00"}],
    }
    r = await gateway.client.post("/v1/journals", json=body, headers=auth(key, conn["id"]))
    assert r.status_code == 201, r.text
    e = await entry(gateway, key, r.headers["x-request-id"])
    [write] = [c for c in e["upstream_calls"] if c["path"] == "XML create:GLBATCH"]
    xml = write["request_body"]
    assert "LOG-XML" in xml
    assert "sandbox-sender-password" not in xml and "demo-password" not in xml
    assert "[redacted]" in xml
    everything = str(await walk(gateway, key, page_size=200))
    assert "demo-password" not in everything and "sandbox-sender-password" not in everything


async def test_the_log_is_tenant_scoped_paged_and_filtered(gateway: Gateway) -> None:
    a = await sage(gateway, "tenant-a")
    b = await sage(gateway, "tenant-b")
    ids_a = []
    for _ in range(4):
        r = await gateway.client.get("/v1/contacts?page_size=1", headers=a.headers())
        ids_a.append(r.headers["x-request-id"])
    missing = await gateway.client.get("/v1/invoices/" + "0" * 32, headers=a.headers())
    assert missing.status_code == 404
    other = await gateway.client.get("/v1/contacts?page_size=1", headers=b.headers())
    everything = await walk(gateway, a.key)
    listed = [e["id"] for e in everything]
    assert len(listed) == len(set(listed))  # every entry exactly once across pages
    assert set(ids_a) <= set(listed)
    assert other.headers["x-request-id"] not in listed
    forbidden = await gateway.client.get(f"/v1/requests/{other.headers['x-request-id']}", headers=auth(a.key))
    assert forbidden.status_code == 404
    times = [e["created_at"] for e in everything]
    assert times == sorted(times, reverse=True)

    by_status = await walk(gateway, a.key, "&status=404")
    assert missing.headers["x-request-id"] in {e["id"] for e in by_status}
    assert {e["status"] for e in by_status} == {404}
    by_connection = await walk(gateway, a.key, f"&connection_id={a.connection_id}")
    assert set(ids_a) <= {e["id"] for e in by_connection}
    assert all(e["connection_id"] == a.connection_id for e in by_connection)
    assert await walk(gateway, a.key, f"&connection_id={b.connection_id}") == []

    cut = everything[2]["created_at"].replace("Z", "+00:00")
    newer = await walk(gateway, a.key, "&since=" + cut.replace("+", "%2B"))
    older = await walk(gateway, a.key, "&until=" + cut.replace("+", "%2B"))
    newer_ids = {e["id"] for e in newer} & set(listed)  # the listings themselves are logged too
    older_ids = {e["id"] for e in older}
    assert newer_ids | older_ids == set(listed)
    assert not newer_ids & older_ids
    assert len(older_ids) == len(listed) - 3
    naive = await gateway.client.get("/v1/requests?since=2026-01-01T00:00:00", headers=auth(a.key))
    assert naive.status_code == 422
    bad_cursor = await gateway.client.get("/v1/requests?cursor=not-a-cursor", headers=auth(a.key))
    assert bad_cursor.status_code == 422


async def test_old_entries_are_reaped_after_the_retention(gateway: Gateway) -> None:
    s = await sage(gateway)
    await gateway.client.get("/v1/contacts?page_size=1", headers=s.headers())
    await gateway.flush_log()
    db = gateway.app.state.lb.db
    async with db.session() as session:
        total = (await session.execute(select(func.count()).select_from(RequestLog))).scalar_one()
        old = dt.datetime.now(dt.UTC) - dt.timedelta(
            days=gateway.settings.request_log_retention_days, hours=1
        )
        await session.execute(
            update(RequestLog).where(RequestLog.path == "/v1/contacts").values(created_at=old)
        )
    reconciler = gateway.app.state.lb.extras["reconciler"]
    _, reaped = await reconciler.reap()
    assert reaped >= 2  # the seed lookups of sage() and the call above
    async with db.session() as session:
        left = (await session.execute(select(func.count()).select_from(RequestLog))).scalar_one()
        assert left == total - reaped
        paths = set((await session.execute(select(RequestLog.path))).scalars())
    assert "/v1/contacts" not in paths


async def test_stopping_the_writer_lets_a_flush_in_progress_finish(database_url: str) -> None:
    """A flush cancelled inside the database driver can leave its connection checked out with the
    transaction open (SQLite then refuses every other writer): stop() waits for it instead."""
    db = Database(database_url)
    writer = RequestLogWriter(db, interval=0.01)
    finished: list[bool] = []
    real_flush = writer.flush

    async def slow_flush() -> None:
        try:
            await asyncio.sleep(0.2)  # the background loop is inside a flush when stop() comes
            await real_flush()
            finished.append(True)
        except asyncio.CancelledError:
            finished.append(False)
            raise

    writer.flush = slow_flush  # type: ignore[method-assign]
    writer.start()
    await asyncio.sleep(0.05)
    await writer.stop()
    await db.dispose()
    assert finished and all(finished), finished
