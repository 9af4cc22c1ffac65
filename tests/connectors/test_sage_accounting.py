"""Sage Accounting connector against the simulator: the shared contract plus Sage-specific behaviour.

Tokens come from the real authorize → code → token flow of the simulator; every assertion on upstream
traffic reads the simulator's own counters or a spy on the HTTP transport.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from connectors.base import (
    CallOutcome,
    ConnectorContext,
    ListQuery,
    MemoryCredentialStore,
    Resource,
    StoredSecrets,
    TokenSet,
    UpstreamCall,
    WriteRequest,
    derive_guard,
)
from connectors.errors import (
    BusinessSelectionRequired,
    InvalidCredentials,
    NotFound,
    OutcomeUnknown,
    RateLimited,
    ReauthorizationRequired,
    UnsupportedField,
    UpstreamError,
    UpstreamUnavailable,
    ValidationFailed,
)
from connectors.http import RetryPolicy
from connectors.models import (
    Address,
    AddressType,
    ContactCreate,
    ContactRole,
    ContactUpdate,
    InvoiceCreate,
    InvoiceLineCreate,
    InvoiceStatus,
    InvoiceVoid,
    JournalCreate,
    JournalLineCreate,
    Status,
)
from connectors.sage_accounting import SageAccountingConnector, mapping
from connectors.sage_accounting.config import SageAccountingApp, SageAccountingSettings
from sandbox.faults import Fault
from sandbox.sage_accounting import SageAccountingSimulator, SimConfig
from tests.connectors.contract import ConnectorContract, ContractFixtures

BASE = "http://sage.test"
REDIRECT = "https://ledgerbridge.test/v1/oauth/callback"
FAST = RetryPolicy(base_delay=0.001, max_delay=0.005)
COLLECTIONS = {
    Resource.contacts: "contacts",
    Resource.invoices: "sales_invoices",
    Resource.journals: "journals",
}


def sage_app(**changes: Any) -> SageAccountingApp:
    fields: dict[str, Any] = {
        "client_id": "ledgerbridge-sandbox",
        "client_secret": "ledgerbridge-sandbox-secret",
        "authorize_url": f"{BASE}/oauth2/auth/central?filter=apiv3.1",
        "token_url": f"{BASE}/token",
        "revoke_url": f"{BASE}/revoke",
        "api_url": f"{BASE}/v3.1",
    }
    return SageAccountingApp.model_validate({**fields, **changes})


# --- test doubles -----------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: httpx.Headers
    body: bytes


class SpyTransport(httpx.AsyncBaseTransport):
    """Records every request reaching the simulator (and the order relative to store saves)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, events: list[tuple[str, str]]) -> None:
        self.inner = inner
        self.events = events
        self.seen: list[Seen] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        split = urlsplit(str(request.url))
        self.seen.append(Seen(request.method, split.path, parse_qs(split.query), request.headers, body))
        self.events.append(("request", request.headers.get("authorization", "")))
        return await self.inner.handle_async_request(request)

    def api(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        return [
            s
            for s in self.seen
            if s.path.startswith("/v3.1")
            and (method is None or s.method == method)
            and (path is None or s.path == f"/v3.1{path}")
        ]


class RecordingStore(MemoryCredentialStore):
    def __init__(self, tokens: TokenSet, events: list[tuple[str, str]]) -> None:
        super().__init__(tokens.secrets, tokens.expires_at)
        self.events = events

    async def save(self, values: Mapping[str, str], expires_at: dt.datetime | None) -> StoredSecrets:
        saved = await super().save(values, expires_at)
        self.events.append(("save", f"Bearer {values['access_token']}"))
        return saved

    def expire_in(self, seconds: float) -> None:
        self.current = StoredSecrets(
            self.current.values, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds), self.current.version
        )


@dataclass
class RecordingGate:
    calls: list[UpstreamCall] = field(default_factory=list)
    outcomes: list[CallOutcome] = field(default_factory=list)
    before_first_api_call: Any = None

    @asynccontextmanager
    async def _admit(self, call: UpstreamCall) -> AsyncIterator[None]:
        self.calls.append(call)
        hook, self.before_first_api_call = self.before_first_api_call, None
        if hook is not None and call.kind != "auth":
            await hook()
        yield

    def admit(self, call: UpstreamCall) -> AbstractAsyncContextManager[None]:
        return self._admit(call)

    async def record(self, call: UpstreamCall, outcome: CallOutcome) -> None:
        self.outcomes.append(outcome)


@dataclass
class Harness:
    sim: SageAccountingSimulator
    http: httpx.AsyncClient
    spy: SpyTransport
    events: list[tuple[str, str]]
    app: SageAccountingApp

    async def connect(self, user: str = "demo") -> TokenSet:
        """The real OAuth flow: authorize (PKCE S256) → redirect with code → code exchange."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        url = SageAccountingConnector.authorization_url(
            self.app, redirect_uri=REDIRECT, state="state-1", code_challenge=challenge
        )
        answer = await self.http.get(f"{url}&sim_user={user}")
        assert answer.status_code == 302
        callback = parse_qs(urlsplit(answer.headers["location"]).query)
        assert callback["state"] == ["state-1"]
        return await SageAccountingConnector.exchange_code(
            self.http, self.app, code=callback["code"][0], redirect_uri=REDIRECT, code_verifier=verifier
        )

    def connector(
        self, store: MemoryCredentialStore, business_id: str | None, gate: RecordingGate | None = None
    ) -> SageAccountingConnector:
        ctx = ConnectorContext(
            http=self.http,
            app=self.app,
            settings=SageAccountingSettings(business_id=business_id),
            store=store,
            gate=gate or RecordingGate(),
            connection_id="conn-test",
        )
        connector = SageAccountingConnector(ctx)
        connector.retry_policy = FAST
        return connector

    async def session(
        self, user: str = "demo", business_id: str | None = "lead"
    ) -> tuple[SageAccountingConnector, RecordingStore, RecordingGate]:
        store = RecordingStore(await self.connect(user), self.events)
        gate = RecordingGate()
        chosen = self.sim.lead_business_id(user) if business_id == "lead" else business_id
        return self.connector(store, chosen, gate), store, gate

    def refreshes(self) -> int:
        return self.sim.token_grants["refresh_token"]

    def calls(self, key: str) -> int:
        return self.sim.faults.calls[key]

    def count(self, collection: str, user: str = "demo") -> int:
        return len(self.sim.state(collection, self.sim.lead_business_id(user)))


@pytest.fixture(autouse=True)
def _no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level("DEBUG")
    yield
    assert "ledgerbridge-sandbox-secret" not in caplog.text and "Bearer " not in caplog.text


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    sim = SageAccountingSimulator(SimConfig(seed=7))
    events: list[tuple[str, str]] = []
    spy = SpyTransport(httpx.ASGITransport(app=sim), events)
    async with httpx.AsyncClient(transport=spy) as http:
        yield Harness(sim, http, spy, events, sage_app())


def ids_by(sim: SageAccountingSimulator, collection: str, **match: Any) -> list[str]:
    out = []
    for record in sim.state(collection):
        if all(record.get(k) == v for k, v in match.items()):
            out.append(record["id"])
    return out


def ledger(sim: SageAccountingSimulator, code: int) -> str:
    return ids_by(sim, "ledger_accounts", nominal_code=code)[0]


def customer(sim: SageAccountingSimulator) -> str:
    return ids_by(sim, "contacts", name="ABS Garages Ltd")[0]


def vendor(sim: SageAccountingSimulator) -> str:
    return ids_by(sim, "contacts", name="Thompsons Electricals")[0]


def invoice(sim: SageAccountingSimulator, **line: Any) -> InvoiceCreate:
    fields: dict[str, Any] = {
        "description": "Consulting",
        "account_id": ledger(sim, 4000),
        "unit_price": Decimal("100.00"),
        "tax_rate_id": "GB_STANDARD",
        "tax_amount": Decimal("20.00"),
        **line,
    }
    return InvoiceCreate(
        contact_id=customer(sim),
        issue_date=dt.date(2026, 11, 2),
        reference="INV-TEST",
        lines=[InvoiceLineCreate(**fields)],
    )


# --- the shared contract ----------------------------------------------------------------------------


class TestSageAccountingContract(ConnectorContract):
    @pytest.fixture
    async def connector(self, harness: Harness) -> SageAccountingConnector:
        connector, _, _ = await harness.session()
        return connector

    @pytest.fixture
    def fixtures(self, harness: Harness) -> ContractFixtures:
        sim = harness.sim
        return ContractFixtures(
            customer_id=customer(sim),
            revenue_account_id=ledger(sim, 4000),
            expense_account_id=ledger(sim, 7500),
            bank_account_id=ledger(sim, 1200),
            tax_rate_id="GB_STANDARD",
            tax_percent=Decimal(20),
        )

    @pytest.fixture
    def upstream_count(self, harness: Harness) -> Any:
        async def count(resource: Resource) -> int:
            return harness.count(COLLECTIONS[resource])

        return count


# --- OAuth -----------------------------------------------------------------------------------------


def test_authorization_url_keeps_filter_and_adds_pkce() -> None:
    url = SageAccountingConnector.authorization_url(
        sage_app(), redirect_uri=REDIRECT, state="s t", code_challenge="abc_-123"
    )
    split = urlsplit(url)
    assert f"{split.scheme}://{split.netloc}{split.path}" == f"{BASE}/oauth2/auth/central"
    assert parse_qs(split.query) == {
        "filter": ["apiv3.1"],
        "response_type": ["code"],
        "client_id": ["ledgerbridge-sandbox"],
        "redirect_uri": [REDIRECT],
        "scope": ["full_access"],
        "state": ["s t"],
        "code_challenge": ["abc_-123"],
        "code_challenge_method": ["S256"],
    }
    assert url.count("?") == 1
    assert "secret" not in url


async def test_code_exchange_stores_both_tokens_and_lifetime(harness: Harness) -> None:
    before = dt.datetime.now(dt.UTC)
    tokens = await harness.connect()
    assert set(tokens.secrets) == {
        "access_token",
        "refresh_token",
        "token_lifetime",
        "refresh_token_expires_at",
    }
    assert tokens.secrets["token_lifetime"] == "300"
    assert tokens.expires_at is not None
    assert (
        before + dt.timedelta(seconds=299)
        <= tokens.expires_at
        <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=300)
    )
    # §2.1: the code's region prefix ("GB/…") tells the country.
    assert tokens.settings == {"country": "GB"}
    assert harness.sim.token_grants["authorization_code"] == 1
    assert tokens.secrets["access_token"] not in repr(tokens)


async def test_reused_or_unverified_code_is_invalid_credentials(harness: Harness) -> None:
    url = SageAccountingConnector.authorization_url(
        harness.app, redirect_uri=REDIRECT, state="s", code_challenge="x" * 43
    )
    answer = await harness.http.get(url)
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    with pytest.raises(InvalidCredentials) as caught:
        await SageAccountingConnector.exchange_code(
            harness.http, harness.app, code=code, redirect_uri=REDIRECT, code_verifier="wrong-verifier"
        )
    assert caught.value.upstream is not None and caught.value.upstream.status == 400
    assert code not in str(caught.value)


async def test_bad_client_secret_is_an_upstream_error_not_a_dead_grant(harness: Harness) -> None:
    harness.app = sage_app(client_secret="not-the-secret")
    with pytest.raises(UpstreamError) as caught:
        await harness.connect()
    assert not isinstance(caught.value, InvalidCredentials)
    assert "not-the-secret" not in str(caught.value)


# --- token lifecycle ---------------------------------------------------------------------------------


async def test_refreshes_proactively_inside_the_margin_only(harness: Harness) -> None:
    connector, store, _ = await harness.session()
    store.expire_in(61)  # 300 s tokens: margin = min(300, 20 %) = 60 s
    await connector.list_tax_rates(ListQuery())
    assert harness.refreshes() == 0
    store.expire_in(59)
    old = store.current
    await connector.list_tax_rates(ListQuery())
    assert harness.refreshes() == 1
    assert store.current.version == old.version + 1
    assert store.current.values["refresh_token"] != old.values["refresh_token"]
    assert store.current.expires_at is not None and store.current.expires_at > old.expires_at  # type: ignore[operator]


async def test_hundred_concurrent_calls_with_an_expired_token_refresh_once(harness: Harness) -> None:
    connector, store, _ = await harness.session()
    harness.sim.expire_tokens()
    store.expire_in(-1)
    # Real suspensions (the in-process transport never yields otherwise), so all 100 calls overlap.
    harness.sim.faults.add(Fault("POST /token", "delay", delay=0.05, times=-1))
    harness.sim.update_config(latency=0.005)
    pages = await asyncio.gather(*(connector.list_tax_rates(ListQuery()) for _ in range(100)))
    assert all(page.data for page in pages)
    assert harness.sim.faults.max_inflight > 1
    assert harness.refreshes() == 1
    assert harness.calls("POST /token grant_type=refresh_token") == 1
    assert store.saves == 1


async def test_a_401_refreshes_once_and_retries(harness: Harness) -> None:
    connector, store, _ = await harness.session()
    harness.sim.expire_tokens()  # the store still believes its token is fresh
    page = await connector.list_contacts(ListQuery())
    assert page.data
    assert harness.refreshes() == 1
    assert harness.calls("GET /v3.1/contacts") == 2
    assert store.reauthorization_reason is None


async def test_a_401_after_someone_else_refreshed_reuses_their_token(harness: Harness) -> None:
    connector, store, gate = await harness.session()
    other = harness.connector(store, connector.settings.business_id)

    async def concurrent_refresh() -> None:
        # Another process refreshes after our request was built with the old token.
        harness.sim.expire_tokens()
        store.expire_in(-1)
        await other.list_tax_rates(ListQuery())

    gate.before_first_api_call = concurrent_refresh
    await connector.list_contacts(ListQuery())
    assert harness.refreshes() == 1  # the 401 did not force a second refresh


async def test_a_401_after_a_refresh_requires_reauthorization(harness: Harness) -> None:
    connector, store, _ = await harness.session()
    harness.sim.faults.add(Fault("GET /v3.1/contacts", "status", status=401, times=2))
    with pytest.raises(ReauthorizationRequired):
        await connector.list_contacts(ListQuery())
    assert harness.refreshes() == 1
    assert store.reauthorization_reason is not None


async def test_rotated_refresh_token_is_saved_before_the_new_access_token_is_used(harness: Harness) -> None:
    connector, store, _ = await harness.session()
    old_refresh = store.current.values["refresh_token"]
    store.expire_in(10)
    harness.events.clear()
    await connector.list_tax_rates(ListQuery())
    new_bearer = f"Bearer {store.current.values['access_token']}"
    assert store.current.values["refresh_token"] != old_refresh
    uses = [i for i, event in enumerate(harness.events) if event == ("request", new_bearer)]
    assert uses and harness.events.index(("save", new_bearer)) < uses[0]
    # The old refresh token is spent (§2.3: single use), so only the saved one can continue the grant.
    assert harness.sim.oauth.refresh[old_refresh].state == "used"
    assert store.current.values["token_lifetime"] == "300"


async def test_invalid_grant_flags_the_connection(harness: Harness) -> None:
    connector, store, _ = await harness.session()
    harness.sim.oauth.revoke(store.current.values["refresh_token"])
    store.expire_in(-1)
    with pytest.raises(ReauthorizationRequired) as caught:
        await connector.list_contacts(ListQuery())
    assert store.reauthorization_reason is not None and "invalid_grant" in store.reauthorization_reason
    assert harness.spy.api() == []
    assert store.current.values["refresh_token"] not in str(caught.value)


async def test_a_failed_refresh_does_not_brick_the_connection(harness: Harness) -> None:
    connector, store, _ = await harness.session()
    refresh_token = store.current.values["refresh_token"]
    # The token endpoint fails both attempts (not processed): the access token still has 40 s to live.
    harness.sim.faults.add(Fault("POST /token", "status", status=503, times=2))
    store.expire_in(40)
    assert (await connector.list_tax_rates(ListQuery())).data
    assert store.reauthorization_reason is None and store.saves == 0
    assert store.current.values["refresh_token"] == refresh_token
    # Expired for real while the endpoint is down: a retryable error, the grant is kept.
    harness.sim.faults.add(Fault("POST /token", "status", status=503, times=2))
    store.expire_in(-1)
    with pytest.raises(UpstreamUnavailable):
        await connector.list_tax_rates(ListQuery())
    assert store.reauthorization_reason is None
    # Once the endpoint is back the kept refresh token still works.
    assert (await connector.list_tax_rates(ListQuery())).data
    assert store.saves == 1


async def test_a_lost_refresh_answer_is_retried_with_the_same_refresh_token(harness: Harness) -> None:
    connector, store, _ = await harness.session()
    # The first answer is lost before Sage processed it (timeout-like 504 without commit).
    harness.sim.faults.add(Fault("POST /token", "status", status=504, times=1))
    store.expire_in(-1)
    assert (await connector.list_tax_rates(ListQuery())).data
    # One code exchange, then the refresh sent twice with the same refresh token; one rotation saved.
    assert harness.calls("POST /token") == 3 and harness.refreshes() == 1 and store.saves == 1


# --- businesses -------------------------------------------------------------------------------------


async def test_x_business_on_every_api_call_but_businesses(harness: Harness) -> None:
    connector, _, gate = await harness.session()
    business = connector.settings.business_id
    await connector.check()
    await connector.list_contacts(ListQuery())
    await connector.create_journal(
        JournalCreate(
            date=dt.date(2026, 1, 5),
            reference="J-1",
            lines=[
                JournalLineCreate(account_id=ledger(harness.sim, 7500), debit=Decimal("5.00")),
                JournalLineCreate(account_id=ledger(harness.sim, 1200), credit=Decimal("5.00")),
            ],
        ),
        WriteRequest("jx"),
    )
    for seen in harness.spy.api():
        if seen.path == "/v3.1/businesses":
            assert "x-business" not in seen.headers
        else:
            assert seen.headers["x-business"] == business
        assert seen.headers["accept"] == "application/json"
    post = harness.spy.api("POST", "/journals")[0]
    assert post.headers["content-type"] == "application/json"
    labels = {(c.label, c.kind, c.scope) for c in gate.calls}
    assert ("GET /businesses", "read", None) in labels
    assert ("GET /contacts", "read", business) in labels
    assert ("POST /journals", "write", business) in labels
    write = next(c for c in gate.calls if c.label == "POST /journals")
    assert write.provider == "sage_accounting" and write.request_body == post.body


async def test_no_business_selected_means_no_call(harness: Harness) -> None:
    connector, _, _ = await harness.session(business_id=None)
    with pytest.raises(BusinessSelectionRequired):
        await connector.list_contacts(ListQuery())
    with pytest.raises(BusinessSelectionRequired):
        await connector.create_invoice(invoice(harness.sim), WriteRequest("x"))
    assert harness.spy.api() == []


async def test_check_discovers_several_businesses(harness: Harness) -> None:
    connector, _, _ = await harness.session(user="multi", business_id=None)
    result = await connector.check()
    assert result.ok
    assert result.settings["business_id"] is None
    assert sorted(b["name"] for b in result.settings["businesses"]) == [
        "Multi Holdings Ltd",
        "Multi Subsidiary Ltd",
    ]
    assert {b["id"] for b in result.settings["businesses"]} == set(harness.sim.business_ids("multi"))


async def test_check_selects_the_only_business(harness: Harness) -> None:
    connector, _, _ = await harness.session(business_id=None)
    result = await connector.check()
    assert result.ok and result.settings["business_id"] == harness.sim.lead_business_id()
    assert result.settings["businesses"] == [
        {"id": harness.sim.lead_business_id(), "name": "Demo Trading Ltd"}
    ]


async def test_check_reports_a_business_the_user_lost(harness: Harness) -> None:
    foreign = harness.sim.business_ids("multi")[0]
    connector, _, _ = await harness.session(business_id=foreign)
    result = await connector.check()
    assert not result.ok
    assert foreign in result.detail
    assert result.settings["business_id"] == foreign
    with pytest.raises(UpstreamError) as caught:
        await connector.list_contacts(ListQuery())
    assert caught.value.upstream is not None and caught.value.upstream.status == 403
    assert caught.value.upstream.errors[0].code == "MultiUserAccessDenied"


class OtherBusinessEcho(httpx.AsyncBaseTransport):
    """An upstream that answers for another business than the one asked for."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if "x-business" in response.headers:
            response.headers["x-business"] = "f" * 32
        return response


async def test_an_answer_for_another_business_is_refused(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    harness.spy.inner = OtherBusinessEcho(harness.spy.inner)
    with pytest.raises(UpstreamError) as caught:
        await connector.list_contacts(ListQuery())
    assert "another business" in caught.value.detail


# --- rate limits and unknown outcomes ---------------------------------------------------------------


async def test_429_on_a_read_is_retried_after_retry_after(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    harness.sim.faults.add(Fault("GET /v3.1/contacts", "status", status=429, retry_after=1, times=1))
    harness.sim.faults.add(Fault("GET /v3.1/contacts", "status", status=429, retry_after=0, times=1))
    started = time.monotonic()
    assert (await connector.list_contacts(ListQuery())).data
    assert time.monotonic() - started >= 1.0
    assert harness.calls("GET /v3.1/contacts") == 3


async def test_429_storm_is_rate_limited(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    harness.sim.faults.add(Fault("GET /v3.1/contacts", "status", status=429, retry_after=0, times=-1))
    with pytest.raises(RateLimited):
        await connector.list_contacts(ListQuery())
    assert harness.calls("GET /v3.1/contacts") == FAST.max_attempts
    harness.sim.faults.clear()
    harness.sim.faults.add(Fault("GET /v3.1/tax_rates", "status", status=429, retry_after=60, times=-1))
    with pytest.raises(RateLimited) as caught:
        await connector.list_tax_rates(ListQuery())
    assert caught.value.retry_after == 60
    assert harness.calls("GET /v3.1/tax_rates") == 1


async def test_500_after_commit_is_resent_with_the_same_guard(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    before = harness.count("sales_invoices")
    harness.sim.faults.add(Fault("POST /v3.1/sales_invoices", "status_after_commit", status=500, times=1))
    created = await connector.create_invoice(invoice(harness.sim), WriteRequest("guard-500"))
    posts = harness.spy.api("POST", "/sales_invoices")
    assert len(posts) == 2
    guards = {json.loads(p.body)["sales_invoice"]["idempotency_id"] for p in posts}
    assert guards == {derive_guard("guard-500")}
    assert harness.count("sales_invoices") == before + 1
    assert created.status == InvoiceStatus.open


async def test_dropped_write_is_outcome_unknown_then_resumed_exactly_once(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    before = harness.count("sales_invoices")
    harness.sim.faults.add(Fault("POST /v3.1/sales_invoices", "drop_after_commit", times=-1))
    data = invoice(harness.sim)
    with pytest.raises(OutcomeUnknown):
        await connector.create_invoice(data, WriteRequest("guard-drop"))
    assert harness.calls("POST /v3.1/sales_invoices") == FAST.max_attempts
    harness.sim.faults.clear()
    again = await connector.create_invoice(data, WriteRequest("guard-drop"))
    assert harness.count("sales_invoices") == before + 1
    assert again.id == harness.sim.state("sales_invoices")[-1]["id"]


# --- writes and validation --------------------------------------------------------------------------


async def test_unsupported_fields_are_refused_without_any_call(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    connected = len(harness.spy.seen)
    with pytest.raises(UnsupportedField) as caught:
        await connector.create_invoice(invoice(harness.sim, location_id="LOC-1"), WriteRequest("u1"))
    assert [p.field for p in caught.value.problems] == ["lines[0].location_id"]
    journal = JournalCreate(
        date=dt.date(2026, 1, 5),
        reference="J-2",
        currency="EUR",
        lines=[
            JournalLineCreate(account_id="a", debit=Decimal("1.00"), department_id="D1"),
            JournalLineCreate(account_id="b", credit=Decimal("1.00")),
        ],
    )
    with pytest.raises(UnsupportedField) as caught:
        await connector.create_journal(journal, WriteRequest("u2"))
    assert {p.field for p in caught.value.problems} == {"currency", "lines[0].department_id"}
    both = ContactCreate(roles=[ContactRole.customer, ContactRole.supplier], name="Both Ltd")
    with pytest.raises(UnsupportedField) as caught:
        await connector.create_contact(both, WriteRequest("u3"))
    assert caught.value.problems[0].field == "roles"
    assert len(harness.spy.seen) == connected


async def test_invoice_for_a_supplier_is_refused_before_the_write(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    data = invoice(harness.sim).model_copy(update={"contact_id": vendor(harness.sim)})
    with pytest.raises(ValidationFailed) as caught:
        await connector.create_invoice(data, WriteRequest("v1"))
    assert [(p.field, p.code) for p in caught.value.problems] == [("contact_id", "not_a_customer")]
    assert harness.spy.api("POST") == []
    assert len(harness.spy.api("GET")) == 1


async def test_taxed_line_without_tax_amount_is_refused_zero_rated_is_sent(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    with pytest.raises(ValidationFailed) as caught:
        await connector.create_invoice(invoice(harness.sim, tax_amount=None), WriteRequest("t1"))
    assert [(p.field, p.code) for p in caught.value.problems] == [("lines[0].tax_amount", "required")]
    assert harness.spy.api("POST") == []
    zero = await connector.create_invoice(
        invoice(harness.sim, tax_rate_id="GB_ZERO", tax_amount=None), WriteRequest("t2")
    )
    assert zero.tax_amount == 0
    sent = json.loads(harness.spy.api("POST", "/sales_invoices")[0].body)["sales_invoice"]["invoice_lines"][0]
    assert "tax_amount" not in sent  # never computed by the connector (factcheck §1)
    assert sent["unit_price"] == "100.00" and sent["quantity"] == "1"


async def test_a_line_without_tax_rate_is_refused(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    with pytest.raises(ValidationFailed) as caught:
        await connector.create_invoice(invoice(harness.sim, tax_rate_id=None), WriteRequest("t3"))
    assert caught.value.problems[0].field == "lines[0].tax_rate_id"


async def test_validate_invoice_reports_every_problem_in_three_reads(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    sim = harness.sim
    data = InvoiceCreate(
        contact_id=vendor(sim),
        issue_date=dt.date(2026, 11, 2),
        reference="R" * 30,
        lines=[
            InvoiceLineCreate(
                description="a", account_id="NO-SUCH", unit_price=Decimal(1), tax_rate_id="GB_ZERO"
            ),
            InvoiceLineCreate(
                description="b",
                account_id=ledger(sim, 1200),
                unit_price=Decimal(1),
                tax_rate_id="GB_STANDARD",
            ),
            InvoiceLineCreate(
                description="c",
                account_id=ledger(sim, 4000),
                unit_price=Decimal(1),
                tax_rate_id="XX_NONE",
                tax_amount=Decimal("0.20"),
                location_id="L1",
            ),
        ],
    )
    before = harness.count("sales_invoices")
    problems = await connector.validate_invoice(data)
    assert {(p.field, p.code) for p in problems} == {
        ("reference", "too_long"),
        ("contact_id", "not_a_customer"),
        ("lines[0].account_id", "not_found"),
        ("lines[1].account_id", "not_allowed"),
        ("lines[1].tax_amount", "required"),
        ("lines[2].tax_rate_id", "not_found"),
        ("lines[2].location_id", "unsupported_field"),
    }
    assert len(harness.spy.api()) == 3 and harness.spy.api("POST") == []
    assert harness.count("sales_invoices") == before


async def test_validate_journal(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    sim = harness.sim
    good = JournalCreate(
        date=dt.date(2026, 1, 5),
        reference="J-3",
        lines=[
            JournalLineCreate(account_id=ledger(sim, 7500), debit=Decimal("10.01")),
            JournalLineCreate(account_id=ledger(sim, 1200), credit=Decimal("10.01")),
        ],
    )
    assert await connector.validate_journal(good) == []
    bad = good.model_copy(
        update={
            "reference": None,
            "number": "7",
            "lines": [
                good.lines[0].model_copy(update={"account_id": "GONE"}),
                good.lines[1].model_copy(update={"location_id": "L"}),
            ],
        }
    )
    problems = await connector.validate_journal(bad)
    assert {(p.field, p.code) for p in problems} == {
        ("reference", "required"),
        ("number", "unsupported_field"),
        ("lines[0].account_id", "not_found"),
        ("lines[1].location_id", "unsupported_field"),
    }
    assert harness.spy.api("POST") == []


async def test_upstream_422_maps_to_validation_problems(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    data = invoice(harness.sim, account_id=ledger(harness.sim, 1200))  # not visible in sales
    with pytest.raises(ValidationFailed) as caught:
        await connector.create_invoice(data, WriteRequest("422"))
    error = caught.value
    assert error.upstream is not None and error.upstream.status == 422 and error.upstream.request_id
    assert error.upstream.errors[0].code == "RecordInvalid"
    assert [p.field for p in error.problems] == ["lines.account_id"]


async def test_void_is_an_ensure(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    created = await connector.create_invoice(invoice(harness.sim), WriteRequest("void-me"))
    voided = await connector.void_invoice(
        created.id, InvoiceVoid(reason="Raised by mistake"), WriteRequest("v")
    )
    assert voided.status == InvoiceStatus.void
    delete = harness.spy.api("DELETE")[0]
    assert delete.query["void_reason"] == ["Raised by mistake"]
    assert json.loads(delete.body) == {"void_reason": "Raised by mistake"}
    again = await connector.void_invoice(
        created.id, InvoiceVoid(reason="Raised by mistake"), WriteRequest("v")
    )
    assert again.status == InvoiceStatus.void and len(harness.spy.api("DELETE")) == 1
    with pytest.raises(NotFound):
        await connector.void_invoice("f" * 32, InvoiceVoid(reason="x"), WriteRequest("v2"))


async def test_contact_create_and_update(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    created = await connector.create_contact(
        ContactCreate(
            roles=[ContactRole.supplier],
            name="Paper Supplies Ltd",
            reference="PAP001",
            email="ap@paper.example",
            phone="0113 000000",
            tax_number="GB123456789",
            addresses=[Address(type=AddressType.billing, line1="1 Mill Lane", city="Leeds", country="GB")],
        ),
        WriteRequest("c1"),
    )
    assert created.roles == [ContactRole.supplier] and created.email == "ap@paper.example"
    sent = json.loads(harness.spy.api("POST", "/contacts")[0].body)["contact"]
    assert sent["contact_type_ids"] == ["VENDOR"]
    assert sent["main_contact_person"]["telephone"] == "0113 000000"
    assert sent["main_address"] == {
        "address_line_1": "1 Mill Lane",
        "city": "Leeds",
        "country_id": "GB",
        "address_type_id": "ACCOUNTS",
    }
    updated = await connector.update_contact(
        created.id, ContactUpdate(email="new@paper.example"), WriteRequest("c2")
    )
    assert updated.email == "new@paper.example" and updated.name == "Paper Supplies Ltd"
    put = json.loads(harness.spy.api("PUT")[0].body)["contact"]
    assert put == {"idempotency_id": derive_guard("c2"), "main_contact_person": put["main_contact_person"]}
    with pytest.raises(UnsupportedField):
        await connector.update_contact(created.id, ContactUpdate(status=Status.inactive), WriteRequest("c3"))
    with pytest.raises(ValidationFailed) as caught:
        await connector.create_contact(
            ContactCreate(roles=[ContactRole.customer], name="X", reference="R" * 11), WriteRequest("c4")
        )
    assert caught.value.problems[0].field == "reference"


# --- lists ------------------------------------------------------------------------------------------


async def test_lists_translate_filters_and_take_one_call_per_page(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    customers = await connector.list_contacts(ListQuery(filters={"role": "customer"}, include_raw=True))
    assert customers.data and all(c.roles == [ContactRole.customer] for c in customers.data)
    assert all(c.raw and c.raw["id"] == c.id for c in customers.data)
    sent = harness.spy.api("GET", "/contacts")[-1].query
    assert sent["contact_type_id"] == ["CUSTOMER"] and sent["attributes"] == ["all"]
    found = await connector.list_contacts(ListQuery(filters={"email": "fred@briant.example"}))
    assert [c.name for c in found.data] == ["Fred Briant"]
    named = await connector.list_contacts(ListQuery(filters={"name": "golf"}))
    assert [c.name for c in named.data] == ["County Golf Supplies"]
    future = await connector.list_contacts(ListQuery(updated_since=dt.datetime(2099, 1, 1, tzinfo=dt.UTC)))
    assert future.data == []
    assert harness.spy.api("GET", "/contacts")[-1].query["updated_or_created_since"] == [
        "2099-01-01T00:00:00Z"
    ]
    big = await connector.list_accounts(ListQuery(page_size=1000))
    assert harness.spy.api("GET", "/ledger_accounts")[-1].query["items_per_page"] == ["200"]
    assert len(big.data) == len(harness.sim.state("ledger_accounts"))
    with pytest.raises(ValidationFailed):
        await connector.list_invoices(ListQuery(filters={"status": "overdue"}))
    with pytest.raises(ValidationFailed):
        await connector.list_contacts(ListQuery(filters={"phone": "1"}))


async def test_invoice_filters_and_cursor_keep_the_query(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    for n in range(3):
        await connector.create_invoice(invoice(harness.sim), WriteRequest(f"page-{n}"))
    draft_free = await connector.list_invoices(
        ListQuery(filters={"status": "open", "contact_id": customer(harness.sim)}, page_size=2)
    )
    assert len(draft_free.data) == 2 and draft_free.next_cursor
    calls = len(harness.spy.api())
    rest = await connector.list_invoices(ListQuery(cursor=draft_free.next_cursor))
    assert len(rest.data) == 1 and rest.next_cursor is None
    assert len(harness.spy.api()) == calls + 1
    query = harness.spy.api("GET", "/sales_invoices")[-1].query
    assert query["status_id"] == ["UNPAID"] and query["page"] == ["2"]
    assert query["attributes"] == [
        mapping.LIST_ATTRIBUTES["sales_invoices"]
    ]  # wire §4.2: only what is mapped
    assert harness.spy.api("GET", "/sales_invoices")[-1].path == "/v3.1/sales_invoices"
    none = await connector.list_invoices(ListQuery(filters={"status": "void"}))
    assert none.data == []


async def test_forged_cursor_is_refused(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    forged = base64.urlsafe_b64encode(b"/ledger_accounts?page=1").decode()
    with pytest.raises(ValidationFailed):
        await connector.list_contacts(ListQuery(cursor=forged))
    with pytest.raises(ValidationFailed):
        await connector.list_contacts(ListQuery(cursor="!!!"))
    assert harness.spy.api() == []


async def test_unknown_ids_are_not_found(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    for read in (connector.get_invoice, connector.get_journal, connector.get_contact):
        with pytest.raises(NotFound) as caught:
            await read("../businesses")
        assert caught.value.upstream is not None and caught.value.upstream.status == 404
    assert all(s.path.count("/") == 3 for s in harness.spy.api())


# --- proxy and revoke -------------------------------------------------------------------------------


async def test_proxy_get_and_post(harness: Harness) -> None:
    connector, store, _ = await harness.session()
    answer = await connector.proxy(
        "GET",
        "contacts",
        query="items_per_page=1",
        headers={"Authorization": "Bearer caller", "Cookie": "a=b"},
        body=b"",
    )
    assert answer.status == 200 and json.loads(answer.body)["$itemsPerPage"] == 1
    assert answer.content_type == "application/json"
    assert answer.headers["x-business"] == connector.settings.business_id
    assert answer.upstream_request_id and answer.headers["x_request_id"] == answer.upstream_request_id
    assert set(answer.headers) <= {
        "content-type",
        "x-business",
        "x_request_id",
        "retry-after",
        "link",
        "etag",
        "last-modified",
    }
    seen = harness.spy.api("GET", "/contacts")[-1]
    assert seen.headers["authorization"] == f"Bearer {store.current.values['access_token']}"
    assert "cookie" not in seen.headers
    created = await connector.proxy(
        "POST",
        "contacts",
        query="",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"contact": {"name": "Proxy Ltd", "contact_type_ids": ["CUSTOMER"]}}).encode(),
    )
    assert created.status == 201 and json.loads(created.body)["name"] == "Proxy Ltd"
    missing = await connector.proxy("GET", "contacts/" + "0" * 32, query="", headers={}, body=b"")
    assert missing.status == 404 and json.loads(missing.body)[0]["$dataCode"] == "RecordNotFound"
    harness.sim.expire_tokens()
    again = await connector.proxy("GET", "tax_rates", query="", headers={}, body=b"")
    assert again.status == 200 and harness.refreshes() == 1


class Redirecting(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/moved"):
            return httpx.Response(302, headers={"location": "http://elsewhere.test/steal"})
        return await self.inner.handle_async_request(request)


async def test_proxy_does_not_follow_redirects(harness: Harness) -> None:
    connector, _, _ = await harness.session()
    harness.spy.inner = Redirecting(harness.spy.inner)
    answer = await connector.proxy("GET", "moved", query="", headers={}, body=b"")
    assert answer.status == 302
    assert all(seen.path != "/steal" for seen in harness.spy.seen)


async def test_revoke_kills_the_refresh_token(harness: Harness) -> None:
    connector, store, _ = await harness.session()
    await connector.revoke()
    assert harness.calls("POST /revoke") == 1
    store.expire_in(-1)
    with pytest.raises(ReauthorizationRequired):
        await connector.list_contacts(ListQuery())
