"""Pure mappings of the Sage Accounting connector, fed with Sage's own examples.

The examples are read from the OpenAPI files in ``../shared/specs/`` (verbatim copies of Sage's
published descriptions); the request bodies are checked against the same files' ``post*`` schemas.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.errors import NotFound, UpstreamError, ValidationFailed
from connectors.models import (
    AccountType,
    Address,
    AddressType,
    ContactCreate,
    ContactRole,
    ContactUpdate,
    InvoiceCreate,
    InvoiceLineCreate,
    InvoiceStatus,
    JournalCreate,
    JournalLineCreate,
    Status,
)
from connectors.sage_accounting import mapping, wire

SPECS = Path(__file__).resolve().parents[2].parent / "shared" / "specs"
MODULES = SPECS / "sage-accounting-v3.1-modules"

pytestmark = pytest.mark.skipif(not SPECS.is_dir(), reason=f"Sage specs not found at {SPECS}")


@cache
def _spec(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SPECS / name).read_text())
    return data


def example(module: str, path: str) -> dict[str, Any]:
    """The 200 example of ``GET path`` in a per-module file."""
    spec = _spec(f"sage-accounting-v3.1-modules/{module}")
    found: dict[str, Any] = spec["paths"][path]["get"]["responses"]["200"]["examples"]["application/json"]
    return found


def schema_properties(definition: str, wrapper: str) -> tuple[set[str], dict[str, Any]]:
    body = _spec("sage-accounting-v3.1-swagger.json")["definitions"][definition]["properties"][wrapper]
    return set(body.get("required", [])), body["properties"]


# --- reads ------------------------------------------------------------------------------------------


def test_contact_example() -> None:
    item = example("swagger.contacts.json", "/contacts/{key}")
    contact = mapping.contact_from_sage(item, include_raw=True)
    assert contact.id == "cced5085c2d24394a758c5d16b38fca1"
    assert contact.roles == [ContactRole.customer]
    assert contact.name == "Bobs Building Supplies"
    assert contact.reference == "BBS001"
    assert contact.tax_number == "GB938484382"
    assert contact.currency == "GBP"
    assert contact.status == Status.active
    assert contact.email is None and contact.phone is None
    # The example's addresses are references only: nothing is invented from them.
    assert contact.addresses == []
    assert contact.created_at == dt.datetime(2022, 12, 30, 13, 59, 24, tzinfo=dt.UTC)
    assert contact.raw == item


def test_contact_with_expanded_address_and_person() -> None:
    item = {
        **example("swagger.contacts.json", "/contacts/{key}"),
        "is_active": False,
        "main_address": example("swagger.contacts.json", "/addresses/{key}")
        | {"address_line_1": "12 Acacia Ave", "city": "Leeds", "postal_code": "LS1 1AA"},
        "main_contact_person": example("swagger.contacts.json", "/contact_persons/{key}")
        | {"telephone": "0113 4960000", "email": "orders@bobs.example"},
    }
    contact = mapping.contact_from_sage(item)
    assert contact.status == Status.inactive
    assert contact.email == "orders@bobs.example" and contact.phone == "0113 4960000"
    assert contact.addresses == [
        Address(
            type=AddressType.main, line1="12 Acacia Ave", city="Leeds", postal_code="LS1 1AA", country="GB"
        )
    ]


def test_bare_list_items_keep_their_name() -> None:
    items, following = wire.list_items(example("swagger.contacts.json", "/contacts"))
    assert following == "/contacts?page=2&items_per_page=10"
    contacts = [mapping.contact_from_sage(item) for item in items]
    assert contacts[0].name == "HMRC Reclaimed (HMRC Rec)"
    assert all(c.roles == [] for c in contacts)


def test_journal_example() -> None:
    journal = mapping.journal_from_sage(example("swagger.accounting.json", "/journals/{key}"))
    assert journal.date == dt.date(2022, 1, 1)
    assert journal.reference == "Example journals"
    assert journal.description is None  # the example's string "null" (wire §9)
    assert [(line.debit, line.credit) for line in journal.lines] == [
        (Decimal(0), Decimal("350.0")),
        (Decimal("350.0"), Decimal(0)),
    ]
    assert journal.lines[0].account_id == "7a5a8952884911ed84fa0252b90cda0d"
    assert journal.lines[0].description == "BMW 3165i"
    assert all(isinstance(line.debit, Decimal) for line in journal.lines)


def test_ledger_account_example() -> None:
    account = mapping.account_from_sage(example("swagger.accounting_setup.json", "/ledger_accounts/{key}"))
    assert account.code == "0041"
    assert account.name == "Fixtures and fittings - Accumulated Depreciation"
    assert account.type == AccountType.asset
    assert account.status == Status.active
    info = mapping.ledger_info(example("swagger.accounting_setup.json", "/ledger_accounts/{key}"))
    assert info.active and info.hidden_in == frozenset({"sales"})


@pytest.mark.parametrize(
    ("type_id", "group", "expected"),
    [
        ("SALES", "INCOME", AccountType.revenue),
        ("OVERHEADS", "EXPENSE", AccountType.expense),
        ("BANK", "ASSET", AccountType.asset),
        ("CURRENT_LIABILITY", "LIABILITY", AccountType.liability),
        ("EQUITY", "LIABILITY", AccountType.equity),
        ("SOMETHING_NEW", "EXPENSE", AccountType.expense),
        ("SOMETHING_NEW", None, AccountType.other),
    ],
)
def test_ledger_account_types(type_id: str, group: str | None, expected: AccountType) -> None:
    item = {
        "id": "x",
        "name": "X",
        "ledger_account_type": {"id": type_id},
        "ledger_account_group": {"id": group} if group else None,
        "included_in_chart": False,
    }
    account = mapping.account_from_sage(item)
    assert account.type == expected and account.status == Status.inactive


def test_tax_rate_example() -> None:
    rate = mapping.tax_rate_from_sage(example("swagger.taxes.json", "/tax_rates/{key}"))
    assert rate.id == "GB_STANDARD" and rate.name == "Standard 20.00%"
    assert rate.rate == Decimal("20.0") and rate.status == Status.active
    assert not mapping.tax_rate_info(example("swagger.taxes.json", "/tax_rates/{key}")).zero_type
    assert mapping.tax_rate_info({"id": "GB_NO_TAX", "name": "NO_TAX", "percentage": None}).zero_type


def test_invoice_shaped_like_the_purchase_invoice_example() -> None:
    # No sales-invoice example is published; the purchase invoice has the same structure (wire §10.2).
    item = example("swagger.invoicing_purchases.json", "/purchase_invoices/{key}")
    invoice = mapping.invoice_from_sage(item)
    assert invoice.status == InvoiceStatus.open
    assert invoice.total_amount == Decimal("1599.11") and invoice.amount_due == Decimal("1599.11")
    assert invoice.net_amount == Decimal("1572.87") and invoice.tax_amount == Decimal("26.24")
    assert invoice.contact_id == "5ad3e87117f54189ba0255a12a2c3034"
    assert invoice.currency == "GBP"
    line = invoice.lines[0]
    assert (line.quantity, line.unit_price, line.net_amount, line.tax_amount, line.total_amount) == (
        Decimal("1.0"),
        Decimal("34.0"),
        Decimal("34.0"),
        Decimal("6.8"),
        Decimal("40.8"),
    )
    assert line.tax_rate_id == "GB_STANDARD" and line.account_id == "7a5f27a2884911ed84fa0252b90cda0d"


@pytest.mark.parametrize(
    ("sage", "unified"),
    [
        ("DRAFT", InvoiceStatus.draft),
        ("PRO_FORMA", InvoiceStatus.draft),
        ("UNPAID", InvoiceStatus.open),
        ("PART_PAID", InvoiceStatus.partially_paid),
        ("PAID", InvoiceStatus.paid),
        ("VOID", InvoiceStatus.void),
    ],
)
def test_invoice_statuses(sage: str, unified: InvoiceStatus) -> None:
    item = example("swagger.invoicing_purchases.json", "/purchase_invoices/{key}") | {"status": {"id": sage}}
    assert mapping.invoice_from_sage(item).status == unified


# --- writes -----------------------------------------------------------------------------------------


def _invoice(**line: Any) -> InvoiceCreate:
    return InvoiceCreate(
        contact_id="14d93840783b11e8990a122c8428e4b2",
        issue_date=dt.date(2018, 6, 24),
        due_date=dt.date(2018, 7, 24),
        number="SI-9",
        reference="PO 77",
        memo="Thanks",
        lines=[
            InvoiceLineCreate(
                **{
                    "description": "An Invoice Item With Pre-Calculated Tax",
                    "account_id": "4195173e75db11e8990a122c8428e4b2",
                    "quantity": Decimal(1),
                    "unit_price": Decimal("110.00"),
                    "tax_rate_id": "584793ca75db11e8990a122c8428e4b2",
                    "discount_amount": Decimal("10.00"),
                    "tax_amount": Decimal("9.95"),
                    **line,
                }
            )
        ],
    )


def test_invoice_body_matches_the_guide_and_the_schema() -> None:
    body = mapping.invoice_body(_invoice(), "0123456789abcdef0123456789abcdef")
    invoice = body["sales_invoice"]
    # The second line of the invoicing guide's create example (wire §10.2), amounts as strings.
    assert invoice["invoice_lines"] == [
        {
            "description": "An Invoice Item With Pre-Calculated Tax",
            "ledger_account_id": "4195173e75db11e8990a122c8428e4b2",
            "quantity": "1",
            "unit_price": "110.00",
            "tax_rate_id": "584793ca75db11e8990a122c8428e4b2",
            "discount_amount": "10.00",
            "tax_amount": "9.95",
        }
    ]
    required, properties = schema_properties("postSalesInvoices", "sales_invoice")
    # idempotency_id is documented by the idempotency guide, not the schema (factcheck §2).
    assert set(invoice) - {"idempotency_id"} <= set(properties)
    assert required <= set(invoice)
    line_schema = properties["invoice_lines"]["items"]
    assert set(invoice["invoice_lines"][0]) <= set(line_schema["properties"])
    assert set(line_schema["required"]) <= set(invoice["invoice_lines"][0])
    assert (invoice["invoice_number"], invoice["notes"], invoice["due_date"]) == (
        "SI-9",
        "Thanks",
        "2018-07-24",
    )


def test_invoice_problems_without_io() -> None:
    data = _invoice(tax_amount=None, location_id="L").model_copy(update={"reference": "x" * 26})
    problems = {(p.field, p.code) for p in mapping.invoice_problems(data)}
    assert problems == {("reference", "too_long"), ("lines[0].location_id", "unsupported_field")}
    rates = {"584793ca75db11e8990a122c8428e4b2": mapping.TaxRateInfo(zero_type=False)}
    assert [p.field for p in mapping.tax_rate_problems(data, rates)] == ["lines[0].tax_amount"]
    rates_zero = {"584793ca75db11e8990a122c8428e4b2": mapping.TaxRateInfo(zero_type=True)}
    assert mapping.tax_rate_problems(data, rates_zero) == []
    assert [(p.field, p.code) for p in mapping.tax_rate_problems(data, {})] == [
        ("lines[0].tax_rate_id", "not_found")
    ]


def test_journal_body_matches_the_schema() -> None:
    data = JournalCreate(
        date=dt.date(2018, 12, 10),
        reference="TEST JOURNAL",
        description="This is a test journal",
        lines=[
            JournalLineCreate(
                account_id="bf14b5304a9111e797950a57719b2edb", debit=Decimal(100), description="Asset side"
            ),
            JournalLineCreate(account_id="bf15ab254a9111e797950a57719b2edb", credit=Decimal("100.00")),
        ],
    )
    assert mapping.journal_body_problems(data) == []
    journal = mapping.journal_body(data, "f" * 32)["journal"]
    required, properties = schema_properties("postJournals", "journal")
    assert required <= set(journal) and set(journal) - {"idempotency_id"} <= set(properties)
    line_schema = properties["journal_lines"]["items"]
    for line in journal["journal_lines"]:
        assert set(line_schema["required"]) <= set(line) <= set(line_schema["properties"])
    assert journal["journal_lines"][0] == {
        "ledger_account_id": "bf14b5304a9111e797950a57719b2edb",
        "debit": "100",
        "credit": "0",
        "details": "Asset side",
    }


def test_contact_body_matches_the_guide_and_the_schema() -> None:
    data = ContactCreate(
        roles=[ContactRole.customer],
        name="Great Example Inc",
        email="person@greatexample.inc",
        currency="USD",
        addresses=[
            Address(
                type=AddressType.main, line1="Some Where", city="LA", region="US-CA", postal_code="90210"
            ),
            Address(type=AddressType.shipping, line1="Dock 4", country="US"),
        ],
    )
    body, problems = mapping.contact_body(data)
    assert problems == []
    assert body["contact_type_ids"] == ["CUSTOMER"]
    assert body["main_address"] == {
        "address_line_1": "Some Where",
        "city": "LA",
        "region": "US-CA",
        "postal_code": "90210",
    }
    assert body["delivery_address"] == {
        "address_line_1": "Dock 4",
        "country_id": "US",
        "address_type_id": "DELIVERY",
    }
    # wire §10.1: no top-level email on create; it belongs to the main contact person.
    assert "email" not in body and body["main_contact_person"]["email"] == "person@greatexample.inc"
    required, properties = schema_properties("postContacts", "contact")
    assert required <= set(body) <= set(properties)
    for slot in ("main_address", "delivery_address", "main_contact_person"):
        assert set(body[slot]) <= set(properties[slot]["properties"])


def test_contact_body_refuses_what_sage_cannot_carry() -> None:
    data = ContactCreate(
        roles=[ContactRole.customer, ContactRole.supplier],
        name="N" * 101,
        status=Status.inactive,
        addresses=[Address(type=AddressType.billing), Address(type=AddressType.main)],
    )
    _, problems = mapping.contact_body(data)
    assert {(p.field, p.code) for p in problems} == {
        ("roles", "unsupported_field"),
        ("name", "too_long"),
        ("status", "unsupported_field"),
        ("addresses[1]", "unsupported_field"),
    }
    body, problems = mapping.contact_body(ContactUpdate(phone=None, name="Renamed"))
    assert problems == []
    assert body == {"name": "Renamed", "main_contact_person": {"telephone": None, "is_main_contact": True}}
    _, problems = mapping.contact_body(ContactUpdate(name=None))
    assert [p.field for p in problems] == ["name"]


# --- wire helpers -----------------------------------------------------------------------------------


def test_next_page_is_concatenated_onto_the_base_url() -> None:
    params = [("items_per_page", "10"), ("attributes", "all"), ("contact_type_id", "CUSTOMER")]
    following = "/contacts?page=2&items_per_page=10"
    path = wire.next_path(following, "https://api.accounting.sage.com/v3.1", params)
    # factcheck §5: $next loses nothing of /v3.1, and our own params are re-appended where missing.
    assert path == "/contacts?page=2&items_per_page=10&attributes=all&contact_type_id=CUSTOMER"
    for variant in ("/v3.1/contacts?page=2", "https://api.accounting.sage.com/v3.1/contacts?page=2"):
        assert wire.next_path(variant, "https://api.accounting.sage.com/v3.1", []) == "/contacts?page=2"
    assert wire.decode_cursor(wire.encode_cursor(path), "contacts") == path
    for forged in (
        "//evil.example/contacts",
        "/contacts/../businesses",
        "https://x/contacts",
        "/journals?page=2",
    ):
        with pytest.raises(ValidationFailed):
            wire.decode_cursor(wire.encode_cursor(forged), "contacts")


def test_error_arrays_map_to_the_error_tree() -> None:
    def answer(status: int, body: Any) -> httpx.Response:
        return httpx.Response(status, json=body, headers={"x_request_id": "req-1"})

    invalid = answer(
        422,
        [
            {
                "$severity": "error",
                "$dataCode": "RecordInvalid",
                "$message": "This field is required.",
                "$source": "invoice_lines[1].tax_amount",
            },
            {"$severity": "error", "$dataCode": "RecordInvalid", "$message": "is invalid", "$source": "date"},
        ],
    )
    error = wire.error_for(invalid, "create", {"date": "issue_date"})
    assert isinstance(error, ValidationFailed)
    assert [p.field for p in error.problems] == ["lines[1].tax_amount", "issue_date"]
    assert error.upstream is not None and error.upstream.request_id == "req-1"
    assert error.upstream.errors[0].code == "RecordInvalid"
    missing = answer(
        404,
        [
            {
                "$severity": "error",
                "$dataCode": "RecordNotFound",
                "$message": "Couldn't find record.",
                "$source": "",
            }
        ],
    )
    assert isinstance(wire.error_for(missing, "read"), NotFound)
    # wire §5.1 [STAFF #32]: RecordNotFound on a POST is about a referenced record.
    assert isinstance(wire.error_for(missing, "create"), ValidationFailed)
    denied = wire.error_for(answer(403, [{"$dataCode": "MultiUserAccessDenied", "$message": "no"}]), "read")
    assert type(denied) is UpstreamError and denied.upstream is not None
    assert [e.code for e in denied.upstream.errors] == ["MultiUserAccessDenied"]


def test_json_bodies_parse_like_the_standard_library() -> None:
    page = {"$items": [{"id": "c1", "balance": "10.50", "rate": 20.0, "name": "Café", "tags": [None, 1]}]}
    raw = json.dumps(page).encode()
    assert wire.json_body(httpx.Response(200, content=raw)) == json.loads(raw) == page
    assert wire.json_body(httpx.Response(200, content=b"\xef\xbb\xbf" + raw)) == page  # a BOM, tolerated
    for bad in (b"", b"{not json", b"<html>Bad gateway</html>"):
        assert wire.json_body(httpx.Response(502, content=bad)) is None


def _page(items: list[Any], following: str | None = None, *, bom: bool = False) -> httpx.Response:
    content = json.dumps({"$total": len(items), "$next": following, "$items": items}).encode()
    return httpx.Response(200, content=(b"\xef\xbb\xbf" if bom else b"") + content)


def test_typed_pages_read_as_the_plain_json_mapping_does() -> None:
    items, following = wire.list_items(example("swagger.contacts.json", "/contacts"))
    detail = example("swagger.contacts.json", "/contacts/{key}")
    expanded = {
        **detail,
        "id": "expanded",
        "main_address": example("swagger.contacts.json", "/addresses/{key}")
        | {"address_line_1": "12 Acacia Ave", "city": "Leeds"},
        "delivery_address": {"id": "ref-only", "displayed_as": "x", "$path": "/addresses/ref-only"},
        "main_contact_person": {"email": "null", "telephone": "", "mobile": "07700 900000"},
        "updated_at": "2026-11-30T10:00:00",  # no offset: UTC (§9)
    }
    every = [*items, detail, expanded]
    typed, next_page = wire.typed_items(_page(every, following), mapping.SageContact)
    assert next_page == following
    assert [mapping.contact_from_sage(c) for c in typed] == [mapping.contact_from_sage(i) for i in every]
    last = mapping.contact_from_sage(typed[-1])
    assert last.phone == "07700 900000" and last.email is None
    assert last.updated_at == dt.datetime(2026, 11, 30, 10, tzinfo=dt.UTC)
    assert [a.line1 for a in last.addresses] == ["12 Acacia Ave"]


def test_a_page_with_an_unexpected_value_is_still_read_record_by_record() -> None:
    good = {
        "id": "a",
        "name": "Alpha",
        "created_at": "2026-11-30T10:00:00Z",
        "contact_types": [{"id": "VENDOR"}],
    }
    odd = {
        "id": "b",
        "name": 12345,  # not a string: reads as absent, as the plain-JSON readers do
        "displayed_as": "Beta (B1)",
        "created_at": "2026-11-30 10:00:00",  # Python reads it, RFC 3339 does not
        "is_active": False,
        "currency": "GBP",  # not a reference object
    }
    for response in (_page([good, odd], "/contacts?page=2"), _page([good], bom=True)):
        typed, following = wire.typed_items(response, mapping.SageContact)
        contacts = [mapping.contact_from_sage(c) for c in typed]
        assert contacts[0].name == "Alpha" and contacts[0].roles == [ContactRole.supplier]
    assert following is None
    typed, following = wire.typed_items(_page([good, odd], "/contacts?page=2"), mapping.SageContact)
    beta = mapping.contact_from_sage(typed[1])
    assert following == "/contacts?page=2"
    assert beta.name == "Beta (B1)" and beta.status == Status.inactive and beta.currency is None
    assert beta.created_at == dt.datetime(2026, 11, 30, 10, tzinfo=dt.UTC)
    with pytest.raises(UpstreamError):
        wire.typed_items(httpx.Response(200, content=b"[1, 2]"), mapping.SageContact)
    with pytest.raises(UpstreamError):
        mapping.contact_from_sage(wire.lenient(mapping.SageContact, {"name": "no id"}))
