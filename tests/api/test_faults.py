"""Fault injection through the gateway on both simulators: never post twice, never lose a write.

A seeded random sequence of writes (invoices, journals, contacts; with and without ``Idempotency-Key``)
meets upstream timeouts after commit (a real read timeout on the gateway's upstream client), dropped
connections, 5xx and 524 after commit, 429 storms, 503 before commit and session/token expiry mid-write;
clients retry with the same key. At the end: exactly one upstream record per intended write, and the
request log accounts for every call, upstream write attempts included.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select

import connectors.http
from api.app import create_app
from models import RequestLog, WriteIntent
from sandbox.faults import Fault
from tests.conftest import GATEWAY, UPSTREAM, Gateway, Sims, auth, gateway_settings

pytestmark = pytest.mark.slow

READ_TIMEOUT = 0.1
WRITES = 1000
CLIENTS = 8
SEED = 20261122


class TimeoutASGITransport(httpx.AsyncBaseTransport):
    """``httpx.ASGITransport`` with the client's read timeout enforced (the plain one ignores timeouts) and a
    connection dropped by the app surfacing as ``RemoteProtocolError``, as it would on a socket.

    The simulator keeps running the request to its end or to cancellation, exactly as a real upstream
    that committed and was slow to answer."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {}).get("read")
        try:
            return await asyncio.wait_for(self.inner.handle_async_request(request), timeout)
        except TimeoutError:
            raise httpx.ReadTimeout("simulated read timeout", request=request) from None
        except httpx.HTTPError:
            raise
        except Exception as exc:
            # A simulator that drops the connection mid-response raises inside the app; on a socket the
            # client would see a truncated response.
            raise httpx.RemoteProtocolError(f"connection dropped: {exc}", request=request) from None


@pytest.fixture(autouse=True)
def no_real_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries keep their count and order; only the waiting between them is shortened."""
    monkeypatch.setattr(connectors.http, "backoff_delay", lambda attempt, policy, retry_after=None: 0.001)


@pytest.fixture
async def fault_gateway(database_url: str, sims: Sims) -> AsyncIterator[Gateway]:
    upstream = httpx.AsyncClient(
        transport=TimeoutASGITransport(sims.app), base_url=UPSTREAM, timeout=httpx.Timeout(READ_TIMEOUT)
    )
    settings = gateway_settings(
        database_url,
        reconciler_interval_seconds=0,  # the test drives the reconciler
        # Upstream 429 storms reach the connectors' retry policy directly; the governor's own reaction to
        # them (parking the budget for Retry-After) has its suites and would only slow this one down.
        rate_limit_enabled=False,
    )
    app = create_app(settings, http=upstream)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=GATEWAY)
        async with client:
            yield Gateway(client, upstream, app, sims, settings)
    await upstream.aclose()


@dataclass
class Target:
    """One provider's connection, its seed ids, and how its simulator names and stores writes."""

    provider: str
    key: str
    connection_id: str
    sim: Any
    customer_id: str
    revenue: str
    expense: str
    bank: str
    tax_rate_id: str | None
    write_keys: dict[str, str]  # kind -> simulator fault/counter key of the upstream write
    labels: dict[str, str]  # kind -> the gateway's label of that upstream call in the request log

    def count(self, kind: str, ref: str) -> int:
        return sum(1 for record in self.records(kind) if ref in repr(record))

    def records(self, kind: str) -> list[Any]:
        if self.provider == "sage_accounting":
            collection = {"invoice": "sales_invoices", "journal": "journals", "contact": "contacts"}[kind]
            return list(self.sim.state(collection))
        obj = {"invoice": "ARINVOICE", "journal": "GLBATCH", "contact": "CUSTOMER"}[kind]
        return list(self.sim.records("DEMO-CO", obj))

    def expire(self) -> None:
        if self.provider == "sage_accounting":
            self.sim.expire_tokens()
        else:
            self.sim.expire_sessions()

    def body(self, kind: str, ref: str) -> dict[str, Any]:
        if kind == "invoice":
            line: dict[str, Any] = {
                "description": f"Work {ref}",
                "account_id": self.revenue,
                "unit_price": "10.00",
            }
            if self.tax_rate_id:
                line |= {"tax_rate_id": self.tax_rate_id, "tax_amount": "0.00"}
            return {
                "contact_id": self.customer_id,
                "issue_date": "2026-11-02",
                "due_date": "2026-12-02",
                "reference": ref,
                "lines": [line],
            }
        if kind == "journal":
            return {
                "date": "2026-11-03",
                "reference": ref,
                "description": f"Accrual {ref}",
                "lines": [
                    {"account_id": self.expense, "debit": "5.00"},
                    {"account_id": self.bank, "credit": "5.00"},
                ],
            }
        return {"roles": ["customer"], "name": f"Fault Contact {ref}"}


async def sage_target(gateway: Gateway, key: str) -> Target:
    conn = await gateway.sage_connection(key)
    h = auth(key, conn["id"])
    customer = (await gateway.client.get("/v1/contacts?role=customer&page_size=1", headers=h)).json()["data"][
        0
    ]
    accounts = {
        a["code"]: a["id"]
        for a in (await gateway.client.get("/v1/accounts?page_size=200", headers=h)).json()["data"]
    }
    return Target(
        "sage_accounting",
        key,
        conn["id"],
        gateway.sims.sage,
        customer["id"],
        accounts["4000"],
        accounts["7500"],
        accounts["1200"],
        "GB_ZERO",
        {
            "invoice": "POST /v3.1/sales_invoices",
            "journal": "POST /v3.1/journals",
            "contact": "POST /v3.1/contacts",
        },
        {"invoice": "POST /sales_invoices", "journal": "POST /journals", "contact": "POST /contacts"},
    )


async def intacct_target(gateway: Gateway, key: str) -> Target:
    conn = await gateway.intacct_connection(key)
    return Target(
        "sage_intacct",
        key,
        conn["id"],
        gateway.sims.intacct,
        "customer:C-0001",
        "4000",
        "6000",
        "1000",
        None,
        {"invoice": "XML create_invoice", "journal": "XML create:GLBATCH", "contact": "XML create:CUSTOMER"},
        {"invoice": "XML create_invoice", "journal": "XML create:GLBATCH", "contact": "XML create:CUSTOMER"},
    )


@dataclass
class Ledger:
    """What the test client did: every call's request id, and every intended write."""

    request_ids: list[str] = field(default_factory=list)
    intended: list[tuple[Target, str, str]] = field(default_factory=list)
    outcomes: Counter[int] = field(default_factory=Counter)
    unsettled: list[tuple[Target, str, str, dict[str, Any], str | None, int]] = field(default_factory=list)
    history: dict[str, list[str]] = field(default_factory=dict)
    """ref -> what the client saw, call by call (status, problem code, key), for a failure's message."""


FAULTS = [
    ("none", 30),
    ("status_after_commit", 14),
    ("drop_after_commit", 10),
    ("timeout_after_commit", 6),
    ("status_429", 10),
    ("status_503", 6),
    ("expire", 8),
    ("expire_and_drop", 6),
    ("client_repeat", 10),
]


def arm(rng: random.Random, target: Target, kind: str, fault: str) -> None:
    match = target.write_keys[kind]
    times = rng.choice([1, 2, 3, 4, 8])
    if fault == "status_after_commit":
        status = rng.choice([500, 502, 503, 504, 524])
        target.sim.faults.add(Fault(match=match, kind="status_after_commit", status=status, times=times))
    elif fault == "drop_after_commit":
        target.sim.faults.add(Fault(match=match, kind="drop_after_commit", times=times))
    elif fault == "timeout_after_commit":
        delay = READ_TIMEOUT * 1.5
        target.sim.faults.add(
            Fault(match=match, kind="delay_after_commit", delay=delay, times=rng.choice([1, 2]))
        )
    elif fault == "status_429":
        target.sim.faults.add(Fault(match=match, kind="status", status=429, retry_after=0, times=times))
    elif fault == "status_503":
        target.sim.faults.add(Fault(match=match, kind="status", status=503, times=times))
    elif fault == "expire":
        target.expire()
    elif fault == "expire_and_drop":
        target.expire()
        target.sim.faults.add(Fault(match=match, kind="drop_after_commit", times=1))


async def write_once(
    gateway: Gateway, ledger: Ledger, target: Target, kind: str, body: dict[str, Any], key: str | None
) -> httpx.Response:
    path = {"invoice": "/v1/invoices", "journal": "/v1/journals", "contact": "/v1/contacts"}[kind]
    headers = auth(target.key, target.connection_id, **({"Idempotency-Key": key} if key else {}))
    r = await gateway.client.post(path, json=body, headers=headers)
    code = r.json().get("code") if r.status_code >= 400 else None
    ref = body.get("reference") or str(body.get("name", "?")).rsplit(" ", 1)[-1]
    ledger.history.setdefault(ref, []).append(f"{r.status_code} {code} key={key}")
    ledger.request_ids.append(r.headers["x-request-id"])
    ledger.outcomes[r.status_code] += 1
    assert r.status_code in (201, 409, 429, 502, 503, 504), r.text
    if r.status_code == 502:
        assert r.json()["code"] == "upstream_error", r.text
    return r


@dataclass(frozen=True)
class Planned:
    index: int
    target: Target
    kind: str
    ref: str
    fault: str
    key: str | None
    rng: random.Random


def plan(targets: list[Target], rng: random.Random) -> list[Planned]:
    """The seeded sequence of writes (their interleaving across clients varies, the writes do not)."""
    names, weights = zip(*FAULTS, strict=True)
    writes = []
    for i in range(WRITES):
        target = rng.choice(targets)
        kind = rng.choices(["invoice", "journal", "contact"], [5, 3, 2])[0]
        fault = rng.choices(names, weights)[0]
        key = f"fault-{SEED}-{i}" if rng.random() < 0.85 else None
        writes.append(Planned(i, target, kind, f"FT{i:04d}X", fault, key, random.Random(rng.random())))
    return writes


async def client(gateway: Gateway, queue: list[Planned], ledger: Ledger) -> None:
    """One API client: takes the next planned write, arms its fault, posts and retries like a careful client."""
    while queue:
        w = queue.pop(0)
        body = w.target.body(w.kind, w.ref)
        ledger.intended.append((w.target, w.kind, w.ref))
        arm(w.rng, w.target, w.kind, w.fault)
        key = w.key
        response = await write_once(gateway, ledger, w.target, w.kind, body, key)
        for attempt in range(12):
            if response.status_code == 201:
                break
            if key is None and response.status_code == 504:
                break  # no key: the client cannot retry safely; the reconciler finishes the write
            if response.status_code == 502 and key is not None:
                # A definite refusal (here: a session killed again right after its renewal by another
                # client's expiry fault): nothing was written, a new attempt needs a new key.
                key = f"{key}-r{attempt}"
            # 429/503: not executed, safe to resend (with or without a key); 504/409: retry with the key.
            response = await write_once(gateway, ledger, w.target, w.kind, body, key)
        if response.status_code != 201:
            ledger.unsettled.append((w.target, w.kind, w.ref, body, key, response.status_code))
            continue
        if w.fault == "client_repeat" and key:
            again = await write_once(gateway, ledger, w.target, w.kind, body, key)
            assert again.status_code == 201
            assert again.headers["idempotent-replayed"] == "true"
            assert again.content == response.content


async def run_sequence(gateway: Gateway, targets: list[Target], rng: random.Random, ledger: Ledger) -> None:
    writes = plan(targets, rng)
    # Credentials expiring under one client's feet while another has just renewed them would make the
    # connectors (rightly) give up on the grant: expiry faults run one client at a time, after the others.
    queue = [w for w in writes if "expire" not in w.fault]
    async with asyncio.TaskGroup() as clients:
        for _ in range(CLIENTS):
            clients.create_task(client(gateway, queue, ledger))
    await client(gateway, [w for w in writes if "expire" in w.fault], ledger)
    for target in targets:
        target.sim.faults.clear()


async def test_randomized_faults_never_post_twice_and_never_lose_a_write(fault_gateway: Gateway) -> None:
    gateway = fault_gateway
    rng = random.Random(SEED)
    key = await gateway.tenant()
    targets = [await sage_target(gateway, key)]
    if gateway.sims.intacct is not None:
        targets.append(await intacct_target(gateway, key))
    for target in targets:
        target.sim.faults.reset_counters()
    ledger = Ledger()

    await run_sequence(gateway, targets, rng, ledger)

    # Writes left unknown (no key, or retries exhausted) are finished by the background reconciler.
    reconciler = gateway.app.state.lb.extras["reconciler"]
    for _ in range(5):
        if not await reconciler.candidates():
            break
        await reconciler.run_once()
    left = await reconciler.candidates()
    assert not left, [(i.operation, i.state, i.attempts, i.last_error, i.idempotency_record_id) for i in left]
    async with gateway.app.state.lb.db.session() as session:
        states = Counter((await session.execute(select(WriteIntent.state))).scalars())
    assert set(states) <= {"succeeded", "failed"}, states
    # A keyed client that gave up earlier gets the final answer now.
    # Clients that gave up get the final answer now: a keyed retry, or (no key, refused before execution
    # with 429/503) a plain resend.
    for target, kind, _ref, body, idem, status in ledger.unsettled:
        if idem or status in (429, 502, 503):
            final = await write_once(gateway, ledger, target, kind, body, idem)
            assert final.status_code == 201, final.text

    # Exactly one upstream record per intended write: none twice, none lost.
    counts = Counter()
    wrong = []
    for target, kind, ref in ledger.intended:
        n = target.count(kind, ref)
        counts[n] += 1
        if n != 1:
            wrong.append((target.provider, kind, ref, n, ledger.history.get(ref)))
    assert counts == Counter({1: WRITES}), (counts, wrong)

    # The faults did happen (the sequence is not trivially calm).
    assert ledger.outcomes[504] > WRITES // 50, ledger.outcomes
    assert ledger.outcomes[429] > WRITES // 100, ledger.outcomes

    # The request log accounts for every call, and for every upstream write attempt the simulators saw.
    await gateway.flush_log()
    async with gateway.app.state.lb.db.session() as session:
        rows = list((await session.execute(select(RequestLog))).scalars())
    logged = {row.id for row in rows}
    assert set(ledger.request_ids) <= logged
    assert len(ledger.request_ids) == len(set(ledger.request_ids))
    for target in targets:
        for kind, sim_key in target.write_keys.items():
            label = target.labels[kind]
            attempts = sum(
                1
                for row in rows
                if row.connection_id == target.connection_id
                for call in row.upstream_calls
                if call["path"] == label
            )
            assert attempts == target.sim.faults.calls[sim_key], (target.provider, kind)
