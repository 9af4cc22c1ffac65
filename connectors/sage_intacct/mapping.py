"""Pure mappings between unified records (CONTRACT §4) and Sage Intacct objects (sage-intacct-wire.md §2).

Nothing here does I/O. Upstream values are text (§2.8): amounts are parsed with ``Decimal`` from strings
and sent back as strings; generic functions take ``mm/dd/yyyy`` dates, legacy ones ``<year><month><day>``
and query timestamps ``MM/DD/YYYY HH:MM:SS`` ("Dates in Sage Intacct do not have associated timezones":
they are read and written as UTC).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from lxml import etree

from connectors.base import derive_guard
from connectors.errors import ErrorCollector, UpstreamError, UpstreamInfo
from connectors.models import (
    Account,
    AccountType,
    Address,
    AddressType,
    Contact,
    ContactCreate,
    ContactRole,
    ContactUpdate,
    Invoice,
    InvoiceCreate,
    InvoiceLine,
    InvoiceStatus,
    Journal,
    JournalCreate,
    JournalLine,
    JournalStatus,
    Status,
    TaxRate,
    trusted,
)
from connectors.sage_intacct.xml import Record, element, sub

# --- ids ------------------------------------------------------------------------------------------------

CUSTOMER_PREFIX = "customer:"
VENDOR_PREFIX = "vendor:"

PARTY_OBJECTS = {ContactRole.customer: "CUSTOMER", ContactRole.supplier: "VENDOR"}
PARTY_ID_FIELDS = {"CUSTOMER": "CUSTOMERID", "VENDOR": "VENDORID"}


def contact_id(object_name: str, record_id: str) -> str:
    """Unified contact ids say which object they live in (CONTRACT §4: separate customer/vendor objects)."""
    return (CUSTOMER_PREFIX if object_name == "CUSTOMER" else VENDOR_PREFIX) + record_id


def split_contact_id(value: str) -> tuple[str, str] | None:
    """``customer:C-0001`` → ``("CUSTOMER", "C-0001")``; None when the id is not one of ours."""
    for prefix, object_name in ((CUSTOMER_PREFIX, "CUSTOMER"), (VENDOR_PREFIX, "VENDOR")):
        if value.startswith(prefix) and len(value) > len(prefix):
            return object_name, value[len(prefix) :]
    return None


def guard_reference(guard: str) -> str:
    """A gateway-controlled reference derived from a write guard, stable across retries: the CUSTOMERID /
    VENDORID of a contact created without one, and the reconciliation marker of journals and invoices.
    20 characters, the usual length of Intacct id fields."""
    return "LB" + derive_guard(guard, length=18).upper()


# --- values ---------------------------------------------------------------------------------------------


def text(record: Mapping[str, Any], path: str) -> str | None:
    """A field as stripped text, None when absent or empty. ``query`` returns related fields flat under
    their dotted name while ``read``/``readByQuery`` nest blocks (§1.4), so both shapes are looked up."""
    value: Any = record.get(path)
    if value is None and "." in path:
        value = record
        for part in path.split("."):
            if not isinstance(value, Mapping) or part not in value:
                value = None
                break
            value = value[part]
    if value is None or isinstance(value, Mapping | list):
        return None
    result = str(value).strip()
    return result or None


def money(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        parsed = Decimal(value)
    except InvalidOperation:
        return None
    return parsed if parsed.is_finite() else None


def money_text(value: Decimal) -> str:
    """Amounts go upstream as plain decimal strings, no exponent, no separators (§2.8)."""
    return format(value, "f")


_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")
_STAMP = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d{2}):(\d{2})$")


def parse_date(value: str | None) -> dt.date | None:
    """``mm/dd/yyyy`` (§2.8)."""
    match = _DATE.match(value or "")
    if not match:
        return None
    try:
        return dt.date(int(match[3]), int(match[1]), int(match[2]))
    except ValueError:
        return None


def parse_timestamp(value: str | None) -> dt.datetime | None:
    """``MM/DD/YYYY HH:MM:SS`` (§2.8) as UTC; a bare date is midnight."""
    match = _STAMP.match(value or "")
    if match:
        try:
            return dt.datetime(
                int(match[3]),
                int(match[1]),
                int(match[2]),
                int(match[4]),
                int(match[5]),
                int(match[6]),
                tzinfo=dt.UTC,
            )
        except ValueError:
            return None
    day = parse_date(value)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) if day else None


def fmt_date(value: dt.date) -> str:
    """``mm/dd/yyyy`` for generic functions (§2.6 BATCH_DATE, §2.8)."""
    return f"{value.month:02d}/{value.day:02d}/{value.year:04d}"


def fmt_timestamp(value: dt.datetime) -> str:
    """``MM/DD/YYYY HH:MM:SS`` in UTC for query filters (§2.1, §2.8), truncated to the second so an
    ``updated_since`` bound never excludes a record modified in the same second."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return f"{fmt_date(value.date())} {value.hour:02d}:{value.minute:02d}:{value.second:02d}"


def legacy_date(tag: str, value: dt.date) -> etree._Element:
    """Legacy functions take dates as ``<year/><month/><day/>``, zero-padded (§2.8)."""
    node = element(tag)
    sub(node, "year", f"{value.year:04d}")
    sub(node, "month", f"{value.month:02d}")
    sub(node, "day", f"{value.day:02d}")
    return node


def _required_date(value: dt.date | None, object_name: str, record: Record) -> dt.date:
    if value is None:
        raise UpstreamError(
            f"Sage Intacct returned {object_name} {text(record, 'RECORDNO')} without a valid date",
            upstream=UpstreamInfo("sage_intacct"),
        )
    return value


def status_of(value: str | None) -> Status:
    return Status.inactive if (value or "").lower() in ("inactive", "f") else Status.active


# --- query building -------------------------------------------------------------------------------------


def cmp(op: str, field: str, value: str) -> etree._Element:
    """One ``query`` filter operator (§2.2): ``equalto``, ``greaterthanorequalto``, ``like`` …"""
    node = element(op)
    sub(node, "field", field)
    sub(node, "value", value)
    return node


def in_filter(field: str, values: Iterable[str], *, negate: bool = False) -> etree._Element:
    node = element("notin" if negate else "in")
    sub(node, "field", field)
    for value in values:
        sub(node, "value", value)
    return node


def all_of(conditions: Sequence[etree._Element]) -> etree._Element | None:
    """One filter operator: a single condition or ``<and>`` of several (§2.2 nesting)."""
    if not conditions:
        return None
    if len(conditions) == 1:
        return conditions[0]
    return element("and", children=conditions)


def query(
    object_name: str,
    fields: Sequence[str],
    *,
    condition: etree._Element | None = None,
    order_by: str = "RECORDNO",
    descending: bool = False,
    pagesize: int = 100,
    offset: int = 0,
    case_insensitive: bool = False,
) -> etree._Element:
    """A ``query`` function body (XSD ``xs:all``, §2.2). Always ordered: "If not specified, there is no
    default and the order of results is undefined", and offset paging needs a stable order."""
    node = element("query")
    select = sub(node, "select")
    for name in fields:
        sub(select, "field", name)
    sub(node, "object", object_name)
    if condition is not None:
        sub(node, "filter").append(condition)
    orderby = sub(node, "orderby")
    order = sub(orderby, "order")
    sub(order, "field", order_by)
    sub(order, "descending" if descending else "ascending")
    if case_insensitive:
        options = sub(node, "options")
        sub(options, "caseinsensitive", "true")
    sub(node, "pagesize", str(pagesize))
    sub(node, "offset", str(offset))
    return node


def quote(value: str) -> str:
    """A readByQuery string literal: single quotes escaped with a backslash (§2.1)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def read_by_query(object_name: str, fields: Sequence[str], query_text: str, pagesize: int) -> etree._Element:
    """A ``readByQuery`` body (§2.1); lxml escapes ``<``/``&`` in the query text."""
    node = element("readByQuery")
    sub(node, "object", object_name)
    sub(node, "fields", ",".join(fields))
    sub(node, "query", query_text)
    sub(node, "pagesize", str(pagesize))
    return node


def read_more(result_id: str) -> etree._Element:
    node = element("readMore")
    sub(node, "resultId", result_id)
    return node


# --- contacts -------------------------------------------------------------------------------------------

_ADDRESS = "DISPLAYCONTACT.MAILADDRESS"


def party_fields(object_name: str) -> tuple[str, ...]:
    return (
        "RECORDNO",
        PARTY_ID_FIELDS[object_name],
        "NAME",
        "STATUS",
        "CURRENCY",
        "TAXID",
        "DISPLAYCONTACT.EMAIL1",
        "DISPLAYCONTACT.PHONE1",
        f"{_ADDRESS}.ADDRESS1",
        f"{_ADDRESS}.ADDRESS2",
        f"{_ADDRESS}.CITY",
        f"{_ADDRESS}.STATE",
        f"{_ADDRESS}.ZIP",
        f"{_ADDRESS}.COUNTRYCODE",
        "WHENCREATED",
        "WHENMODIFIED",
    )


def contact_from_xml(object_name: str, record: Record, *, include_raw: bool = False) -> Contact:
    """CUSTOMER / VENDOR (§2.4) → Contact. ``reference`` is the CUSTOMERID/VENDORID."""
    record_id = text(record, PARTY_ID_FIELDS[object_name]) or ""
    address = trusted(Address)(
        type=AddressType.main,
        line1=text(record, f"{_ADDRESS}.ADDRESS1"),
        line2=text(record, f"{_ADDRESS}.ADDRESS2"),
        city=text(record, f"{_ADDRESS}.CITY"),
        region=text(record, f"{_ADDRESS}.STATE"),
        postal_code=text(record, f"{_ADDRESS}.ZIP"),
        country=text(record, f"{_ADDRESS}.COUNTRYCODE"),
    )
    has_address = any(
        getattr(address, name) for name in ("line1", "line2", "city", "region", "postal_code", "country")
    )
    return trusted(Contact)(
        id=contact_id(object_name, record_id),
        created_at=parse_timestamp(text(record, "WHENCREATED")),
        updated_at=parse_timestamp(text(record, "WHENMODIFIED")),
        raw=dict(record) if include_raw else None,
        roles=[ContactRole.customer if object_name == "CUSTOMER" else ContactRole.supplier],
        name=text(record, "NAME") or record_id,
        email=text(record, "DISPLAYCONTACT.EMAIL1"),
        phone=text(record, "DISPLAYCONTACT.PHONE1"),
        reference=record_id or None,
        status=status_of(text(record, "STATUS")),
        currency=text(record, "CURRENCY"),
        tax_number=text(record, "TAXID"),
        addresses=[address] if has_address else [],
    )


def check_addresses(addresses: list[Address] | None, errors: ErrorCollector) -> Address | None:
    """Intacct keeps one mailing address on the display contact (§2.4): more, or a typed one that would
    read back as ``main``, cannot be carried."""
    if not addresses:
        return None
    if len(addresses) > 1:
        errors.add("addresses", "unsupported_field", "Sage Intacct keeps a single (main) address per contact")
    if addresses[0].type != AddressType.main:
        errors.add(
            "addresses[0].type", "unsupported_field", "Sage Intacct keeps only the main (mailing) address"
        )
    return addresses[0]


def _display_contact(
    name: str | None,
    email: str | None,
    phone: str | None,
    address: Address | None,
    *,
    create: bool,
) -> etree._Element | None:
    contact = element("DISPLAYCONTACT")
    if name is not None and create:
        # PRINTAS is the contact's display name; the simulator and the docs' example set it on create.
        sub(contact, "PRINTAS", name)
        sub(contact, "COMPANYNAME", name)
    if phone is not None:
        sub(contact, "PHONE1", phone)
    if email is not None:
        sub(contact, "EMAIL1", email)
    if address is not None:
        mail = sub(contact, "MAILADDRESS")
        for tag, value in (
            ("ADDRESS1", address.line1),
            ("ADDRESS2", address.line2),
            ("CITY", address.city),
            ("STATE", address.region),
            ("ZIP", address.postal_code),
            ("COUNTRYCODE", address.country),
        ):
            sub(mail, tag, value or "")
    return contact if len(contact) or create else None


def contact_create_object(object_name: str, record_id: str, data: ContactCreate) -> etree._Element:
    """The ``<CUSTOMER>``/``<VENDOR>`` of a generic create (§2.4; DISPLAYCONTACT is required)."""
    errors = ErrorCollector()
    address = check_addresses(data.addresses, errors)
    errors.raise_if_any()
    node = element(object_name)
    sub(node, PARTY_ID_FIELDS[object_name], record_id)
    sub(node, "NAME", data.name)
    if data.tax_number is not None:
        sub(node, "TAXID", data.tax_number)
    if data.currency is not None:
        sub(node, "CURRENCY", data.currency)
    sub(node, "STATUS", (data.status or Status.active).value)
    contact = _display_contact(data.name, data.email, data.phone, address, create=True)
    assert contact is not None
    node.append(contact)
    return node


def contact_update_object(object_name: str, record_id: str, data: ContactUpdate) -> etree._Element:
    """A generic update addressed by CUSTOMERID/VENDORID (§2.4: "Required if not using RECORDNO")."""
    errors = ErrorCollector()
    address = check_addresses(data.addresses, errors)
    errors.raise_if_any()
    fields = data.model_fields_set
    node = element(object_name)
    sub(node, PARTY_ID_FIELDS[object_name], record_id)
    if "name" in fields and data.name is not None:
        sub(node, "NAME", data.name)
    if "tax_number" in fields:
        sub(node, "TAXID", data.tax_number or "")
    if "currency" in fields:
        sub(node, "CURRENCY", data.currency or "")
    if "status" in fields and data.status is not None:
        sub(node, "STATUS", data.status.value)
    email = (data.email or "") if "email" in fields else None
    phone = (data.phone or "") if "phone" in fields else None
    contact = _display_contact(None, email, phone, address, create=False)
    if contact is not None:
        node.append(contact)
    return node


def contact_matches(contact: Contact, data: ContactCreate) -> bool:
    """Whether an existing contact is what ``data`` would have created (used before adopting a record
    whose id the caller chose, so a pre-existing namesake is never returned as "created")."""
    return contact.name == data.name and (data.email is None or contact.email == data.email)


# --- REST customers (§3.5) ------------------------------------------------------------------------------

REST_CUSTOMER_FIELDS = (
    "key",
    "id",
    "name",
    "status",
    "taxId",
    "contacts.default.email1",
    "contacts.default.phone1",
    "audit.createdDateTime",
    "audit.modifiedDateTime",
)


def rest_customer_query(
    filters: list[dict[str, Any]], *, start: int, size: int, case_insensitive: bool = False
) -> dict[str, Any]:
    """A ``POST /services/core/query`` body for customers (§3.4; ``start`` is 1-based)."""
    spec: dict[str, Any] = {
        "object": "accounts-receivable/customer",
        "fields": list(REST_CUSTOMER_FIELDS),
        "filters": filters,
        # Same order as the XML path (REST key = RECORDNO), so cursors and pages agree.
        "orderBy": [{"key": "asc"}],
        "start": start,
        "size": size,
    }
    if case_insensitive:
        spec["filterParameters"] = {"caseSensitiveComparison": False}
    return spec


def _rest_text(record: Mapping[str, Any], path: str) -> str | None:
    value: Any = record.get(path)
    if value is None:
        value = record
        for part in path.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return None
            value = value[part]
    if value is None or isinstance(value, Mapping | list):
        return None
    result = str(value).strip()
    return result or None


def _rest_time(value: str | None) -> dt.datetime | None:
    """REST timestamps are ISO-8601 UTC (``2024-09-24T14:18:20Z``, §3.5)."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def contact_from_rest(record: Mapping[str, Any], *, include_raw: bool = False) -> Contact:
    """A REST ``accounts-receivable/customer`` → the same Contact the XML path builds."""
    record_id = _rest_text(record, "id") or ""
    base = "contacts.default.mailingAddress"
    address = trusted(Address)(
        type=AddressType.main,
        line1=_rest_text(record, f"{base}.addressLine1"),
        line2=_rest_text(record, f"{base}.addressLine2"),
        city=_rest_text(record, f"{base}.city"),
        region=_rest_text(record, f"{base}.state"),
        postal_code=_rest_text(record, f"{base}.postCode"),
        country=_rest_text(record, f"{base}.country"),
    )
    has_address = any(
        getattr(address, name) for name in ("line1", "line2", "city", "region", "postal_code", "country")
    )
    return trusted(Contact)(
        id=contact_id("CUSTOMER", record_id),
        created_at=_rest_time(_rest_text(record, "audit.createdDateTime")),
        updated_at=_rest_time(_rest_text(record, "audit.modifiedDateTime")),
        raw=dict(record) if include_raw else None,
        roles=[ContactRole.customer],
        name=_rest_text(record, "name") or record_id,
        email=_rest_text(record, "contacts.default.email1"),
        phone=_rest_text(record, "contacts.default.phone1"),
        reference=record_id or None,
        status=status_of(_rest_text(record, "status")),
        currency=_rest_text(record, "currency"),
        tax_number=_rest_text(record, "taxId"),
        addresses=[address] if has_address else [],
    )


def _rest_contact(email: str | None, phone: str | None, *, name: str | None) -> dict[str, Any]:
    contact: dict[str, Any] = {}
    if name is not None:
        contact["printAs"] = name
        contact["companyName"] = name
    if email is not None:
        contact["email1"] = email
    if phone is not None:
        contact["phone1"] = phone
    return contact


def _rest_refuse(data: ContactCreate | ContactUpdate) -> None:
    """The REST customer (§3.5) has no currency, and its address sits on a referenced contact whose
    fields are not documented: such writes are refused rather than dropped (CONTRACT §4)."""
    errors = ErrorCollector()
    fields = data.model_fields_set
    if "currency" in fields and (data.currency is not None or isinstance(data, ContactUpdate)):
        errors.add("currency", "unsupported_field", "The Sage Intacct REST customer has no currency")
    if "addresses" in fields and (data.addresses or isinstance(data, ContactUpdate)):
        errors.add("addresses", "unsupported_field", "The Sage Intacct REST customer has no address")
    errors.raise_if_any()


def customer_rest_create(record_id: str, data: ContactCreate) -> dict[str, Any]:
    """A REST customer create body (§3.5: ``id``, ``name``, ``status``, ``taxId``, ``contacts.default``)."""
    _rest_refuse(data)
    body: dict[str, Any] = {
        "id": record_id,
        "name": data.name,
        "status": (data.status or Status.active).value,
    }
    if data.tax_number is not None:
        body["taxId"] = data.tax_number
    body["contacts"] = {"default": _rest_contact(data.email, data.phone, name=data.name)}
    return body


def customer_rest_update(data: ContactUpdate) -> dict[str, Any]:
    """A REST PATCH body: only the fields the caller set ("Any fields not provided remain unchanged")."""
    _rest_refuse(data)
    fields = data.model_fields_set
    body: dict[str, Any] = {}
    if "name" in fields and data.name is not None:
        body["name"] = data.name
    if "tax_number" in fields:
        body["taxId"] = data.tax_number or ""
    if "status" in fields and data.status is not None:
        body["status"] = data.status.value
    email = (data.email or "") if "email" in fields else None
    phone = (data.phone or "") if "phone" in fields else None
    contact = _rest_contact(email, phone, name=None)
    if contact:
        body["contacts"] = {"default": contact}
    return body


# --- accounts and tax rates -----------------------------------------------------------------------------

ACCOUNT_FIELDS = (
    "RECORDNO",
    "ACCOUNTNO",
    "TITLE",
    "ACCOUNTTYPE",
    "NORMALBALANCE",
    "CATEGORY",
    "STATUS",
    "WHENCREATED",
    "WHENMODIFIED",
)
_EQUITY_WORDS = ("equity", "retained earnings", "capital", "common stock", "owner")


def account_type(record: Record) -> AccountType:
    """GLACCOUNT only says balance sheet vs income statement and the normal balance; equity is told from
    a liability by its category (or, when none is set, its title)."""
    kind = (text(record, "ACCOUNTTYPE") or "").lower()
    balance = (text(record, "NORMALBALANCE") or "").lower()
    words = f"{text(record, 'CATEGORY') or ''} {text(record, 'TITLE') or ''}".lower()
    if kind in ("incomestatement", "i"):
        return AccountType.revenue if balance == "credit" else AccountType.expense
    if kind in ("balancesheet", "n"):
        if balance == "debit":
            return AccountType.asset
        return AccountType.equity if any(w in words for w in _EQUITY_WORDS) else AccountType.liability
    return AccountType.other


def account_from_xml(record: Record, *, include_raw: bool = False) -> Account:
    number = text(record, "ACCOUNTNO") or ""
    return trusted(Account)(
        id=number,
        created_at=parse_timestamp(text(record, "WHENCREATED")),
        updated_at=parse_timestamp(text(record, "WHENMODIFIED")),
        raw=dict(record) if include_raw else None,
        code=number or None,
        name=text(record, "TITLE") or number,
        type=account_type(record),
        status=status_of(text(record, "STATUS")),
    )


TAX_FIELDS = (
    "RECORDNO",
    "DETAILID",
    "DESCRIPTION",
    "TAXTYPE",
    "VALUE",
    "STATUS",
    "WHENCREATED",
    "WHENMODIFIED",
)


def tax_rate_from_xml(record: Record, *, include_raw: bool = False) -> TaxRate:
    """TAXDETAIL: ``DETAILID`` is the key legacy functions use (``detailid``), ``VALUE`` the percent."""
    detail_id = text(record, "DETAILID") or ""
    return trusted(TaxRate)(
        id=detail_id,
        created_at=parse_timestamp(text(record, "WHENCREATED")),
        updated_at=parse_timestamp(text(record, "WHENMODIFIED")),
        raw=dict(record) if include_raw else None,
        name=text(record, "DESCRIPTION") or detail_id,
        rate=money(text(record, "VALUE")),
        status=status_of(text(record, "STATUS")),
    )


# --- invoices -------------------------------------------------------------------------------------------

INVOICE_FIELDS = (
    "RECORDNO",
    "RECORDID",
    "STATE",
    "CUSTOMERID",
    "DOCNUMBER",
    "DESCRIPTION",
    "WHENCREATED",
    "WHENDUE",
    "CURRENCY",
    "TOTALENTERED",
    "TOTALDUE",
    "TRX_TOTALENTERED",
    "TRX_TOTALDUE",
    "AUWHENCREATED",
    "WHENMODIFIED",
)
INVOICE_LINE_FIELDS = (
    "RECORDNO",
    "RECORDKEY",
    "LINE_NO",
    "ACCOUNTNO",
    "ENTRYDESCRIPTION",
    "AMOUNT",
    "TRX_AMOUNT",
    "LOCATIONID",
    "DEPARTMENTID",
)

# ARINVOICE STATE (display values, as the ``query`` function compares them) ↔ unified status.
INVOICE_STATES: Mapping[InvoiceStatus, tuple[str, ...]] = {
    InvoiceStatus.draft: ("Draft",),
    InvoiceStatus.open: ("Posted", "Submitted", "Selected", "Approved"),
    InvoiceStatus.partially_paid: ("Partially Paid",),
    InvoiceStatus.paid: ("Paid",),
    InvoiceStatus.void: ("Reversed", "Reversal"),
}
_STATE_TO_STATUS = {state.lower(): status for status, states in INVOICE_STATES.items() for state in states}


def invoice_status(state: str | None) -> InvoiceStatus:
    return _STATE_TO_STATUS.get((state or "").lower(), InvoiceStatus.open)


def _line_key(record: Record) -> tuple[int, int]:
    def number(value: str | None) -> int:
        try:
            return int(value or "0")
        except ValueError:
            return 0

    return number(text(record, "LINE_NO")), number(text(record, "RECORDNO"))


def invoice_line_from_xml(record: Record) -> InvoiceLine:
    """ARINVOICEITEM: an AR line carries one amount (§2.5), so it reads back as quantity 1 at that price."""
    amount = money(text(record, "TRX_AMOUNT")) or money(text(record, "AMOUNT")) or Decimal(0)
    return trusted(InvoiceLine)(
        description=text(record, "ENTRYDESCRIPTION"),
        account_id=text(record, "ACCOUNTNO"),
        quantity=Decimal(1),
        unit_price=amount,
        net_amount=amount,
        total_amount=amount,
        department_id=text(record, "DEPARTMENTID"),
        location_id=text(record, "LOCATIONID"),
    )


def invoice_from_xml(record: Record, lines: Sequence[Record], *, include_raw: bool = False) -> Invoice:
    ordered = sorted(lines, key=_line_key)
    unified_lines = [invoice_line_from_xml(line) for line in ordered]
    total = money(text(record, "TRX_TOTALENTERED")) or money(text(record, "TOTALENTERED"))
    due = money(text(record, "TRX_TOTALDUE"))
    if due is None:
        due = money(text(record, "TOTALDUE"))
    net = sum((line.net_amount or Decimal(0) for line in unified_lines), Decimal(0))
    customer = text(record, "CUSTOMERID") or ""
    issue = parse_date(text(record, "WHENCREATED"))
    raw = None
    if include_raw:
        raw = dict(record)
        raw["ARINVOICEITEMS"] = [dict(line) for line in ordered]
    return trusted(Invoice)(
        id=text(record, "RECORDNO") or "",
        # WHENCREATED is the document date on AR invoices; the audit time is AUWHENCREATED (§2.5).
        created_at=parse_timestamp(text(record, "AUWHENCREATED")),
        updated_at=parse_timestamp(text(record, "WHENMODIFIED")),
        raw=raw,
        number=text(record, "RECORDID"),
        contact_id=contact_id("CUSTOMER", customer),
        issue_date=_required_date(issue, "ARINVOICE", record),
        due_date=parse_date(text(record, "WHENDUE")),
        currency=text(record, "CURRENCY"),
        status=invoice_status(text(record, "STATE")),
        reference=text(record, "DOCNUMBER"),
        memo=text(record, "DESCRIPTION"),
        lines=unified_lines,
        net_amount=net if unified_lines else None,
        tax_amount=(total - net) if total is not None and unified_lines else None,
        total_amount=total,
        amount_due=due,
    )


def invoice_problems(data: InvoiceCreate, errors: ErrorCollector) -> str | None:
    """Everything ``create_invoice`` cannot carry, before any upstream call; returns the CUSTOMERID."""
    parsed = split_contact_id(data.contact_id)
    customer: str | None = None
    if parsed is None or parsed[0] != "CUSTOMER":
        errors.add("contact_id", "invalid", "An invoice's contact must be a customer id (customer:…)")
    else:
        customer = parsed[1]
    if data.due_date is None:
        # create_invoice needs datedue or termname (§2.5); a term would be a guess.
        errors.add("due_date", "required", "Sage Intacct needs a due date on an invoice")
    for i, line in enumerate(data.lines):
        # An AR line is one amount on one GL account (§2.5 lineitem): no quantity, discount or tax.
        if line.quantity != 1:
            errors.add(
                f"lines[{i}].quantity", "unsupported_field", "Sage Intacct invoice lines carry an amount only"
            )
        if line.discount_amount:
            errors.add(
                f"lines[{i}].discount_amount",
                "unsupported_field",
                "Sage Intacct invoice lines have no discount",
            )
        if line.tax_rate_id is not None:
            errors.add(
                f"lines[{i}].tax_rate_id", "unsupported_field", "create_invoice takes no tax detail on a line"
            )
        if line.tax_amount:
            errors.add(f"lines[{i}].tax_amount", "unsupported_field", "create_invoice takes no line tax")
    return customer


def line_amount(quantity: Decimal, unit_price: Decimal) -> Decimal:
    return quantity * unit_price


def create_invoice_body(data: InvoiceCreate, customer_id: str, marker: str) -> etree._Element:
    """``create_invoice`` in the exact element order of the v3.0 XSD (factcheck #12): customerid,
    datecreated, dateposted?, datedue?, termname?, batchkey?, action?, invoiceno?, ponumber?, description?,
    externalid?, billto?, shipto?, (basecurr?, currency, (exchratedate?, exchratetype | exchrate))?, nogl?,
    supdocid?, customfields?, taxsolutionid?, invoiceitems."""
    node = element("create_invoice")
    sub(node, "customerid", customer_id)
    node.append(legacy_date("datecreated", data.issue_date))
    if data.due_date is not None:
        node.append(legacy_date("datedue", data.due_date))
    sub(node, "action", "Submit")
    if data.number is not None:
        sub(node, "invoiceno", data.number)
    if data.reference is not None:
        sub(node, "ponumber", data.reference)
    if data.memo is not None:
        sub(node, "description", data.memo)
    # The gateway's own reference, derived from the write guard (reliability-notes.md §2.4).
    sub(node, "externalid", marker)
    if data.currency is not None:
        sub(node, "currency", data.currency)
        # factcheck #12: currency needs exchratetype or exchrate; empty = Intacct Daily Rate.
        sub(node, "exchratetype", "")
    items = sub(node, "invoiceitems")
    for line in data.lines:
        item = sub(items, "lineitem")
        # lineitem order (XSD/DTD): glaccountno, offsetglaccountno?, amount, allocationid?, memo?,
        # locationid?, departmentid?
        sub(item, "glaccountno", line.account_id)
        sub(item, "amount", money_text(line_amount(line.quantity, line.unit_price)))
        sub(item, "memo", line.description)
        if line.location_id is not None:
            sub(item, "locationid", line.location_id)
        if line.department_id is not None:
            sub(item, "departmentid", line.department_id)
    return node


def invoice_matches(invoice: Invoice, data: InvoiceCreate) -> bool:
    """Whether ``invoice`` is what ``data`` creates (reconciliation when no exact key is queryable)."""
    if (
        invoice.contact_id != data.contact_id
        or invoice.issue_date != data.issue_date
        or invoice.due_date != data.due_date
        or (data.number is not None and invoice.number != data.number)
        or invoice.reference != data.reference
        or invoice.memo != data.memo
        or (data.currency is not None and invoice.currency != data.currency)
        or len(invoice.lines) != len(data.lines)
    ):
        return False
    for got, want in zip(invoice.lines, data.lines, strict=True):
        if (
            got.account_id != want.account_id
            or got.net_amount != line_amount(want.quantity, want.unit_price)
            or (got.description or None) != (want.description or None)
            or got.location_id != want.location_id
            or got.department_id != want.department_id
        ):
            return False
    return True


# --- journals -------------------------------------------------------------------------------------------

JOURNAL_FIELDS = (
    "RECORDNO",
    "BATCHNO",
    "BATCH_TITLE",
    "JOURNAL",
    "BATCH_DATE",
    "REFERENCENO",
    "STATE",
    "WHENCREATED",
    "WHENMODIFIED",
)
JOURNAL_LINE_FIELDS = (
    "RECORDNO",
    "BATCHNO",
    "LINE_NO",
    "TR_TYPE",
    "ACCOUNTNO",
    "DOCUMENT",
    "DESCRIPTION",
    "TRX_AMOUNT",
    "AMOUNT",
    "CURRENCY",
    "DEPARTMENT",
    "LOCATION",
)
DEFAULT_JOURNAL_TITLE = "LedgerBridge journal"

_JOURNAL_STATES = {
    "draft": JournalStatus.draft,
    "submitted": JournalStatus.draft,
    "partially approved": JournalStatus.draft,
    "approved": JournalStatus.draft,
    "declined": JournalStatus.draft,
    "posted": JournalStatus.posted,
    "reversal pending": JournalStatus.posted,
    "reversed": JournalStatus.reversed,
}


def journal_line_from_xml(record: Record) -> JournalLine:
    """GLENTRY: ``TR_TYPE`` 1 = debit, -1 = credit; ``TRX_AMOUNT`` is the absolute amount (§2.6)."""
    amount = money(text(record, "TRX_AMOUNT")) or money(text(record, "AMOUNT")) or Decimal(0)
    debit = text(record, "TR_TYPE") == "1"
    return trusted(JournalLine)(
        account_id=text(record, "ACCOUNTNO") or "",
        description=text(record, "DESCRIPTION"),
        debit=amount if debit else Decimal(0),
        credit=Decimal(0) if debit else amount,
        department_id=text(record, "DEPARTMENT"),
        location_id=text(record, "LOCATION"),
    )


def journal_from_xml(record: Record, lines: Sequence[Record], *, include_raw: bool = False) -> Journal:
    ordered = sorted(lines, key=_line_key)
    currencies = {text(line, "CURRENCY") for line in ordered} - {None}
    raw = None
    if include_raw:
        raw = dict(record)
        raw["GLENTRIES"] = [dict(line) for line in ordered]
    return trusted(Journal)(
        id=text(record, "RECORDNO") or "",
        created_at=parse_timestamp(text(record, "WHENCREATED")),
        updated_at=parse_timestamp(text(record, "WHENMODIFIED")),
        raw=raw,
        number=text(record, "BATCHNO"),
        date=_required_date(parse_date(text(record, "BATCH_DATE")), "GLBATCH", record),
        reference=text(record, "REFERENCENO"),
        description=text(record, "BATCH_TITLE"),
        currency=currencies.pop() if len(currencies) == 1 else None,
        status=_JOURNAL_STATES.get((text(record, "STATE") or "").lower(), JournalStatus.posted),
        lines=[journal_line_from_xml(line) for line in ordered],
    )


def journal_problems(data: JournalCreate, *, entity_scoped: bool, errors: ErrorCollector) -> None:
    """What GLBATCH cannot take, checked before any upstream call."""
    if data.number is not None:
        errors.add("number", "unsupported_field", "Sage Intacct numbers journal batches itself (BATCHNO)")
    if entity_scoped:
        # §2.6 / factcheck #13: LOCATION is required on every entry in a multi-entity company.
        for i, line in enumerate(data.lines):
            if not line.location_id:
                errors.add(
                    f"lines[{i}].location_id",
                    "required",
                    "An entity-scoped Sage Intacct connection needs a location on every journal line",
                )


def glbatch_object(data: JournalCreate, journal_symbol: str, marker: str) -> etree._Element:
    """``<GLBATCH>`` for a generic create (§2.6): ``TRX_AMOUNT`` (absolute) with ``TR_TYPE`` 1/-1 —
    the parameter table and the PHP SDK, not the docs' ``AMOUNT`` examples (factcheck #13). Every entry's
    ``DOCUMENT`` carries the gateway's reference so an unknown outcome can be looked up exactly."""
    node = element("GLBATCH")
    sub(node, "JOURNAL", journal_symbol)
    sub(node, "BATCH_DATE", fmt_date(data.date))
    sub(node, "BATCH_TITLE", data.description or data.reference or DEFAULT_JOURNAL_TITLE)
    if data.reference is not None:
        sub(node, "REFERENCENO", data.reference)
    sub(node, "STATE", "Posted")
    entries = sub(node, "ENTRIES")
    for line in data.lines:
        entry = sub(entries, "GLENTRY")
        sub(entry, "DOCUMENT", marker)
        sub(entry, "ACCOUNTNO", line.account_id)
        if data.currency is not None:
            sub(entry, "CURRENCY", data.currency)
        debit = line.debit > 0
        sub(entry, "TR_TYPE", "1" if debit else "-1")
        sub(entry, "TRX_AMOUNT", money_text(line.debit if debit else line.credit))
        if line.description is not None:
            sub(entry, "DESCRIPTION", line.description)
        if line.department_id is not None:
            sub(entry, "DEPARTMENT", line.department_id)
        if line.location_id is not None:
            sub(entry, "LOCATION", line.location_id)
    return node
