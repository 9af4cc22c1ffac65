"""The limiter's parts on real stores: policies, upstream signal parsing, windows, leases, Redis."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from http_sfv.list import List as SfList

from api.ratelimit import (
    DEFAULT_POLICIES,
    GatewayRateLimited,
    Governor,
    LimiterUnavailable,
    Policy,
    SqlStore,
    load_policies,
)
from api.ratelimit.governor import STATE_TTL, lease_units
from api.ratelimit.headers import PolicyStatus, render
from api.ratelimit.redis_store import RedisStore
from api.ratelimit.signals import upstream_wait
from api.ratelimit.store import Bucket, Store
from api.settings import Settings
from connectors.base import CallOutcome, UpstreamCall
from connectors.errors import RateLimited

REDIS_URL = os.environ.get("LEDGERBRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SAGE_READ = UpstreamCall("sage_accounting", "GET", "http://upstream/v3.1/contacts", "read", scope="biz-1")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Backend:
    """Stores (several = several replicas) and governors over one shared backend, closed after the test."""

    def __init__(self, kind: str, database_url: str) -> None:
        self.kind = kind
        self.database_url = database_url
        self.governors: list[Governor] = []
        self.stores: list[Store] = []
        self.prefix = f"lbtest:{uuid.uuid4().hex[:8]}:"

    def store(self) -> Store:
        store: Store
        if self.kind == "redis":
            store = RedisStore(REDIS_URL, prefix=self.prefix)
        else:
            store = SqlStore(self.database_url)
        self.stores.append(store)
        return store

    def governor(self, policies: list[Policy], store: Store | None = None, **options: Any) -> Governor:
        governor = Governor(policies, store or self.store(), **options)
        self.governors.append(governor)
        return governor

    async def close(self) -> None:
        for governor in self.governors:
            await governor.close()  # waits for slot releases still in flight
        if self.kind == "redis":
            cleaner = RedisStore(REDIS_URL, prefix=self.prefix)
            await cleaner.purge()
            await cleaner.close()
        for store in self.stores:
            await store.close()


@pytest.fixture(params=["sql", "redis"])
async def backend(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[Backend]:
    if request.param == "redis":
        if not database_url.startswith("sqlite"):
            pytest.skip("the Redis store does not depend on the database: run it once")
        probe = aioredis.Redis.from_url(REDIS_URL)
        try:
            await probe.ping()
        except OSError:
            pytest.skip(f"no Redis at {REDIS_URL}")
        finally:
            await probe.aclose()  # type: ignore[attr-defined]
    made = Backend(request.param, database_url)
    yield made
    await made.close()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# --- policies ----------------------------------------------------------------------------------------


def test_policy_overrides_replace_fields_add_and_remove_policies() -> None:
    policies = {
        p.name: p
        for p in load_policies(
            {
                "sage-intacct": {"limit": 4},
                "sage-accounting-concurrency": None,
                "sage-business": {
                    "kind": "quota",
                    "limit": 200,
                    "window": 60,
                    "partition": "scope",
                    "provider": "sage_accounting",
                },
            }
        )
    }
    assert policies["sage-intacct"].limit == 4
    assert policies["sage-intacct"].partition == "scope"
    assert "sage-accounting-concurrency" not in policies
    assert policies["sage-business"].partition_value("tenant-1", "biz-9") == "s:biz-9"
    assert policies["tenant"] == next(p for p in DEFAULT_POLICIES if p.name == "tenant")


def test_policies_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERBRIDGE_RATE_LIMIT_POLICIES", '{"tenant": {"limit": 1200}}')
    settings = Settings()
    assert {p.name: p.limit for p in load_policies(settings.rate_limit_policies)}["tenant"] == 1200


@pytest.mark.parametrize(
    "bad",
    [
        {"Upper": {"kind": "quota", "limit": 1, "window": 1, "partition": "app"}},
        {"tenant": {"window": -1}},
        {"tenant": {"partition": "user"}},
        {"tenant": {"colour": "red"}},
        {"new": {"limit": 1}},
        {"scoped": {"kind": "concurrency", "limit": 1, "partition": "scope"}},
    ],
)
def test_invalid_policies_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="rate-limit policy"):
        load_policies(bad)


# --- upstream signals --------------------------------------------------------------------------------


def outcome(status: int | None, headers: dict[str, str] | None = None, **kw: Any) -> CallOutcome:
    return CallOutcome(attempt=1, duration_ms=1.0, status=status, headers=headers or {}, **kw)


def test_upstream_signals_are_read_per_provider() -> None:
    now = 1_800_000_000.0
    assert upstream_wait("sage_accounting", outcome(200), 30) is None
    assert upstream_wait("sage_accounting", outcome(429, retry_after=12.0), 30) == 12.0
    assert upstream_wait("sage_accounting", outcome(429), 30) == 30
    # IETF fields of an upstream: an exhausted policy's t; a malformed field is ignored.
    assert (
        upstream_wait("sage_accounting", outcome(200, {"RateLimit": '"day";r=0;t=17, "min";r=5;t=2'}), 30)
        == 17
    )
    assert upstream_wait("sage_accounting", outcome(200, {"RateLimit": '"day";r=3;t=17'}), 30) is None
    assert upstream_wait("sage_accounting", outcome(200, {"RateLimit": "not a ( list"}), 30) is None
    # X-RateLimit-*: the reset as a delay or as an epoch.
    assert (
        upstream_wait("x", outcome(200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "9"}), 30, now)
        == 9
    )
    epoch = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(now + 25))}
    assert upstream_wait("x", outcome(200, epoch), 30, now) == 25
    assert upstream_wait("x", outcome(200, {"X-RateLimit-Remaining": "4"}), 30, now) is None
    # Intacct: GW-0010 in the body, and its throttle headers; the longest wait wins.
    gw = b"<response><errormessage><error><errorno>GW-0010</errorno></error></errormessage></response>"
    assert upstream_wait("sage_intacct", outcome(200, response_body=gw), 30) == 30
    throttle = {"X-IA-Minute-Rate-Limit-Retry-After": "50"}
    assert upstream_wait("sage_intacct", outcome(429, throttle, retry_after=5.0), 30) == 50


# --- headers -----------------------------------------------------------------------------------------


def test_rendered_headers_round_trip_and_name_the_most_constrained_policy() -> None:
    tenant, app, conc = (
        next(p for p in DEFAULT_POLICIES if p.name == n)
        for n in ("tenant", "sage-accounting", "sage-accounting-concurrency")
    )
    headers = render([PolicyStatus(tenant, 500, 20), PolicyStatus(app, 0, 41), PolicyStatus(conc, 149, None)])
    parsed = SfList()
    parsed.parse(headers["RateLimit"].encode())
    assert [(m.value, dict(m.params)) for m in parsed] == [
        ("tenant", {"r": 500, "t": 20}),
        ("sage-accounting", {"r": 0, "t": 41}),
        ("sage-accounting-concurrency", {"r": 149}),
    ]
    assert headers["RateLimit-Policy"] == (
        '"tenant";q=600;w=60, "sage-accounting";q=1296000;w=86400, '
        '"sage-accounting-concurrency";q=150;qu="concurrent-requests"'
    )
    assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"], headers["RateLimit-Reset"]) == (
        "1296000",
        "0",
        "41",
    )


# --- the governor on real stores ---------------------------------------------------------------------


async def admit_once(governor: Governor, call: UpstreamCall = SAGE_READ, tenant: str = "tenant-1") -> None:
    async with governor.admit(call, tenant):
        pass


async def test_quota_windows_roll_over(backend: Backend) -> None:
    clock = Clock(1_800_000_000.0 - 1_800_000_000.0 % 60 + 30)  # mid-window
    name = unique("q")
    governor = backend.governor(
        [Policy(name, "quota", 2, "app", provider="sage_accounting", window=60)], backend.store(), clock=clock
    )
    await governor.start()
    await admit_once(governor)
    await admit_once(governor)
    with pytest.raises(RateLimited) as refused:
        await admit_once(governor)
    assert refused.value.policy == name and not isinstance(refused.value, GatewayRateLimited)
    assert 30 <= refused.value.retry_after <= 33
    headers = await governor.response_headers("tenant-1", "sage_accounting", "biz-1")
    assert headers["RateLimit"] == f'"{name}";r=0;t=30'
    clock.now += 30
    await admit_once(governor)  # a new window


async def admitted(replicas: list[Governor], attempts: int, at_once: int) -> int:
    """How many of ``attempts`` calls, spread over ``replicas`` and ``at_once`` concurrent, were admitted."""
    count = 0

    async def one(governor: Governor) -> None:
        nonlocal count
        try:
            await admit_once(governor)
            count += 1
        except RateLimited:
            pass

    for start in range(0, attempts, at_once):
        batch = range(start, min(start + at_once, attempts))
        await asyncio.gather(*(one(replicas[i % len(replicas)]) for i in batch))
    return count


async def test_one_budget_for_every_replica(backend: Backend) -> None:
    name = unique("shared")
    policy = Policy(name, "quota", 10, "app", provider="sage_accounting", window=86_400)
    replicas = [backend.governor([policy], backend.store()) for _ in range(3)]
    assert await admitted(replicas, 40, at_once=40) == 10


async def test_tenant_quota_is_per_tenant_and_says_rate_limited(backend: Backend) -> None:
    name = unique("tenant")
    governor = backend.governor([Policy(name, "quota", 1, "tenant", window=3600)], backend.store())
    await admit_once(governor, tenant="a")
    await admit_once(governor, tenant="b")
    with pytest.raises(GatewayRateLimited) as refused:
        await admit_once(governor, tenant="a")
    assert refused.value.code == "rate_limited" and refused.value.status == 429


async def test_a_refused_call_does_not_spend_other_budgets(backend: Backend) -> None:
    app, tenant = unique("app"), unique("tenant")
    policies = [
        Policy(app, "quota", 100, "app", provider="sage_accounting", window=3600),
        Policy(tenant, "quota", 1, "tenant", window=3600),
    ]
    store = backend.store()
    governor = backend.governor(policies, store)
    await admit_once(governor)
    for _ in range(5):
        with pytest.raises(GatewayRateLimited):
            await admit_once(governor)
    fresh = backend.governor(policies, store)  # no cached state: read from the store
    headers = await fresh.response_headers("tenant-2", "sage_accounting", None)
    assert f'"{app}";r=99;' in headers["RateLimit"]


async def test_upstream_block_is_shared_and_survives_a_restart(backend: Backend) -> None:
    name = unique("sage")
    policy = Policy(
        name, "quota", 1000, "app", provider="sage_accounting", window=86_400, upstream_signals=True
    )
    first = backend.governor([policy], backend.store())
    await first.observe(SAGE_READ, outcome(429, retry_after=40.0), "tenant-1")
    second = backend.governor([policy], backend.store())
    with pytest.raises(RateLimited) as refused:
        await admit_once(second, tenant="someone-else")
    assert refused.value.policy == name
    assert 38 <= refused.value.retry_after <= 44.5
    # Auth calls of the provider do not count against a policy limited to reads and writes.
    auth_policy = Policy(
        unique("rw"), "quota", 1, "app", provider="sage_accounting", window=60, kinds=("read",)
    )
    governor = backend.governor([auth_policy], backend.store())
    token = UpstreamCall("sage_accounting", "POST", "http://upstream/token", "auth")
    for _ in range(3):
        await admit_once(governor, token)


async def test_a_crashed_holders_slot_frees_when_its_lease_ends(backend: Backend) -> None:
    name = unique("conc")
    policy = Policy(name, "concurrency", 1, "scope", provider="sage_accounting")
    store = backend.store()
    key = f"{name}:s:biz-1"
    crashed = await store.claim(key, 1, "crashed-process", time.time(), 0.4)
    assert crashed is not None
    governor = backend.governor([policy], store, concurrency_wait=5.0, lease_ttl=30)
    started = asyncio.get_running_loop().time()
    await admit_once(governor)  # waits for the dead lease, then gets the slot
    assert asyncio.get_running_loop().time() - started >= 0.3
    # Other companies never waited on it.
    other = UpstreamCall("sage_accounting", "GET", "http://upstream/x", "read", scope="biz-2")
    await admit_once(governor, other)


async def test_concurrency_is_capped_per_company(backend: Backend) -> None:
    name = unique("company")
    governor = backend.governor(
        [Policy(name, "concurrency", 2, "scope", provider="sage_intacct")],
        backend.store(),
        concurrency_wait=10,
    )
    inside: dict[str, int] = {"c1": 0, "c2": 0}
    peak: dict[str, int] = {"c1": 0, "c2": 0}

    async def one(company: str) -> None:
        call = UpstreamCall("sage_intacct", "POST", "http://upstream/xml", "read", scope=company)
        async with governor.admit(call, "tenant-1"):
            inside[company] += 1
            peak[company] = max(peak[company], inside[company])
            await asyncio.sleep(0.02)
            inside[company] -= 1

    await asyncio.gather(*(one(("c1", "c2")[i % 2]) for i in range(16)))
    assert peak == {"c1": 2, "c2": 2}


async def test_an_unreachable_store_fails_closed() -> None:
    policy = Policy(
        "sage-accounting", "quota", 10, "app", provider="sage_accounting", window=60, upstream_signals=True
    )
    governor = Governor([policy], RedisStore("redis://127.0.0.1:1/0"))
    try:
        with pytest.raises(LimiterUnavailable) as refused:
            await admit_once(governor)
        assert refused.value.status == 503 and refused.value.retry_after == 1.0
        assert (
            await governor.response_headers("tenant-1", "sage_accounting", None) == {}
        )  # omitted, not invented
        # An upstream 429 is still honoured by this process even though it cannot be shared.
        await governor.observe(SAGE_READ, outcome(429, retry_after=20.0), "tenant-1")
        with pytest.raises(RateLimited) as blocked:
            await admit_once(governor)
        assert blocked.value.policy == "sage-accounting"
    finally:
        await governor.close()


# --- quotas counted in blocks ------------------------------------------------------------------------


class CountingStore:
    """A real store that counts the statements (``take``/``claim_take`` with buckets) the governor sends."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.counts = 0

    async def take(self, buckets: Any, now: float) -> Any:
        self.counts += 1
        return await self.inner.take(buckets, now)

    async def claim_take(self, key: str, cap: int, holder: str, now: float, ttl: float, buckets: Any) -> Any:
        if buckets:
            self.counts += 1
        return await self.inner.claim_take(key, cap, holder, now, ttl, buckets)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_lease_sizes() -> None:
    def quota(limit: int) -> Policy:
        return Policy("q", "quota", limit, "app", provider="sage_accounting", window=60)

    assert [lease_units(quota(n)) for n in (1, 50, 199, 200, 600, 10_000, 1_296_000)] == [
        1,
        1,
        1,
        2,
        6,
        100,
        100,
    ]
    assert lease_units(Policy("c", "concurrency", 150, "app", provider="sage_accounting")) == 1


async def test_a_large_quota_costs_one_store_write_per_block(backend: Backend) -> None:
    name = unique("daily")
    policy = Policy(name, "quota", 10_000, "app", provider="sage_accounting", window=86_400)
    store = CountingStore(backend.store())
    governor = backend.governor([policy], store)  # type: ignore[arg-type]
    for _ in range(250):
        await admit_once(governor)
    assert store.counts <= 3 + 2  # three blocks of 100, plus at most a check per second
    headers = await governor.response_headers("tenant-1", "sage_accounting", None)
    assert f'"{name}";r=9750;' in headers["RateLimit"]  # what was spent, not what was taken
    await governor.close()
    fresh = backend.governor([policy], backend.store())  # the unused 50 went back to the shared budget
    headers = await fresh.response_headers("tenant-1", "sage_accounting", None)
    assert f'"{name}";r=9750;' in headers["RateLimit"]


async def test_replicas_taking_blocks_never_overspend_a_quota(backend: Backend) -> None:
    name = unique("blocks")
    policy = Policy(name, "quota", 1000, "app", provider="sage_accounting", window=86_400)  # blocks of 10
    replicas = [backend.governor([policy], backend.store()) for _ in range(3)]
    count = await admitted(replicas, 1500, at_once=50)
    # Never more than the quota; at most a block's remainder (9 calls) left idle in each replica.
    assert 1000 - 3 * 9 <= count <= 1000
    for governor in replicas:
        await governor.close()
    fresh = backend.governor([policy], backend.store())
    headers = await fresh.response_headers("tenant-1", "sage_accounting", None)
    assert f'"{name}";r={1000 - count};' in headers["RateLimit"]


async def test_the_last_calls_of_a_quota_are_counted_one_by_one(backend: Backend) -> None:
    name = unique("tail")
    policy = Policy(name, "quota", 200, "app", provider="sage_accounting", window=86_400)  # blocks of 2
    clock = Clock()
    store = backend.store()
    await store.take([Bucket(f"{name}:app", 200, 86_400, units=199)], clock.now)  # another replica
    governor = backend.governor([policy], store, clock=clock)
    await admit_once(governor)  # a block of 2 no longer fits; one call does
    with pytest.raises(RateLimited):
        await admit_once(governor)


async def test_a_block_set_by_another_replica_stops_a_process_spending_its_allowance(
    backend: Backend,
) -> None:
    name = unique("signal")
    policy = Policy(
        name, "quota", 1_000_000, "app", provider="sage_accounting", window=86_400, upstream_signals=True
    )
    clock = Clock()
    spender = backend.governor([policy], backend.store(), clock=clock)
    await admit_once(spender)  # holds 99 more calls of its block
    other = backend.governor([policy], backend.store(), clock=clock)
    await other.observe(SAGE_READ, outcome(429, retry_after=60.0), "tenant-1")
    clock.now += STATE_TTL  # within STATE_TTL the spender may not know yet; after it, it must
    with pytest.raises(RateLimited) as refused:
        await admit_once(spender)
    assert refused.value.policy == name and refused.value.retry_after >= 58


def test_the_fast_header_serialisation_is_http_sfv_s() -> None:
    from api.ratelimit.headers import _limit_item, _policy_item, _serialize

    policies = [*DEFAULT_POLICIES, Policy("x-1", "quota", 0, "app", provider="sage_accounting", window=1)]
    for remaining, reset in ((0, 0), (5, 30), (1_296_000, None), (7, 86_400)):
        statuses = [PolicyStatus(p, remaining, reset if p.kind == "quota" else None) for p in policies]
        rendered = render(statuses)
        assert rendered["RateLimit"] == _serialize([_limit_item(s) for s in statuses])
        assert rendered["RateLimit-Policy"] == _serialize([_policy_item(s) for s in statuses])
        parsed = SfList()
        parsed.parse(rendered["RateLimit"].encode())
        assert [str(item.value) for item in parsed] == [p.name for p in policies]
