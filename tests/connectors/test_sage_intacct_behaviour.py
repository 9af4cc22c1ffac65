"""Sage Intacct connector behaviour on the simulator: sessions, routing, batching, writes, faults, proxy."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from lxml import etree

from connectors.base import ListQuery, WriteRequest, derive_guard
from connectors.errors import (
    InvalidCredentials,
    OutcomeUnknown,
    ReauthorizationRequired,
    UnsupportedField,
    UnsupportedOperation,
    UpstreamError,
    ValidationFailed,
)
from connectors.models import (
    ContactCreate,
    ContactRole,
    ContactUpdate,
    InvoiceCreate,
    InvoiceLineCreate,
    JournalCreate,
    JournalLineCreate,
)
from connectors.sage_intacct import mapping as m
from connectors.sage_intacct import session as session_module
from connectors.sage_intacct.config import SageIntacctRestCredentials
from connectors.sage_intacct.connector import SageIntacctConnector
from connectors.sage_intacct.xml import parse_response
from sandbox.faults import Fault
from sandbox.sage_intacct.xmlio import CREATE_INVOICE_XSD
from tests.connectors.test_sage_intacct import (
    PASSWORD,
    REST_SECRET,
    SENDER_PASSWORD,
    FakeClock,
    Harness,
    client_for,
    credentials,
    make_app,
    make_harness,
    make_sim,
)

GETAPISESSION = "XML getAPISession"


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = await make_harness()
    yield h
    await h.http.aclose()


def invoice(reference: str = "INV-REF", **line: Any) -> InvoiceCreate:
    return InvoiceCreate(
        contact_id="customer:C-0002",
        issue_date=dt.date(2026, 11, 2),
        due_date=dt.date(2026, 12, 2),
        reference=reference,
        memo="Services",
        lines=[
            InvoiceLineCreate(
                description="Consulting", account_id="4000", unit_price=Decimal("120.50"), **line
            )
        ],
    )


def journal(location: str | None = None, reference: str = "JNL-1") -> JournalCreate:
    return JournalCreate(
        date=dt.date(2026, 11, 3),
        reference=reference,
        description="Accrual",
        lines=[
            JournalLineCreate(
                account_id="6000", debit=Decimal("1450.80"), department_id="ADMIN", location_id=location
            ),
            JournalLineCreate(account_id="2000", credit=Decimal("1450.80"), location_id=location),
        ],
    )


def guard() -> WriteRequest:
    return WriteRequest(str(uuid.uuid4()))


# --- connection -----------------------------------------------------------------------------------------


async def test_establish_stores_session_and_settings() -> None:
    sim = make_sim()
    async with client_for(sim) as http:
        tokens = await SageIntacctConnector.establish(
            http, make_app(), credentials("DEMO-ME", "US1", rest=True)
        )
    assert tokens.settings == {
        "company_id": "DEMO-ME",
        "user_id": "demo-user",
        "entity_id": "US1",
        "location_id": "US1",
        "rest_enabled": True,
        "journal_symbol": "GJ",
    }
    secrets = tokens.secrets
    assert secrets["user_password"] == PASSWORD and secrets["rest_client_secret"] == REST_SECRET
    assert secrets["session_endpoint"] == "http://intacct.sim/ia/xml/xmlgw.phtml"
    assert {"session_id", "rest_access_token", "rest_refresh_token", "rest_access_token_expires_at"} <= set(
        secrets
    )
    assert tokens.expires_at is not None
    remaining = tokens.expires_at - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=11, minutes=59) < remaining <= dt.timedelta(hours=12)  # simulator: 12 h
    assert "demo-password" not in repr(tokens) and secrets["session_id"] not in repr(tokens)


@pytest.mark.parametrize(
    "creds",
    [
        credentials(password="wrong"),
        credentials(company="NO-SUCH-CO"),
        credentials("DEMO-ME", entity="XX9"),
    ],
    ids=["password", "company", "entity"],
)
async def test_establish_rejects_bad_credentials(creds: object) -> None:
    sim = make_sim()
    async with client_for(sim) as http:
        with pytest.raises(InvalidCredentials) as caught:
            await SageIntacctConnector.establish(http, make_app(), creds)  # type: ignore[arg-type]
    assert caught.value.status == 422
    assert caught.value.upstream is not None and caught.value.upstream.errors[0].code == "XL03000006"
    assert "wrong" not in str(caught.value)


async def test_establish_rejects_bad_rest_client() -> None:
    sim = make_sim()
    async with client_for(sim) as http:
        rest = SageIntacctRestCredentials(client_id="sandbox-rest-client", client_secret="nope")
        bad = credentials().model_copy(update={"rest": rest})
        with pytest.raises(InvalidCredentials, match="REST"):
            await SageIntacctConnector.establish(http, make_app(), bad)


async def test_wrong_sender_is_a_gateway_configuration_error() -> None:
    sim = make_sim()
    async with client_for(sim) as http:
        with pytest.raises(UpstreamError, match="SENDER_ID") as caught:
            await SageIntacctConnector.establish(http, make_app(sender_password="bad"), credentials())
    assert not isinstance(caught.value, InvalidCredentials)
    assert caught.value.upstream is not None and caught.value.upstream.errors[0].code == "XL03000006"


async def test_check(harness: Harness) -> None:
    result = await harness.connector().check()
    assert result.ok and "DEMO-CO" in result.detail


# --- session lifecycle ----------------------------------------------------------------------------------


async def test_one_session_for_sequential_and_concurrent_calls(harness: Harness) -> None:
    query = ListQuery(page_size=1)
    for _ in range(100):
        await harness.connector().list_accounts(query)
    await asyncio.gather(*(harness.connector().list_accounts(query) for _ in range(50)))
    assert harness.calls(GETAPISESSION) == 1  # the one of establish()
    assert harness.calls("XML query:GLACCOUNT") == 150
    assert harness.store.saves == 0  # the sliding expiry moved by far less than a quarter of 12 h


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(session_module, "now", fake.datetime)
    return fake


async def test_session_is_renewed_before_it_expires(clock: FakeClock) -> None:
    sim = make_sim(clock=clock, session_ttl=600.0)
    h = await make_harness(sim)
    first = h.store.current.values["session_id"]
    assert h.store.current.values["session_lifetime"] == "600"
    clock.advance(100)
    await h.connector().list_accounts(ListQuery(page_size=1))
    assert h.calls(GETAPISESSION) == 1 and h.store.saves == 0  # slid, not worth a save yet
    clock.advance(200)  # 300 s since the stored expiry was written: more than a quarter of 600 s
    await h.connector().list_accounts(ListQuery(page_size=1))
    assert h.calls(GETAPISESSION) == 1 and h.store.saves == 1
    assert h.store.current.values["session_id"] == first
    assert h.store.current.expires_at == clock.datetime() + dt.timedelta(seconds=600)
    clock.advance(500)  # 100 s left, inside the renewal margin (min(300, 600 / 5) = 120 s)
    await h.connector().list_accounts(ListQuery(page_size=1))
    assert h.calls(GETAPISESSION) == 2
    assert h.store.current.values["session_id"] != first
    assert h.calls("XML query:GLACCOUNT") == 3  # every call ran once, none on the old session
    await h.http.aclose()


async def test_expired_session_is_renewed_exactly_once(harness: Harness) -> None:
    old = harness.store.current.values["session_id"]
    harness.sim.expire_sessions()
    pages = await asyncio.gather(
        *(harness.connector().list_accounts(ListQuery(page_size=2)) for _ in range(10))
    )
    assert all(len(page.data) == 2 for page in pages)
    assert harness.calls(GETAPISESSION) == 2
    assert harness.store.current.values["session_id"] != old


async def test_login_refused_on_renewal_requires_reauthorization(harness: Harness) -> None:
    harness.sim.company("DEMO-CO").config.users["demo-user"] = "changed"
    harness.sim.expire_sessions()
    calls = [harness.connector().list_accounts(ListQuery()) for _ in range(5)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, ReauthorizationRequired) for o in outcomes)
    assert harness.store.reauthorization_reason is not None
    assert PASSWORD not in str(outcomes[0]) and "changed" not in str(outcomes[0])
    # One failed sign-in only: repeated failures can lock the Intacct user out.
    assert harness.calls(GETAPISESSION) == 2
    with pytest.raises(ReauthorizationRequired):
        await harness.connector().list_accounts(ListQuery())
    assert harness.calls(GETAPISESSION) == 2


async def test_secrets_never_reach_logs_calls_or_errors(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    connector = harness.connector()
    await connector.create_journal(journal(), guard())
    harness.sim.expire_sessions()
    await connector.list_accounts(ListQuery(page_size=1))
    with pytest.raises(ValidationFailed) as caught:
        await connector.create_invoice(invoice().model_copy(update={"contact_id": "customer:NOPE"}), guard())
    secrets = [
        SENDER_PASSWORD,
        PASSWORD,
        *[v for k, v in harness.store.current.values.items() if "session_id" in k],
    ]
    logged = [call.request_body or b"" for call in harness.gate.calls]
    for secret in secrets:
        assert secret not in caplog.text
        assert secret not in str(caught.value)
        assert all(secret.encode() not in body for body in logged)
        assert all(secret not in call.label and secret not in call.url for call in harness.gate.calls)


async def test_upstream_calls_are_labelled(harness: Harness) -> None:
    connector = harness.connector()
    await connector.create_journal(journal(), guard())
    calls = {(c.label, c.kind) for c in harness.gate.calls}
    assert ("XML create:GLBATCH", "write") in calls
    assert ("XML query:GLBATCH+readByQuery:GLENTRY", "read") in calls
    write = next(c for c in harness.gate.calls if c.kind == "write")
    assert write.scope == "DEMO-CO" and write.provider == "sage_intacct" and write.method == "POST"
    assert write.request_body is not None and b"<TR_TYPE>1</TR_TYPE>" in write.request_body
    assert b"<uniqueid>true</uniqueid>" in write.request_body
    harness.sim.expire_sessions()
    await connector.list_accounts(ListQuery(page_size=1))
    assert ("XML getAPISession", "auth") in {(c.label, c.kind) for c in harness.gate.calls}


# --- hybrid routing -------------------------------------------------------------------------------------


async def test_rest_connection_reads_customers_over_rest_with_the_same_records() -> None:
    sim = make_sim()
    xml = await make_harness(sim)
    rest = await make_harness(sim, rest=True, http=xml.http)
    created = await rest.connector().create_contact(
        ContactCreate(
            roles=[ContactRole.customer], name="Hybrid Ltd", email="hy@example.com", tax_number="GB1"
        ),
        guard(),
    )
    sim.faults.reset_counters()
    query = ListQuery(page_size=200, filters={"role": "customer"})
    over_rest = await rest.connector().list_contacts(query)
    assert rest.calls("POST /ia/api/v1/services/core/query") == 1 and rest.calls("XML query:CUSTOMER") == 0
    over_xml = await xml.connector().list_contacts(query)
    assert rest.calls("XML query:CUSTOMER") == 1
    assert [c.model_dump() for c in over_rest.data] == [c.model_dump() for c in over_xml.data]
    assert created in over_xml.data
    # Pages agree too: the cursor is an offset in the same order on both paths.
    small = ListQuery(page_size=2, filters={"role": "customer"})
    rest_page, xml_page = (
        await rest.connector().list_contacts(small),
        await xml.connector().list_contacts(small),
    )
    assert rest_page == xml_page
    second = small.model_copy(update={"cursor": rest_page.next_cursor})
    assert await rest.connector().list_contacts(second) == await xml.connector().list_contacts(second)
    assert await rest.connector().get_contact("customer:C-0003") == await xml.connector().get_contact(
        "customer:C-0003"
    )
    # Vendors stay on XML.
    sim.faults.reset_counters()
    await rest.connector().list_contacts(ListQuery(filters={"role": "supplier"}))
    assert rest.calls("XML query:VENDOR") == 1 and rest.calls("POST /ia/api/v1/services/core/query") == 0
    await xml.http.aclose()


async def test_rest_customer_writes() -> None:
    h = await make_harness(rest=True)
    connector = h.connector()
    write = guard()
    data = ContactCreate(roles=[ContactRole.customer], name="Rest Co", email="r@example.com")
    first = await connector.create_contact(data, write)
    second = await connector.create_contact(data, write)
    assert first == second and h.count("CUSTOMER") == 4
    assert h.calls("POST /ia/api/v1/objects/accounts-receivable/customer") == 2
    assert h.calls("XML create:CUSTOMER") == 0
    h.sim.faults.add(Fault("POST /ia/api/v1/objects/*", "status_after_commit", status=502))
    retried = await connector.create_contact(data.model_copy(update={"name": "Rest Two"}), guard())
    assert retried.name == "Rest Two" and h.count("CUSTOMER") == 5
    updated = await connector.update_contact(first.id, ContactUpdate(email="new@example.com"), guard())
    assert updated.email == "new@example.com" and updated.name == "Rest Co"
    with pytest.raises(UnsupportedField) as caught:
        await connector.create_contact(data.model_copy(update={"currency": "USD"}), guard())
    assert [p.field for p in caught.value.problems] == ["currency"]
    await h.http.aclose()


async def test_rest_token_is_refreshed_once_when_rejected() -> None:
    h = await make_harness(rest=True)
    before = h.store.current.values["rest_access_token"]
    h.sim.expire_tokens()
    await asyncio.gather(*(h.connector().get_contact("customer:C-0001") for _ in range(5)))
    assert h.calls("POST /ia/api/v1/oauth2/token") == 2  # establish + one refresh
    assert h.store.current.values["rest_access_token"] != before
    await h.http.aclose()


# --- reads ----------------------------------------------------------------------------------------------


async def test_invoice_page_is_two_queries(harness: Harness) -> None:
    harness.sim.seed_arinvoices("DEMO-CO", 30, lines_per_invoice=3)
    harness.sim.faults.reset_counters()
    page = await harness.connector().list_invoices(ListQuery(page_size=25))
    assert len(page.data) == 25 and page.next_cursor is not None
    assert harness.calls("XML query:ARINVOICE") == 1
    assert harness.calls("XML readByQuery:ARINVOICEITEM") == 1
    assert harness.calls("POST /ia/xml/xmlgw.phtml") == 2
    seeded = [i for i in page.data if (i.number or "").startswith("BULK-")]
    assert seeded and all(len(i.lines) == 3 for i in seeded)
    assert all(i.total_amount == sum(line.net_amount or 0 for line in i.lines) for i in page.data)


async def test_more_than_a_thousand_lines_continue_with_read_more(harness: Harness) -> None:
    harness.sim.seed_arinvoices("DEMO-CO", 5, lines_per_invoice=250)
    harness.sim.faults.reset_counters()
    page = await harness.connector().list_invoices(ListQuery(page_size=10))
    assert [len(i.lines) for i in page.data] == [2, 2, 2, 250, 250, 250, 250, 250]
    assert harness.calls("XML query:ARINVOICE") == 1
    assert harness.calls("XML readByQuery:ARINVOICEITEM") == 1
    assert harness.calls("XML readMore:ARINVOICEITEM") == 1


async def test_lists_follow_cursors_and_filters(harness: Harness, clock: FakeClock) -> None:
    connector = harness.connector()
    seen: list[str] = []
    cursor = None
    while True:
        page = await connector.list_invoices(ListQuery(page_size=2, cursor=cursor))
        seen += [i.id for i in page.data]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["100", "101", "102"]
    mine = await connector.list_invoices(ListQuery(filters={"contact_id": "customer:C-0002"}))
    assert [i.contact_id for i in mine.data] == ["customer:C-0002"]
    assert (await connector.list_invoices(ListQuery(filters={"status": "draft"}))).data == []
    assert len((await connector.list_invoices(ListQuery(filters={"status": "open"}))).data) == 3
    found = await connector.list_contacts(ListQuery(filters={"email": "BILLING@globex.example"}))
    assert [c.id for c in found.data] == ["customer:C-0002"]
    named = await connector.list_contacts(ListQuery(filters={"name": "supplies"}))
    assert [c.id for c in named.data] == ["vendor:V-0001"]
    with pytest.raises(ValidationFailed):
        await connector.list_contacts(ListQuery(cursor="garbage"))
    with pytest.raises(ValidationFailed):
        await connector.list_journals(ListQuery(filters={"contact_id": "x"}))


async def test_updated_since_filters_on_whenmodified(clock: FakeClock) -> None:
    sim = make_sim(clock=clock)
    h = await make_harness(sim)
    clock.advance(3600)
    since = clock.datetime()
    created = await h.connector().create_contact(
        ContactCreate(roles=[ContactRole.supplier], name="Late Vendor"), guard()
    )
    page = await h.connector().list_contacts(ListQuery(updated_since=since - dt.timedelta(seconds=1)))
    assert [c.id for c in page.data] == [created.id]
    assert created.updated_at is not None and created.updated_at >= since.replace(microsecond=0)
    await h.http.aclose()


# --- writes ---------------------------------------------------------------------------------------------


def test_create_invoice_element_order() -> None:
    data = invoice(department_id="SALES", location_id="100").model_copy(
        update={"number": "INV-9", "currency": "USD"}
    )
    body = m.create_invoice_body(data, "C-0002", "LBMARKER")
    assert [child.tag for child in body] == [
        "customerid",
        "datecreated",
        "datedue",
        "action",
        "invoiceno",
        "ponumber",
        "description",
        "externalid",
        "currency",
        "exchratetype",
        "invoiceitems",
    ]
    assert [c.text for c in body.find("datecreated")] == ["2026", "11", "02"]  # type: ignore[union-attr]
    line = body.find("invoiceitems/lineitem")
    assert line is not None
    assert [c.tag for c in line] == ["glaccountno", "amount", "memo", "locationid", "departmentid"]
    assert line.findtext("amount") == "120.50"
    assert etree.XMLSchema(etree.fromstring(CREATE_INVOICE_XSD)).validate(body)


def test_glbatch_mapping() -> None:
    body = m.glbatch_object(journal(location="100").model_copy(update={"currency": "USD"}), "GJ", "LBMARK")
    assert body.findtext("JOURNAL") == "GJ" and body.findtext("BATCH_DATE") == "11/03/2026"
    assert body.findtext("BATCH_TITLE") == "Accrual" and body.findtext("REFERENCENO") == "JNL-1"
    entries = [{c.tag: c.text for c in entry} for entry in body.iterfind("ENTRIES/GLENTRY")]
    assert entries == [
        {
            "DOCUMENT": "LBMARK",
            "ACCOUNTNO": "6000",
            "CURRENCY": "USD",
            "TR_TYPE": "1",
            "TRX_AMOUNT": "1450.80",
            "DEPARTMENT": "ADMIN",
            "LOCATION": "100",
        },
        {
            "DOCUMENT": "LBMARK",
            "ACCOUNTNO": "2000",
            "CURRENCY": "USD",
            "TR_TYPE": "-1",
            "TRX_AMOUNT": "1450.80",
            "LOCATION": "100",
        },
    ]


async def test_journal_round_trip(harness: Harness) -> None:
    created = await harness.connector().create_journal(journal(location="100"), guard())
    (batch,) = [r for r in harness.sim.records("DEMO-CO", "GLBATCH") if r["RECORDNO"] == created.id]
    assert batch["JOURNAL"] == "GJ" and batch["BATCH_DATE"] == "11/03/2026"
    entries = [r for r in harness.sim.records("DEMO-CO", "GLENTRY") if r["BATCHNO"] == created.id]
    assert sorted((e["TR_TYPE"], e["TRX_AMOUNT"]) for e in entries) == [("-1", "1450.8"), ("1", "1450.8")]
    assert [(line.debit, line.credit, line.location_id) for line in created.lines] == [
        (Decimal("1450.8"), 0, "100"),
        (0, Decimal("1450.8"), "100"),
    ]
    assert created.lines[0].department_id == "ADMIN" and created.reference == "JNL-1"


async def test_entity_connection_requires_locations_before_any_call() -> None:
    h = await make_harness(company="DEMO-ME", entity="US1")
    h.sim.faults.reset_counters()
    with pytest.raises(ValidationFailed) as caught:
        await h.connector().create_journal(journal(location=None), guard())
    assert [p.field for p in caught.value.problems] == ["lines[0].location_id", "lines[1].location_id"]
    assert h.total_calls() == 0
    problems = await h.connector().validate_journal(journal(location=None))
    assert {p.field for p in problems} == {"lines[0].location_id", "lines[1].location_id"}
    created = await h.connector().create_journal(journal(location="US1-HQ"), guard())
    assert {line.location_id for line in created.lines} == {"US1-HQ"}
    await h.http.aclose()


async def test_unsupported_fields_are_refused_before_any_call(harness: Harness) -> None:
    harness.sim.faults.reset_counters()
    connector = harness.connector()
    with pytest.raises(UnsupportedField) as caught:
        await connector.create_invoice(
            invoice(quantity=Decimal(2), tax_rate_id="UK Sale Goods Standard Rate"), guard()
        )
    assert {p.field for p in caught.value.problems} == {"lines[0].quantity", "lines[0].tax_rate_id"}
    with pytest.raises(UnsupportedField):
        await connector.create_contact(
            ContactCreate(roles=[ContactRole.customer, ContactRole.supplier], name="Both"), guard()
        )
    with pytest.raises(UnsupportedField):
        await connector.create_journal(journal().model_copy(update={"number": "7"}), guard())
    assert harness.total_calls() == 0


async def test_duplicate_controlid_returns_the_first_record(harness: Harness) -> None:
    write = guard()
    connector = harness.connector()
    first = await connector.create_journal(journal(), write)
    second = await connector.create_journal(journal(), write)
    assert first == second and harness.count("GLBATCH") == 1
    assert harness.calls("XML create:GLBATCH") == 2
    contact = ContactCreate(roles=[ContactRole.supplier], name="Once Only")
    write = guard()
    one = await connector.create_contact(contact, write)
    assert await connector.create_contact(contact, write) == one
    assert one.reference == m.guard_reference(write.guard)
    update = ContactUpdate(phone="+1 555 0100")
    updated = await connector.update_contact(one.id, update, guard())
    assert updated.phone == "+1 555 0100"


async def test_duplicate_wording_is_not_pinned_to_one_errorno() -> None:
    from sandbox.sage_intacct import SimError

    error = SimError("XL03000001", "The function control ID '{controlid}' has already been used.")
    h = await make_harness(make_sim(duplicate_controlid_error=error))
    write = guard()
    first = await h.connector().create_invoice(invoice(), write)
    assert await h.connector().create_invoice(invoice(), write) == first
    assert h.count("ARINVOICE") == 4
    await h.http.aclose()


async def test_524_on_a_write_is_outcome_unknown_then_reconciled(harness: Harness) -> None:
    harness.sim.faults.add(Fault("XML create_invoice", "status_after_commit", status=524))
    write = guard()
    with pytest.raises(OutcomeUnknown):
        await harness.connector().create_invoice(invoice(), write)
    assert harness.count("ARINVOICE") == 4  # it did land
    again = await harness.connector().create_invoice(invoice(), write)
    assert harness.count("ARINVOICE") == 4 and again.reference == "INV-REF"
    assert again.lines[0].unit_price == Decimal("120.50")


async def test_5xx_after_commit_is_retried_and_reconciled(harness: Harness) -> None:
    harness.sim.faults.add(Fault("XML create:GLBATCH", "status_after_commit", status=502))
    created = await harness.connector().create_journal(journal(), guard())
    assert harness.count("GLBATCH") == 1 and harness.calls("XML create:GLBATCH") == 2
    assert created.reference == "JNL-1"
    harness.sim.faults.add(Fault("XML create:CUSTOMER", "status_after_commit", status=503))
    contact = await harness.connector().create_contact(
        ContactCreate(roles=[ContactRole.customer], name="Retry Co"), guard()
    )
    assert harness.count("CUSTOMER") == 4 and contact.name == "Retry Co"


async def test_429_on_reads_is_retried(harness: Harness) -> None:
    harness.sim.faults.add(Fault("XML query:GLACCOUNT", "status", status=429, retry_after=0, times=2))
    page = await harness.connector().list_accounts(ListQuery(page_size=3))
    assert len(page.data) == 3 and harness.calls("XML query:GLACCOUNT") == 3
    statuses = [o.status for o in harness.gate.outcomes]
    assert statuses == [429, 429, 200]


async def test_function_errors_carry_upstream_details(harness: Harness) -> None:
    with pytest.raises(ValidationFailed) as caught:
        await harness.connector().create_invoice(
            invoice().model_copy(update={"contact_id": "customer:NOPE"}), guard()
        )
    upstream = caught.value.upstream
    assert upstream is not None and upstream.provider == "sage_intacct" and upstream.status == 200
    assert upstream.request_id and upstream.errors[0].code == "BL01001973"
    assert "NOPE" in upstream.errors[0].message


async def test_validate_invoice_checks_upstream_in_one_call(harness: Harness) -> None:
    harness.sim.faults.reset_counters()
    bad = invoice(location_id="999", department_id="ADMIN").model_copy(update={"contact_id": "customer:ZZ"})
    problems = await harness.connector().validate_invoice(bad)
    assert {(p.field, p.code) for p in problems} == {
        ("contact_id", "not_found"),
        ("lines[0].location_id", "not_found"),
    }
    assert harness.calls("POST /ia/xml/xmlgw.phtml") == 1 and harness.count("ARINVOICE") == 3


async def test_doctype_response_is_refused(harness: Harness) -> None:
    body = '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x "y">]><response><control/></response>'
    harness.sim.faults.add(Fault("XML query:GLACCOUNT", "status", status=200, body=body))
    with pytest.raises(UpstreamError, match="DOCTYPE"):
        await harness.connector().list_accounts(ListQuery())


# --- proxy ----------------------------------------------------------------------------------------------


async def test_proxy_xml_round_trip(harness: Harness) -> None:
    read = (
        b'<function controlid="p1"><readByQuery><object>CUSTOMER</object><fields>CUSTOMERID</fields>'
        b"<query>CUSTOMERID = 'C-0001'</query><pagesize>10</pagesize></readByQuery></function>"
    )
    harness.sim.expire_sessions()
    answer = await harness.connector().proxy_xml(read)
    assert answer.status == 200 and answer.content_type is not None and "xml" in answer.content_type
    parsed = parse_response(answer.body)
    assert parsed.results[0].records == ({"CUSTOMERID": "C-0001"},)
    assert answer.upstream_request_id == parsed.control_id
    assert harness.calls(GETAPISESSION) == 2  # renewed once, transparently
    create = (
        b'<function controlid="proxy-create-1"><create><VENDOR><VENDORID>PX-1</VENDORID><NAME>Proxy</NAME>'
        b"<DISPLAYCONTACT><PRINTAS>Proxy</PRINTAS></DISPLAYCONTACT></VENDOR></create></function>"
    )
    first = parse_response((await harness.connector().proxy_xml(create)).body)
    second = parse_response((await harness.connector().proxy_xml(create)).body)
    assert first.results[0].ok and not second.results[0].ok  # uniqueid=true: never applied twice
    assert harness.count("VENDOR") == 3
    write = next(c for c in harness.gate.calls if c.label == "XML proxy:create")
    assert write.kind == "write" and write.request_body is not None and b"[redacted]" in write.request_body
    with pytest.raises(ValidationFailed):
        await harness.connector().proxy_xml(b"<control><senderid>x</senderid></control>")
    with pytest.raises(ValidationFailed):  # its answer would be the connection's session id
        await harness.connector().proxy_xml(b'<function controlid="s"><getAPISession/></function>')


async def test_rest_proxy() -> None:
    h = await make_harness(rest=True)
    answer = await h.connector().proxy(
        "GET",
        "objects/accounts-receivable/customer",
        query="",
        headers={"accept": "application/json", "authorization": "Bearer caller-token"},
        body=b"",
    )
    assert answer.status == 200 and answer.content_type == "application/json"
    assert set(answer.headers) <= {"content-type", "retry-after"} | {
        k for k in answer.headers if "request-id" in k
    }
    assert b"C-0001" in answer.body
    with pytest.raises(UnsupportedOperation):
        xml_only = await make_harness(h.sim, http=h.http)
        await xml_only.connector().proxy("GET", "objects/x", query="", headers={}, body=b"")
    await h.http.aclose()


def test_guard_derivations_are_stable() -> None:
    assert m.guard_reference("g") == m.guard_reference("g") != m.guard_reference("h")
    assert len(m.guard_reference("g")) == 20 and len(derive_guard("g")) == 32
