"""Rate-limit governance through the gateway (CONTRACT §7): headers, shared budgets, upstream 429s,
concurrency caps, restarts. Runs on SQLite and, with LEDGERBRIDGE_TEST_POSTGRES_URL, on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from http_sfv.list import List as SfList

from api.app import create_app
from api.ratelimit import Governor
from api.ratelimit.redis_store import RedisStore
from sandbox.faults import Fault
from tests.conftest import GATEWAY, UPSTREAM, Gateway, Sims, auth, gateway_settings

CONTACTS = "GET /v3.1/contacts"
REDIS_URL = os.environ.get("LEDGERBRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def parse_list(value: str) -> dict[str, dict[str, Any]]:
    """An SF List of policy items → {name: params}, through a real Structured-Fields parser."""
    parsed = SfList()
    parsed.parse(value.encode())
    out: dict[str, dict[str, Any]] = {}
    for member in parsed:
        assert isinstance(member.value, str), "the policy identifier must be an sf-string"
        out[member.value] = dict(member.params)
    return out


def limits(response: httpx.Response) -> dict[str, dict[str, Any]]:
    return parse_list(response.headers["RateLimit"])


@asynccontextmanager
async def gateway_on(database_url: str, sims: Sims, **overrides: Any) -> AsyncIterator[Gateway]:
    """A gateway app on ``database_url`` with settings overrides (a second one on the same DB = a replica
    or a restart)."""
    upstream = httpx.AsyncClient(transport=httpx.ASGITransport(app=sims.app), base_url=UPSTREAM)
    settings = gateway_settings(database_url, **overrides)
    app = create_app(settings, http=upstream)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30), upstream:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=GATEWAY)
        async with client:
            yield Gateway(client, upstream, app, sims, settings)


async def gateway_tenants(gw: Gateway) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from models import Tenant

    async with gw.app.state.lb.db.sessions() as session:
        return [{"tenant_id": t.id} for t in (await session.execute(select(Tenant))).scalars()]


async def contacts(gw: Gateway, key: str, conn: str) -> httpx.Response:
    return await gw.client.get("/v1/contacts", headers=auth(key, conn))


# --- header syntax -----------------------------------------------------------------------------------


async def test_headers_parse_as_structured_fields(gateway: Gateway) -> None:
    key = await gateway.tenant()
    conn = (await gateway.sage_connection(key))["id"]
    r = await contacts(gateway, key, conn)
    assert r.status_code == 200, r.text

    policy = parse_list(r.headers["RateLimit-Policy"])
    assert policy == {
        "tenant": {"q": 600, "w": 60},
        "sage-accounting": {"q": 1_296_000, "w": 86_400},
        "sage-accounting-concurrency": {"q": 150, "qu": "concurrent-requests"},
    }
    limit = limits(r)
    assert set(limit) == set(policy)
    for name, params in limit.items():
        assert set(params) <= {"r", "t"}, f"{name}: no pk or other parameter leaks"
        assert isinstance(params["r"], int) and 0 <= params["r"] <= policy[name]["q"]
        if "w" in policy[name]:
            assert isinstance(params["t"], int) and 0 <= params["t"] <= policy[name]["w"]
    # The first calls are counted: the connection's business lookup and this list.
    assert limit["tenant"]["r"] < 600
    assert limit["sage-accounting"]["r"] < 1_296_000
    assert limit["sage-accounting-concurrency"]["r"] == 150  # nothing in flight any more

    # The classic trio describes the most constrained policy: the tenant's (lowest share left).
    assert r.headers["RateLimit-Limit"] == "600"
    assert r.headers["RateLimit-Remaining"] == str(limit["tenant"]["r"])
    assert r.headers["RateLimit-Reset"] == str(limit["tenant"]["t"])

    rows = await gateway.client.get("/v1/requests", headers=auth(key))
    tenant_ids = {row["tenant_id"] for row in (await gateway_tenants(gateway))}
    for name in ("RateLimit-Policy", "RateLimit"):
        for value in (r.headers[name], rows.headers[name]):
            assert not any(tid in value for tid in tenant_ids), "no tenant id in a header (no pk)"
    assert rows.headers["RateLimit-Policy"] == '"tenant";q=600;w=60'


async def test_every_unified_response_carries_the_headers(gateway: Gateway) -> None:
    key = await gateway.tenant()
    conn = (await gateway.sage_connection(key))["id"]
    listed = await contacts(gateway, key, conn)
    contact_id = listed.json()["data"][0]["id"]
    responses = [
        listed,
        await gateway.client.get(f"/v1/contacts/{contact_id}", headers=auth(key, conn)),
        await gateway.client.get("/v1/contacts/does-not-exist", headers=auth(key, conn)),
        await gateway.client.get("/v1/accounts", headers=auth(key, conn)),
        await gateway.client.get("/v1/tax-rates", headers=auth(key, conn)),
        await gateway.client.get("/v1/invoices", headers=auth(key, conn)),
        await gateway.client.get("/v1/connections", headers=auth(key)),
        await gateway.client.get(f"/v1/connections/{conn}", headers=auth(key)),
    ]
    for response in responses:
        assert "tenant" in parse_list(response.headers["RateLimit-Policy"]), response.request.url
        assert "tenant" in limits(response), response.request.url
        assert response.headers["RateLimit-Remaining"].isdigit()
    for response in responses[:6]:
        assert "sage-accounting" in limits(response), (response.request.url, response.status_code)


async def test_proxy_calls_count_against_the_same_budgets(gateway: Gateway) -> None:
    key = await gateway.tenant()
    conn = (await gateway.sage_connection(key))["id"]
    before = limits(await contacts(gateway, key, conn))
    r = await gateway.client.get("/v1/proxy/contacts?items_per_page=5", headers=auth(key, conn))
    assert r.status_code == 200, r.text
    after = limits(r)
    assert before["tenant"]["r"] - after["tenant"]["r"] == 1
    assert before["sage-accounting"]["r"] - after["sage-accounting"]["r"] == 1


# --- the tenant's own quota --------------------------------------------------------------------------


async def test_tenant_quota_refuses_early_with_rate_limited(database_url: str, sims: Sims) -> None:
    policies = {"tenant": {"limit": 5, "window": 86_400}}
    async with gateway_on(database_url, sims, rate_limit_policies=policies) as gw:
        key = await gw.tenant()
        conn = (await gw.sage_connection(key))["id"]
        left = limits(await gw.client.get("/v1/connections", headers=auth(key)))["tenant"]["r"]
        assert 0 < left < 5
        for _ in range(left):
            assert (await contacts(gw, key, conn)).status_code == 200
        sent = sims.sage.faults.calls[CONTACTS]

        refused = await contacts(gw, key, conn)
        assert refused.status_code == 429
        body = refused.json()
        assert body["code"] == "rate_limited"
        assert body["violated-policies"] == ["tenant"]
        assert refused.headers["Cache-Control"] == "no-store"
        assert int(refused.headers["Retry-After"]) >= 1
        assert limits(refused)["tenant"]["r"] == 0
        assert sims.sage.faults.calls[CONTACTS] == sent, "refused without calling the upstream"

        # Another tenant has its own quota.
        other = await gw.tenant("other")
        other_conn = (await gw.sage_connection(other))["id"]
        assert (await contacts(gw, other, other_conn)).status_code == 200


# --- upstream 429s -----------------------------------------------------------------------------------


async def test_upstream_429_storm_stops_calling_the_upstream(database_url: str, sims: Sims) -> None:
    async with gateway_on(database_url, sims) as gw:
        key = await gw.tenant()
        conn = (await gw.sage_connection(key))["id"]
        sims.sage.faults.add(Fault(match=CONTACTS, kind="status", status=429, retry_after=40, times=-1))
        sims.sage.faults.reset_counters()

        first = await contacts(gw, key, conn)
        assert first.status_code == 429, first.text
        assert first.json()["code"] == "upstream_rate_limited"
        assert first.json()["violated-policies"] == ["sage-accounting"]
        assert first.json()["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
        assert first.headers["Retry-After"] == "40"
        assert first.headers["Cache-Control"] == "no-store"
        assert limits(first)["sage-accounting"] == {"r": 0, "t": 40}

        for _ in range(5):
            again = await contacts(gw, key, conn)
            assert again.status_code == 429
            assert again.json()["code"] == "upstream_rate_limited"
            assert 38 <= int(again.headers["Retry-After"]) <= 45  # the upstream's time, jittered upwards only
            t = limits(again)["sage-accounting"]
            assert t["r"] == 0 and 38 <= t["t"] <= 40
            assert int(again.headers["Retry-After"]) >= t["t"]
        # The whole app's budget is closed: another resource is refused too, without an upstream call.
        accounts = await gw.client.get("/v1/accounts", headers=auth(key, conn))
        assert accounts.status_code == 429
        assert sims.sage.faults.calls[CONTACTS] == 1
        assert sims.sage.faults.calls["GET /v3.1/ledger_accounts"] == 0

    # A replica (or a restarted gateway) on the same database knows of the block.
    async with gateway_on(database_url, sims) as replica:
        r = await contacts(replica, key, conn)
        assert r.status_code == 429
        assert 38 <= int(r.headers["Retry-After"]) <= 45
        assert sims.sage.faults.calls[CONTACTS] == 1


async def test_429_without_retry_after_waits_the_default_and_retries_pass_admit(
    database_url: str, sims: Sims
) -> None:
    async with gateway_on(database_url, sims, rate_limit_default_retry_after_seconds=45) as gw:
        key = await gw.tenant()
        conn = (await gw.sage_connection(key))["id"]
        sims.sage.faults.add(Fault(match=CONTACTS, kind="status", status=429, times=-1))
        sims.sage.faults.reset_counters()

        r = await contacts(gw, key, conn)
        # connectors/http.py retries a 429 after a short backoff; that retry passes admit() again and is
        # refused there, so the upstream saw exactly one call.
        assert r.status_code == 429
        assert r.json()["code"] == "upstream_rate_limited"
        assert 44 <= int(r.headers["Retry-After"]) <= 50
        assert sims.sage.faults.calls[CONTACTS] == 1
        assert limits(r)["sage-accounting"]["r"] == 0


async def test_each_retry_counts_against_the_budgets(database_url: str, sims: Sims) -> None:
    async with gateway_on(database_url, sims) as gw:
        key = await gw.tenant()
        conn = (await gw.sage_connection(key))["id"]
        before = limits(await contacts(gw, key, conn))
        sims.sage.faults.add(Fault(match=CONTACTS, kind="status", status=503, times=2))
        r = await contacts(gw, key, conn)
        assert r.status_code == 200, r.text
        after = limits(r)
        assert sims.sage.faults.calls[CONTACTS] == 4  # one before, three attempts now
        assert before["tenant"]["r"] - after["tenant"]["r"] == 3
        assert before["sage-accounting"]["r"] - after["sage-accounting"]["r"] == 3


# --- concurrency -------------------------------------------------------------------------------------


async def test_concurrency_cap_is_never_exceeded(database_url: str, sims: Sims) -> None:
    policies = {"sage-accounting-concurrency": {"limit": 3}}
    async with gateway_on(
        database_url, sims, rate_limit_policies=policies, rate_limit_concurrency_wait_seconds=20
    ) as gw:
        key = await gw.tenant()
        conn = (await gw.sage_connection(key))["id"]
        sims.sage.faults.add(Fault(match=CONTACTS, kind="delay", delay=0.15, times=-1))
        sims.sage.faults.reset_counters()
        results = await asyncio.gather(*(contacts(gw, key, conn) for _ in range(12)))
        assert [r.status_code for r in results] == [200] * 12
        assert sims.sage.faults.calls[CONTACTS] == 12
        assert sims.sage.faults.max_inflight == 3


async def test_concurrency_wait_is_bounded(database_url: str, sims: Sims) -> None:
    policies = {"sage-accounting-concurrency": {"limit": 1}}
    async with gateway_on(
        database_url, sims, rate_limit_policies=policies, rate_limit_concurrency_wait_seconds=0.3
    ) as gw:
        key = await gw.tenant()
        conn = (await gw.sage_connection(key))["id"]
        sims.sage.faults.add(Fault(match=CONTACTS, kind="delay", delay=1.0, times=-1))
        sims.sage.faults.reset_counters()
        results = await asyncio.gather(*(contacts(gw, key, conn) for _ in range(4)))
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 429, 429, 429]
        for r in results:
            if r.status_code == 429:
                assert r.json()["code"] == "upstream_rate_limited"
                assert r.json()["violated-policies"] == ["sage-accounting-concurrency"]
                assert r.headers["Retry-After"].isdigit()
        assert sims.sage.faults.calls[CONTACTS] == 1
        assert sims.sage.faults.max_inflight == 1


# --- durability --------------------------------------------------------------------------------------


async def test_budgets_survive_a_gateway_restart(database_url: str, sims: Sims) -> None:
    policies = {"tenant": {"limit": 1000, "window": 86_400}}
    async with gateway_on(database_url, sims, rate_limit_policies=policies) as gw:
        key = await gw.tenant()
        conn = (await gw.sage_connection(key))["id"]
        for _ in range(3):
            last = await contacts(gw, key, conn)
        left = limits(last)["tenant"]["r"]
        app_left = limits(last)["sage-accounting"]["r"]
        assert left <= 997
    async with gateway_on(database_url, sims, rate_limit_policies=policies) as restarted:
        seen = limits(await restarted.client.get("/v1/connections", headers=auth(key)))
        assert seen["tenant"]["r"] == left
        r = await contacts(restarted, key, conn)
        assert limits(r)["tenant"]["r"] == left - 1
        assert limits(r)["sage-accounting"]["r"] == app_left - 1


async def test_redis_backed_replicas_share_an_upstream_block(database_url: str, sims: Sims) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the Redis store does not depend on the database: run it once")
    import redis.asyncio as aioredis

    probe = aioredis.Redis.from_url(REDIS_URL)
    try:
        await probe.ping()
    except OSError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    finally:
        await probe.aclose()  # type: ignore[attr-defined]
    prefix = f"lbtest:{uuid.uuid4().hex[:8]}:"
    async with gateway_on(database_url, sims) as one, gateway_on(database_url, sims) as two:
        governors = []
        for gw in (one, two):
            assert isinstance(gw.app.state.lb.limiter, Governor)
            governor = Governor(gw.app.state.lb.limiter.policies, RedisStore(REDIS_URL, prefix=prefix))
            await governor.start()
            gw.app.state.lb.limiter = governor
            governors.append(governor)
        try:
            key = await one.tenant()
            conn = (await one.sage_connection(key))["id"]
            sims.sage.faults.add(Fault(match=CONTACTS, kind="status", status=429, retry_after=40, times=-1))
            sims.sage.faults.reset_counters()
            assert (await contacts(one, key, conn)).status_code == 429
            refused = await contacts(two, key, conn)
            assert refused.status_code == 429
            assert 38 <= int(refused.headers["Retry-After"]) <= 45
            assert limits(refused)["sage-accounting"]["r"] == 0
            assert sims.sage.faults.calls[CONTACTS] == 1
        finally:
            await governors[0].store.purge()  # type: ignore[attr-defined]
            for governor in governors:
                await governor.close()


async def test_rate_limiting_can_be_switched_off(database_url: str, sims: Sims) -> None:
    async with gateway_on(database_url, sims, rate_limit_enabled=False) as gw:
        key = await gw.tenant()
        r = await gw.client.get("/v1/connections", headers=auth(key))
        assert r.status_code == 200
        assert "RateLimit" not in r.headers


@pytest.mark.parametrize("bad", [{"Tenant": {"limit": 1}}, {"tenant": {"window": 0}}, {"x": {"limit": 1}}])
def test_bad_policy_configuration_is_refused_at_startup(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="rate-limit policy"):
        create_app(gateway_settings("sqlite:///:memory:", rate_limit_policies=bad))


async def test_concurrency_slots_are_shared_by_replicas(database_url: str, sims: Sims) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite serves one process (reliability-notes §6.3): its slots are in memory by design")
    policies = {"sage-accounting-concurrency": {"limit": 3}}
    settings: dict[str, Any] = {"rate_limit_policies": policies, "rate_limit_concurrency_wait_seconds": 20}
    async with (
        gateway_on(database_url, sims, **settings) as one,
        gateway_on(database_url, sims, **settings) as two,
    ):
        key = await one.tenant()
        conn = (await one.sage_connection(key))["id"]
        sims.sage.faults.add(Fault(match=CONTACTS, kind="delay", delay=0.15, times=-1))
        sims.sage.faults.reset_counters()
        results = await asyncio.gather(*(contacts((one, two)[i % 2], key, conn) for i in range(12)))
        assert [r.status_code for r in results] == [200] * 12
        # Each replica alone would let 3 through: together they still hold at most 3 slots.
        assert sims.sage.faults.max_inflight == 3


# --- Sage Intacct: concurrency per company, GW-0010 -------------------------------------------------


async def test_intacct_company_concurrency_is_capped(gateway: Gateway) -> None:
    if gateway.sims.intacct is None:
        pytest.skip("the Sage Intacct simulator is not available")
    key = await gateway.tenant()
    conn = (await gateway.intacct_connection(key))["id"]
    intacct = gateway.sims.intacct
    intacct.faults.add(Fault(match="XML query:*", kind="delay", delay=0.1, times=-1))
    results = await asyncio.gather(*(contacts(gateway, key, conn) for _ in range(8)))
    assert [r.status_code for r in results] == [200] * 8, [r.text for r in results if r.status_code != 200]
    assert intacct.max_inflight_by_company["DEMO-CO"] == 2  # the simulator answers GW-0010 above 2
    policy = parse_list(results[0].headers["RateLimit-Policy"])
    assert policy["sage-intacct"] == {"q": 2, "qu": "concurrent-requests"}


async def test_intacct_gw_0010_closes_the_company_budget(gateway: Gateway) -> None:
    if gateway.sims.intacct is None:
        pytest.skip("the Sage Intacct simulator is not available")
    key = await gateway.tenant()
    conn = (await gateway.intacct_connection(key))["id"]
    intacct = gateway.sims.intacct
    intacct.faults.add(Fault(match="POST /ia/xml/xmlgw.phtml", kind="status", status=429, times=-1))
    intacct.faults.reset_counters()
    first = await contacts(gateway, key, conn)
    assert first.status_code == 429, first.text
    assert first.json()["code"] == "upstream_rate_limited"
    assert 30 <= int(first.headers["Retry-After"]) <= 34  # no Retry-After upstream: the 30 s default
    assert first.json()["violated-policies"] == ["sage-intacct"]
    assert limits(first)["sage-intacct"]["r"] == 0
    calls = sum(intacct.faults.calls.values())
    again = await contacts(gateway, key, conn)
    assert again.status_code == 429
    assert again.json()["violated-policies"] == ["sage-intacct"]
    assert sum(intacct.faults.calls.values()) == calls, "no upstream call while the company is throttled"
