"""``Idempotency-Key`` and the write path through the gateway, on the simulators (CONTRACT §7)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from api.idempotency import IdempotencyStore
from connectors.base import derive_guard
from connectors.http import RetryPolicy
from models import IdempotencyRecord, WriteIntent
from sandbox.faults import Fault
from tests.conftest import Gateway, auth

FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.002, max_retry_after=0.05)
SAGE_INVOICES = "POST /v3.1/sales_invoices"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors.sage_accounting.connector import SageAccountingConnector

    monkeypatch.setattr(SageAccountingConnector, "retry_policy", FAST)


@dataclass
class Sage:
    """A tenant with an active Sage Accounting connection and ids from the simulator's seed data."""

    gateway: Gateway
    key: str
    connection_id: str
    customer_id: str
    revenue_account_id: str
    expense_account_id: str
    bank_account_id: str

    def headers(self, idempotency_key: str | None = None, **extra: str) -> dict[str, str]:
        if idempotency_key is not None:
            extra["Idempotency-Key"] = idempotency_key
        return auth(self.key, self.connection_id, **extra)

    def invoice(self, reference: str, amount: str = "100.00") -> dict[str, Any]:
        return {
            "contact_id": self.customer_id,
            "issue_date": "2026-11-02",
            "due_date": "2026-12-02",
            "reference": reference,
            "lines": [
                {
                    "description": "Consulting",
                    "account_id": self.revenue_account_id,
                    "unit_price": amount,
                    "tax_rate_id": "GB_ZERO",
                    "tax_amount": "0.00",
                }
            ],
        }

    def journal(self, reference: str, amount: str = "42.00") -> dict[str, Any]:
        return {
            "date": "2026-11-03",
            "reference": reference,
            "description": "Accrual",
            "lines": [
                {"account_id": self.expense_account_id, "debit": amount},
                {"account_id": self.bank_account_id, "credit": amount},
            ],
        }

    def contact(self, name: str) -> dict[str, Any]:
        return {"roles": ["customer"], "name": name, "reference": name[:10]}

    async def post(self, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        return await self.gateway.client.post(path, json=body, headers=self.headers(key))

    def invoices_upstream(self, reference: str) -> list[dict[str, Any]]:
        return [r for r in self.gateway.sims.sage.state("sales_invoices") if r.get("reference") == reference]

    def journals_upstream(self, reference: str) -> list[dict[str, Any]]:
        return [r for r in self.gateway.sims.sage.state("journals") if r.get("reference") == reference]

    def contacts_upstream(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.gateway.sims.sage.state("contacts") if r.get("name") == name]


async def sage(gateway: Gateway, tenant: str = "acme") -> Sage:
    key = await gateway.tenant(tenant)
    conn = await gateway.sage_connection(key)
    assert conn["status"] == "active", conn
    h = auth(key, conn["id"])
    customers = (await gateway.client.get("/v1/contacts?role=customer&page_size=1", headers=h)).json()["data"]
    accounts = (await gateway.client.get("/v1/accounts?page_size=200", headers=h)).json()["data"]
    by_code = {a["code"]: a["id"] for a in accounts}
    return Sage(
        gateway, key, conn["id"], customers[0]["id"], by_code["4000"], by_code["7500"], by_code["1200"]
    )


async def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def intents(gateway: Gateway) -> list[WriteIntent]:
    async with gateway.app.state.lb.db.session() as session:
        return list((await session.execute(select(WriteIntent).order_by(WriteIntent.created_at))).scalars())


async def records(gateway: Gateway) -> list[IdempotencyRecord]:
    async with gateway.app.state.lb.db.session() as session:
        return list((await session.execute(select(IdempotencyRecord))).scalars())


# --- replay, mismatch, scope --------------------------------------------------------------------------


async def test_same_key_replays_the_stored_result_without_a_second_post(gateway: Gateway) -> None:
    s = await sage(gateway)
    key = str(uuid.uuid4())
    first = await s.post("/v1/invoices", s.invoice("IDEM-1"), key)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    second = await s.post("/v1/invoices", s.invoice("IDEM-1"), key)
    assert second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert len(s.invoices_upstream("IDEM-1")) == 1
    assert gateway.sims.sage.faults.calls[SAGE_INVOICES] == 1
    [intent] = await intents(gateway)
    assert intent.state == "succeeded"
    assert intent.result_id == first.json()["id"]


async def test_same_key_with_a_different_body_is_422(gateway: Gateway) -> None:
    s = await sage(gateway)
    key = "order-7781"
    assert (await s.post("/v1/invoices", s.invoice("IDEM-2"), key)).status_code == 201
    r = await s.post("/v1/invoices", s.invoice("IDEM-2", amount="100.01"), key)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "idempotency_key_reused"
    assert len(s.invoices_upstream("IDEM-2")) == 1


async def test_keys_are_scoped_by_route_and_tenant(gateway: Gateway) -> None:
    a = await sage(gateway, "tenant-a")
    b = await sage(gateway, "tenant-b")
    key = "shared-key"
    ra = await a.post("/v1/invoices", a.invoice("SCOPE-A"), key)
    assert ra.status_code == 201
    # Another tenant with the same key (and same body) gets its own execution, never tenant A's result.
    rb = await b.post("/v1/invoices", b.invoice("SCOPE-A"), key)
    assert rb.status_code == 201
    assert "idempotent-replayed" not in rb.headers
    assert rb.json()["id"] != ra.json()["id"]
    assert len(a.invoices_upstream("SCOPE-A")) == 2
    # The same key on another route is another scope.
    rj = await a.post("/v1/journals", a.journal("SCOPE-J"), key)
    assert rj.status_code == 201, rj.text
    assert "idempotent-replayed" not in rj.headers


async def test_patch_and_void_are_idempotent_too(gateway: Gateway) -> None:
    s = await sage(gateway)
    created = await s.post("/v1/contacts", s.contact("Idem Contact Ltd"), "c-1")
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    patch = {"email": "ap@idem.example"}
    p1 = await gateway.client.patch(f"/v1/contacts/{cid}", json=patch, headers=s.headers("c-2"))
    p2 = await gateway.client.patch(f"/v1/contacts/{cid}", json=patch, headers=s.headers("c-2"))
    assert p1.status_code == p2.status_code == 200, p1.text
    assert p2.headers["idempotent-replayed"] == "true"
    assert gateway.sims.sage.faults.calls["PUT /v3.1/contacts/{key}"] == 1
    inv = await s.post("/v1/invoices", s.invoice("VOID-1"), "i-1")
    iid = inv.json()["id"]
    v1 = await s.post(f"/v1/invoices/{iid}/void", {"reason": "duplicate"}, "v-1")
    v2 = await s.post(f"/v1/invoices/{iid}/void", {"reason": "duplicate"}, "v-1")
    assert v1.status_code == v2.status_code == 200, v1.text
    assert v1.json()["status"] == "void"
    assert v2.headers["idempotent-replayed"] == "true"
    assert gateway.sims.sage.faults.calls["DELETE /v3.1/sales_invoices/{key}"] == 1
    # The record id is part of the fingerprint: the same key on another invoice is a different request.
    other = await s.post("/v1/invoices", s.invoice("VOID-2"), "i-2")
    r = await s.post(f"/v1/invoices/{other.json()['id']}/void", {"reason": "duplicate"}, "v-1")
    assert r.status_code == 422
    assert r.json()["code"] == "idempotency_key_reused"


@pytest.mark.parametrize("bad", ["", " ", "a" * 256, "tab\there", "caf\u00e9"])
async def test_invalid_keys_are_400(gateway: Gateway, bad: str) -> None:
    s = await sage(gateway)
    headers = s.headers()
    raw = [*((k.encode(), v.encode()) for k, v in headers.items()), (b"idempotency-key", bad.encode("utf-8"))]
    r = await gateway.client.post("/v1/invoices", json=s.invoice("BAD-KEY"), headers=raw)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_idempotency_key"
    assert not s.invoices_upstream("BAD-KEY")


async def test_structured_field_string_and_255_chars_are_accepted(gateway: Gateway) -> None:
    s = await sage(gateway)
    quoted = await s.post("/v1/invoices", s.invoice("SF-1"), '"8e03978e-40d5-43e8-bc93-6894a57f9324"')
    bare = await s.post("/v1/invoices", s.invoice("SF-1"), "8e03978e-40d5-43e8-bc93-6894a57f9324")
    assert quoted.status_code == 201
    assert bare.headers["idempotent-replayed"] == "true"
    assert (await s.post("/v1/invoices", s.invoice("SF-2"), "k" * 255)).status_code == 201


# --- in flight ----------------------------------------------------------------------------------------


async def test_same_key_in_flight_is_409_then_replayed(gateway: Gateway) -> None:
    s = await sage(gateway)
    sim = gateway.sims.sage
    sim.faults.add(Fault(match=SAGE_INVOICES, kind="delay", delay=0.3))
    first = asyncio.create_task(s.post("/v1/invoices", s.invoice("FLIGHT-1"), "flight"))
    await wait_until(lambda: sim.faults.calls[SAGE_INVOICES] > 0)
    busy = await s.post("/v1/invoices", s.invoice("FLIGHT-1"), "flight")
    assert busy.status_code == 409
    assert busy.json()["code"] == "idempotency_key_in_use"
    assert busy.headers["retry-after"] == "1"
    done = await first
    assert done.status_code == 201
    again = await s.post("/v1/invoices", s.invoice("FLIGHT-1"), "flight")
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == done.content
    assert len(s.invoices_upstream("FLIGHT-1")) == 1


async def test_concurrent_same_key_posts_reach_the_upstream_once(gateway: Gateway) -> None:
    s = await sage(gateway)
    sim = gateway.sims.sage
    sim.faults.add(Fault(match=SAGE_INVOICES, kind="delay", delay=0.05))
    results = await asyncio.gather(*(s.post("/v1/invoices", s.invoice("RACE-1"), "race") for _ in range(25)))
    statuses = sorted(r.status_code for r in results)
    assert set(statuses) <= {201, 409}, statuses
    assert statuses.count(201) >= 1
    assert sim.faults.calls[SAGE_INVOICES] == 1
    assert len(s.invoices_upstream("RACE-1")) == 1
    ids = {r.json()["id"] for r in results if r.status_code == 201}
    assert len(ids) == 1


async def test_an_expired_lease_is_taken_over(gateway: Gateway) -> None:
    """A claim whose process died (lease not renewed) is taken over by the next request with the key."""
    s = await sage(gateway)
    store = IdempotencyStore(gateway.app.state.lb.db, lease_seconds=30, retention_days=7)
    body = s.invoice("LEASE-1")
    first = asyncio.create_task(s.post("/v1/invoices", body, "lease"))
    await first
    [record] = await records(gateway)
    # Pretend the first request is still in flight in a live process: 409.
    async with gateway.app.state.lb.db.session() as session:
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.id == record.id)
            .values(state="in_flight", locked_until=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
        )
    assert (await s.post("/v1/invoices", body, "lease")).status_code == 409
    assert not await store.take_over(record.id)
    # Its process died: the lease runs out and the next retry resumes the same intent (same guard).
    async with gateway.app.state.lb.db.session() as session:
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.id == record.id)
            .values(locked_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    r = await s.post("/v1/invoices", body, "lease")
    assert r.status_code == 201
    assert len(s.invoices_upstream("LEASE-1")) == 1
    assert len(await intents(gateway)) == 1


# --- what is not stored -------------------------------------------------------------------------------


async def test_rejections_before_execution_are_not_stored(gateway: Gateway) -> None:
    s = await sage(gateway)
    key = "not-stored"
    body = s.invoice("PRE-1")
    # 401: no tenant, nothing stored.
    r = await gateway.client.post(
        "/v1/invoices", json=body, headers={**s.headers(key), "Authorization": "Bearer lb_wrong"}
    )
    assert r.status_code == 401
    # Request validation 422.
    r = await s.post("/v1/invoices", {**body, "lines": []}, key)
    assert r.status_code == 422
    # The connector's own checks before sending (a contact that does not exist): not stored either.
    r = await s.post("/v1/invoices", {**body, "contact_id": "0" * 32}, key)
    assert r.status_code == 422, r.text
    # Upstream 429 storm: not processed, not stored.
    gateway.sims.sage.faults.add(
        Fault(match=SAGE_INVOICES, kind="status", status=429, retry_after=0, times=FAST.max_attempts)
    )
    r = await s.post("/v1/invoices", body, key)
    assert r.status_code == 429, r.text
    assert "retry-after" in r.headers
    assert not s.invoices_upstream("PRE-1")
    # Now the real request runs once with the same key.
    r = await s.post("/v1/invoices", body, key)
    assert r.status_code == 201, r.text
    assert "idempotent-replayed" not in r.headers
    assert len(s.invoices_upstream("PRE-1")) == 1
    assert len(await intents(gateway)) == 1


async def test_an_upstream_business_error_is_final_and_replayed(gateway: Gateway) -> None:
    s = await sage(gateway)
    gateway.sims.sage.faults.add(
        Fault(
            match=SAGE_INVOICES,
            kind="status",
            status=422,
            body='[{"$severity":"error","$dataCode":"RecordInvalid","$message":"Period is closed","$source":"date"}]',
        )
    )
    first = await s.post("/v1/invoices", s.invoice("BIZ-1"), "biz")
    assert first.status_code == 422, first.text
    assert first.json()["upstream"]["errors"][0]["code"] == "RecordInvalid"
    again = await s.post("/v1/invoices", s.invoice("BIZ-1"), "biz")
    assert again.status_code == 422
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert gateway.sims.sage.faults.calls[SAGE_INVOICES] == 1


# --- intent before effect, unknown outcomes --------------------------------------------------------------


async def test_the_intent_is_committed_before_the_upstream_call(gateway: Gateway) -> None:
    s = await sage(gateway)
    sim = gateway.sims.sage
    sim.faults.add(Fault(match=SAGE_INVOICES, kind="delay", delay=0.2))
    task = asyncio.create_task(s.post("/v1/invoices", s.invoice("INTENT-1"), "intent-1"))
    await wait_until(lambda: sim.faults.calls[SAGE_INVOICES] > 0)
    [intent] = await intents(gateway)
    assert intent.state == "sending"
    assert intent.operation == "invoices.create"
    assert intent.payload["reference"] == "INTENT-1"
    assert intent.upstream_guard == derive_guard(intent.guard)
    r = await task
    assert r.status_code == 201
    await gateway.flush_log()
    log = (await gateway.client.get(f"/v1/requests/{r.headers['x-request-id']}", headers=s.headers())).json()
    [post] = [c for c in log["upstream_calls"] if c["method"] == "POST"]
    assert post["request_body"]["sales_invoice"]["idempotency_id"] == intent.upstream_guard
    # A second intent with the same key reuses the guard; one without a key gets a fresh one.
    await s.post("/v1/invoices", s.invoice("INTENT-2"))
    await s.post("/v1/invoices", s.invoice("INTENT-3"))
    guards = [i.guard for i in await intents(gateway)]
    assert len(set(guards)) == 3


async def test_unknown_outcome_is_504_and_a_retry_resumes_without_posting_twice(gateway: Gateway) -> None:
    s = await sage(gateway)
    sim = gateway.sims.sage
    # Every attempt commits upstream and then answers 502: retries and the inline reconciliation stay unknown.
    sim.faults.add(Fault(match=SAGE_INVOICES, kind="status_after_commit", status=502, times=-1))
    r = await s.post("/v1/invoices", s.invoice("UNK-1"), "unk")
    assert r.status_code == 504, r.text
    assert r.json()["code"] == "outcome_unknown"
    assert len(s.invoices_upstream("UNK-1")) == 1  # it did land, once, despite several sends
    [intent] = await intents(gateway)
    assert intent.state == "unknown"
    [record] = await records(gateway)
    assert record.state == "unknown" and record.response_status is None
    sim.faults.clear()
    again = await s.post("/v1/invoices", s.invoice("UNK-1"), "unk")
    assert again.status_code == 201, again.text
    assert "idempotent-replayed" not in again.headers
    assert again.json()["reference"] == "UNK-1"
    assert len(s.invoices_upstream("UNK-1")) == 1
    assert [i.state for i in await intents(gateway)] == ["succeeded"]
    replay = await s.post("/v1/invoices", s.invoice("UNK-1"), "unk")
    assert replay.headers["idempotent-replayed"] == "true"


async def test_the_background_reconciler_settles_unknown_writes(gateway: Gateway) -> None:
    s = await sage(gateway)
    sim = gateway.sims.sage
    reconciler = gateway.app.state.lb.extras["reconciler"]
    sim.faults.add(Fault(match=SAGE_INVOICES, kind="drop_after_commit", times=-1))
    keyed = await s.post("/v1/invoices", s.invoice("BG-1"), "bg")
    unkeyed = await s.post("/v1/invoices", s.invoice("BG-2"))
    assert keyed.status_code == unkeyed.status_code == 504
    assert await reconciler.run_once() == 0  # still failing upstream: stays unknown
    assert {i.state for i in await intents(gateway)} == {"unknown"}
    sim.faults.clear()
    assert await reconciler.run_once() == 2
    assert {i.state for i in await intents(gateway)} == {"succeeded"}
    assert len(s.invoices_upstream("BG-1")) == len(s.invoices_upstream("BG-2")) == 1
    # The client's retry gets the final answer stored by the reconciler, without calling the upstream.
    posts = sim.faults.calls[SAGE_INVOICES]
    final = await s.post("/v1/invoices", s.invoice("BG-1"), "bg")
    assert final.status_code == 201
    assert final.headers["idempotent-replayed"] == "true"
    assert final.json()["reference"] == "BG-1"
    assert sim.faults.calls[SAGE_INVOICES] == posts
    # The reconciler's upstream calls are in the tenant's request log.
    await gateway.flush_log()
    log = (await gateway.client.get("/v1/requests?page_size=200", headers=s.headers())).json()["data"]
    runs = [e for e in log if e["method"] == "RECONCILE"]
    assert len(runs) == 4
    assert {e["status"] for e in runs} == {201, 504}
    assert all(e["upstream_calls"] for e in runs)


async def test_expired_records_are_reaped_and_the_key_is_free_again(gateway: Gateway) -> None:
    s = await sage(gateway)
    assert (await s.post("/v1/invoices", s.invoice("REAP-1"), "reap")).status_code == 201
    async with gateway.app.state.lb.db.session() as session:
        await session.execute(
            update(IdempotencyRecord).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    reconciler = gateway.app.state.lb.extras["reconciler"]
    records_reaped, _ = await reconciler.reap()
    assert records_reaped == 1
    assert await records(gateway) == []
    assert await intents(gateway) == []
    # A key past retention is a new request: a different body is accepted.
    r = await s.post("/v1/invoices", s.invoice("REAP-2"), "reap")
    assert r.status_code == 201
    assert "idempotent-replayed" not in r.headers


async def test_records_are_kept_for_the_retention_period(gateway: Gateway) -> None:
    s = await sage(gateway)
    await s.post("/v1/invoices", s.invoice("KEEP-1"), "keep")
    [record] = await records(gateway)
    assert record.expires_at - record.created_at == dt.timedelta(
        days=gateway.settings.idempotency_retention_days
    )
    assert gateway.settings.idempotency_retention_days >= 7
    reconciler = gateway.app.state.lb.extras["reconciler"]
    assert await reconciler.reap() == (0, 0)
    assert len(await records(gateway)) == 1


async def test_a_write_left_sending_by_a_dead_request_is_finished_by_the_reconciler(gateway: Gateway) -> None:
    s = await sage(gateway)
    sim = gateway.sims.sage
    reconciler = gateway.app.state.lb.extras["reconciler"]
    sim.faults.add(Fault(match=SAGE_INVOICES, kind="delay_after_commit", delay=30))
    task = asyncio.create_task(s.post("/v1/invoices", s.invoice("STALE-1")))
    await wait_until(lambda: len(s.invoices_upstream("STALE-1")) == 1)
    task.cancel()  # the request dies between sending and recording (no key: nobody will retry)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    [intent] = await intents(gateway)
    assert intent.state == "sending"
    assert await reconciler.run_once() == 0  # not stale yet: a live process could still be on it
    async with gateway.app.state.lb.db.session() as session:
        stale = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=gateway.settings.write_lease_seconds + 1)
        await session.execute(update(WriteIntent).values(updated_at=stale))
    assert await reconciler.run_once() == 1
    [intent] = await intents(gateway)
    assert intent.state == "succeeded"
    assert len(s.invoices_upstream("STALE-1")) == 1
    assert sim.faults.calls[SAGE_INVOICES] == 2  # resent once, with the same idempotency_id
