"""Pure mappings between Sage Accounting v3.1 records and the unified models (CONTRACT §4).

``*_from_sage`` read an upstream record (as ``GET /{collection}/{key}`` or a list item with
``attributes=all`` returns it); ``*_body`` build the wrapped request bodies; ``*_problems`` list every
reason a write cannot be carried, without any I/O. Section numbers refer to
``../shared/docs/sage-accounting-wire.md`` unless another file is named.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import msgspec

from connectors.errors import ErrorCollector, Problem, UpstreamError, UpstreamInfo
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
    journal_problems,
    trusted,
)
from connectors.sage_accounting.wire import (
    PROVIDER,
    aware,
    date,
    lenient,
    money,
    money_out,
    ref_id,
    text,
    timestamp,
)

# §10.1: GET /contact_types is exactly CUSTOMER ("Customer") and VENDOR ("Supplier").
ROLE_TYPES = {ContactRole.customer: "CUSTOMER", ContactRole.supplier: "VENDOR"}
TYPE_ROLES = {v: k for k, v in ROLE_TYPES.items()}

# §10.2 statuses. PRO_FORMA is not yet taken into account, like a draft; DISPUTED (purchases only) still
# owes money, so it reads as open.
INVOICE_STATUSES = {
    "DRAFT": InvoiceStatus.draft,
    "PRO_FORMA": InvoiceStatus.draft,
    "UNPAID": InvoiceStatus.open,
    "DISPUTED": InvoiceStatus.open,
    "PART_PAID": InvoiceStatus.partially_paid,
    "PAID": InvoiceStatus.paid,
    "VOID": InvoiceStatus.void,
}
STATUS_FILTERS = {
    InvoiceStatus.draft.value: "DRAFT",
    InvoiceStatus.open.value: "UNPAID",
    InvoiceStatus.partially_paid.value: "PART_PAID",
    InvoiceStatus.paid.value: "PAID",
    InvoiceStatus.void.value: "VOID",
}

# §10.4 ledger account types; the group (ASSET, LIABILITY, INCOME, EXPENSE…) is the fallback.
ACCOUNT_TYPES = {
    "SALES": AccountType.revenue,
    "OTHER_INCOME": AccountType.revenue,
    "DIRECT_EXPENSES": AccountType.expense,
    "OVERHEADS": AccountType.expense,
    "DEPRECIATION": AccountType.expense,
    "CURRENT_ASSETS": AccountType.asset,
    "FIXED_ASSETS": AccountType.asset,
    "FUTURE_ASSETS": AccountType.asset,
    "BANK": AccountType.asset,
    "CURRENT_LIABILITY": AccountType.liability,
    "FUTURE_LIABILITY": AccountType.liability,
    "LINE_OF_CREDIT": AccountType.liability,
    "EQUITY": AccountType.equity,
}
ACCOUNT_GROUPS = {
    "ASSET": AccountType.asset,
    "LIABILITY": AccountType.liability,
    "EQUITY": AccountType.equity,
    "INCOME": AccountType.revenue,
    "EXPENSE": AccountType.expense,
    "EXPENDITURE": AccountType.expense,
}

# §10.2 / factcheck §1: tax_amount may be omitted only for rates of a "zero", "exempt" or "no_tax" type.
ZERO_TYPE_RATES = frozenset({"ZERO", "EXEMPT", "NO_TAX"})

# Sage field limits ([SPEC] maxLength, §10.1-§10.3) that the unified models allow to be longer.
CONTACT_NAME_MAX = 100
CONTACT_REFERENCE_MAX = 10
CONTACT_EMAIL_MAX = 100
INVOICE_REFERENCE_MAX = 25
JOURNAL_REFERENCE_MAX = 255
JOURNAL_DESCRIPTION_MAX = 200

Scope = Literal["sales", "journals"]


def _unexpected(what: str) -> UpstreamError:
    return UpstreamError(f"Sage Accounting returned {what}", upstream=UpstreamInfo(PROVIDER))


def _key(item: Mapping[str, Any]) -> str:
    ident = item.get("id")
    if ident.__class__ is not str or not ident:
        raise _unexpected("a record without an id")
    return ident


def _amounts(item: Mapping[str, Any], **names: str) -> dict[str, Decimal]:
    """Unified name → parsed Sage amount, for the amounts the record actually carries."""
    found = {key: money(item.get(name)) for key, name in names.items()}
    return {key: value for key, value in found.items() if value is not None}


# --- contacts -------------------------------------------------------------------------------------


class _Ref(msgspec.Struct):
    """§9: a reference object ``{"id", "displayed_as", "$path"}``, as far as a mapping reads it."""

    id: str | None = None


class _Person(msgspec.Struct):
    email: str | None = None
    telephone: str | None = None
    mobile: str | None = None


class _Address(msgspec.Struct):
    address_line_1: str | None = None
    address_line_2: str | None = None
    city: str | None = None
    region: str | None = None
    postal_code: str | None = None
    country: _Ref | None = None
    country_id: str | None = None


class SageContact(msgspec.Struct):
    """The attributes of a Sage contact (§10.1) that :func:`contact_from_sage` reads."""

    id: str | None = None
    displayed_as: str | None = None
    name: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    contact_types: list[_Ref] | None = None
    email: str | None = None
    main_contact_person: _Person | None = None
    reference: str | None = None
    is_active: bool | None = None
    currency: _Ref | None = None
    tax_number: str | None = None
    main_address: _Address | None = None
    delivery_address: _Address | None = None


def _ref(value: _Ref | None) -> str | None:
    return value.id or None if value is not None else None


def _address_from_sage(value: _Address | None, kind: AddressType) -> Address | None:
    # §10.1: a contact's addresses are often only references ({id, displayed_as, $path}); only an
    # expanded address (nested_attributes) carries the lines.
    if value is None:
        return None
    country = _ref(value.country) or text(value.country_id)
    lines = [text(v) for v in (value.address_line_1, value.address_line_2, value.city, value.region)]
    postal_code = text(value.postal_code)
    if not (any(lines) or postal_code or country):
        return None  # a reference only
    return trusted(Address)(
        type=kind,
        line1=lines[0],
        line2=lines[1],
        city=lines[2],
        region=lines[3],
        postal_code=postal_code,
        country=country,
    )


_MAIN, _SHIPPING = AddressType.main, AddressType.shipping
_ACTIVE, _INACTIVE = Status.active, Status.inactive


def contact_from_sage(item: Mapping[str, Any] | SageContact, *, include_raw: bool = False) -> Contact:
    """A unified contact from a Sage contact: a parsed JSON object, or a :class:`SageContact` as a list page
    decodes it (:func:`~connectors.sage_accounting.wire.typed_items`; ``raw`` needs the JSON object)."""
    raw = dict(item) if include_raw and isinstance(item, Mapping) else None
    c = item if isinstance(item, SageContact) else lenient(SageContact, item)
    # Runs for every record of a contacts page (the gateway's hottest loop): attribute reads of a decoded
    # Struct, enum members read once (module constants), and the record built in one call with its fields in
    # declaration order (see connectors.models.trusted).
    if not c.id:
        raise _unexpected("a record without an id")
    person = c.main_contact_person
    roles = []
    for kind in c.contact_types or ():
        role = TYPE_ROLES.get(kind.id or "")
        if role is not None:
            roles.append(role)
    addresses = []
    for value, use in ((c.main_address, _MAIN), (c.delivery_address, _SHIPPING)):
        if (address := _address_from_sage(value, use)) is not None:
            addresses.append(address)
    return _CONTACT(
        id=c.id,
        created_at=aware(c.created_at),
        updated_at=aware(c.updated_at),
        raw=raw,
        roles=roles,
        name=text(c.name) or text(c.displayed_as) or "",
        # §10.1: the response's top-level email is the main contact person's.
        email=text(c.email) or (text(person.email) if person is not None else None),
        phone=(text(person.telephone) or text(person.mobile)) if person is not None else None,
        reference=text(c.reference),
        status=_INACTIVE if c.is_active is False else _ACTIVE,
        currency=_ref(c.currency),
        tax_number=text(c.tax_number),
        addresses=addresses,
    )


_CONTACT = trusted(Contact)

#: Collections whose list pages are decoded straight into Structs (``typed_items``) when ``raw`` is not asked
#: for; the others are read as plain JSON.
LIST_RECORDS: dict[str, type[msgspec.Struct]] = {"contacts": SageContact}


def _address_body(address: Address) -> dict[str, Any]:
    body: dict[str, Any] = {
        "address_line_1": address.line1,
        "address_line_2": address.line2,
        "city": address.city,
        "region": address.region,
        "postal_code": address.postal_code,
        "country_id": address.country,
    }
    # §10.1 / GET /address_types: ACCOUNTS and DELIVERY are the billing and shipping kinds.
    if address.type == AddressType.billing:
        body["address_type_id"] = "ACCOUNTS"
    elif address.type == AddressType.shipping:
        body["address_type_id"] = "DELIVERY"
    return {k: v for k, v in body.items() if v is not None}


def _too_long(errors: ErrorCollector, field: str, value: str | None, limit: int) -> None:
    if value is not None and len(value) > limit:
        errors.add(field, "too_long", f"Sage Accounting accepts at most {limit} characters here")


def contact_body(data: ContactCreate | ContactUpdate) -> tuple[dict[str, Any], list[Problem]]:
    """The ``contact`` object of a POST/PUT (§10.1) and every problem that keeps it from being sent.

    For an update only the fields the caller set are sent; an explicit null clears a text field.
    """
    creating = isinstance(data, ContactCreate)
    given = {name: getattr(data, name) for name in data.model_fields_set}
    errors = ErrorCollector()
    body: dict[str, Any] = {}
    person: dict[str, Any] = {}

    for name in ("roles", "name", "addresses"):
        if name in given and given[name] is None:
            errors.add(name, "invalid", f"{name} cannot be cleared")
    roles = given.get("roles")
    if roles:
        kinds = sorted({ROLE_TYPES[ContactRole(role)] for role in roles})
        if len(kinds) > 1:
            # [G-inv] "you cannot assign more than one contact_type_id" (§10.1).
            errors.add(
                "roles", "unsupported_field", "A Sage Accounting contact is either a customer or a supplier"
            )
        body["contact_type_ids"] = kinds[:1]
    if given.get("name") is not None:
        _too_long(errors, "name", given["name"], CONTACT_NAME_MAX)
        body["name"] = given["name"]
    if "reference" in given:
        _too_long(errors, "reference", given["reference"], CONTACT_REFERENCE_MAX)
        body["reference"] = given["reference"]
    if "tax_number" in given:
        body["tax_number"] = given["tax_number"]
    if "currency" in given:
        body["currency_id"] = given["currency"]
    # §10.1: there is no top-level email (nor phone) on create; both live on the main contact person.
    if "email" in given:
        _too_long(errors, "email", given["email"], CONTACT_EMAIL_MAX)
        person["email"] = given["email"]
    if "phone" in given:
        person["telephone"] = given["phone"]
    if person:
        body["main_contact_person"] = {**person, "is_main_contact": True}
    status = given.get("status")
    # §10.1: is_active is read-only in postContacts/putContacts; a new contact is active.
    if status is not None and not (creating and status == Status.active):
        errors.add(
            "status", "unsupported_field", "Sage Accounting does not let the API change a contact's status"
        )
    addresses: list[Address] = given.get("addresses") or []
    seen: set[str] = set()
    for index, address in enumerate(addresses):
        # §10.1: a contact has one main_address and one delivery_address.
        slot = "delivery_address" if address.type == AddressType.shipping else "main_address"
        if slot in seen:
            errors.add(
                f"addresses[{index}]",
                "unsupported_field",
                "Sage Accounting keeps one main (billing) and one delivery (shipping) address per contact",
            )
            continue
        seen.add(slot)
        body[slot] = _address_body(address)
    return body, errors.problems


# --- invoices -------------------------------------------------------------------------------------


def _invoice_line(item: Mapping[str, Any]) -> InvoiceLine:
    return trusted(InvoiceLine)(
        description=text(item.get("description")),
        account_id=ref_id(item.get("ledger_account")),
        tax_rate_id=ref_id(item.get("tax_rate")),
        **_amounts(
            item,
            quantity="quantity",
            unit_price="unit_price",
            discount_amount="discount_amount",
            net_amount="net_amount",
            tax_amount="tax_amount",
            total_amount="total_amount",
        ),
    )


def invoice_from_sage(item: Mapping[str, Any], *, include_raw: bool = False) -> Invoice:
    issued = date(item.get("date"))
    if issued is None:
        raise _unexpected("a sales invoice without a date")
    status = ref_id(item.get("status")) or ""
    return trusted(Invoice)(
        id=_key(item),
        created_at=timestamp(item.get("created_at")),
        updated_at=timestamp(item.get("updated_at")),
        raw=dict(item) if include_raw else None,
        # §10.2: invoice_number is "SI-370" (or "SI-DRAFT" while draft); displayed_as equals it.
        number=text(item.get("invoice_number")) or text(item.get("displayed_as")),
        contact_id=ref_id(item.get("contact")) or "",
        issue_date=issued,
        due_date=date(item.get("due_date")),
        currency=ref_id(item.get("currency")),
        status=INVOICE_STATUSES.get(status, InvoiceStatus.open),
        reference=text(item.get("reference")),
        memo=text(item.get("notes")),
        lines=[_invoice_line(line) for line in item.get("invoice_lines") or [] if isinstance(line, Mapping)],
        # §10.2: outstanding_amount is what is still owed (drives PART_PAID/PAID).
        **_amounts(
            item,
            net_amount="net_amount",
            tax_amount="tax_amount",
            total_amount="total_amount",
            amount_due="outstanding_amount",
        ),
    )


def invoice_problems(data: InvoiceCreate) -> list[Problem]:
    """Problems found without any upstream lookup."""
    errors = ErrorCollector()
    _too_long(errors, "reference", data.reference, INVOICE_REFERENCE_MAX)
    for index, line in enumerate(data.lines):
        for name in ("department_id", "location_id"):
            # [SPEC] SalesInvoiceLineItem has no department or location (only analysis_type_categories).
            if getattr(line, name) is not None:
                errors.add(
                    f"lines[{index}].{name}", "unsupported_field", "Sage Accounting has no such dimension"
                )
        if line.tax_rate_id is None:
            # factcheck §1: the invoicing guide requires tax_rate_id on every line.
            errors.add(
                f"lines[{index}].tax_rate_id", "required", "Sage Accounting needs a tax rate on every line"
            )
    return errors.problems


@dataclass(frozen=True)
class TaxRateInfo:
    """What validation needs to know of a tax rate."""

    zero_type: bool


def tax_rate_info(item: Mapping[str, Any]) -> TaxRateInfo:
    # The rate's name is its type (§10.5: ZERO, EXEMPT, NO_TAX); a 0 % rate owes no tax either way.
    name = (text(item.get("name")) or "").upper()
    percentage = money(item.get("percentage"))
    return TaxRateInfo(zero_type=name in ZERO_TYPE_RATES or percentage == 0)


def tax_rate_problems(data: InvoiceCreate, rates: Mapping[str, TaxRateInfo]) -> list[Problem]:
    """Each line's tax rate exists, and a taxed line carries its ``tax_amount``.

    factcheck §1: Sage never computes line tax; only zero, exempt and no-tax rates may omit it.
    """
    errors = ErrorCollector()
    for index, line in enumerate(data.lines):
        if line.tax_rate_id is None:
            continue
        info = rates.get(line.tax_rate_id)
        if info is None:
            errors.add(f"lines[{index}].tax_rate_id", "not_found", "No such tax rate in this Sage business")
        elif line.tax_amount is None and not info.zero_type:
            errors.add(
                f"lines[{index}].tax_amount",
                "required",
                "Give the line's tax amount: Sage Accounting does not compute it for a taxed rate",
            )
    return errors.problems


def needs_rates(data: InvoiceCreate) -> bool:
    return any(line.tax_amount is None and line.tax_rate_id for line in data.lines)


def contact_problems(contact: Mapping[str, Any] | None) -> list[Problem]:
    """§10.2 / [G-bp]: a sales invoice needs a CUSTOMER contact (a vendor gets 422 "can't find customer")."""
    if contact is None:
        return [Problem("contact_id", "not_found", "No such contact in this Sage business")]
    types = {ref_id(t) for t in contact.get("contact_types") or []}
    if "CUSTOMER" not in types:
        return [Problem("contact_id", "not_a_customer", "The contact is not a customer in Sage Accounting")]
    return []


def invoice_body(data: InvoiceCreate, idempotency_id: str) -> dict[str, Any]:
    """``{"sales_invoice": {...}}`` (§10.2) with the duplicate guard inside the wrapper (factcheck §2)."""
    invoice: dict[str, Any] = {
        "idempotency_id": idempotency_id,
        "contact_id": data.contact_id,
        "date": data.issue_date.isoformat(),
    }
    optional = {
        "due_date": data.due_date.isoformat() if data.due_date else None,
        "reference": data.reference,
        "invoice_number": data.number,
        "notes": data.memo,
        "currency_id": data.currency,
    }
    invoice.update({k: v for k, v in optional.items() if v is not None})
    lines = []
    for line in data.lines:
        body: dict[str, Any] = {
            "description": line.description,
            "ledger_account_id": line.account_id,
            "quantity": money_out(line.quantity),
            "unit_price": money_out(line.unit_price),
            "tax_rate_id": line.tax_rate_id,
        }
        if line.discount_amount is not None:
            body["discount_amount"] = money_out(line.discount_amount)
        if line.tax_amount is not None:
            # Sent exactly as given: Sage stores it and never derives it (factcheck §1).
            body["tax_amount"] = money_out(line.tax_amount)
        lines.append(body)
    invoice["invoice_lines"] = lines
    return {"sales_invoice": invoice}


# --- journals -------------------------------------------------------------------------------------


def journal_from_sage(item: Mapping[str, Any], *, include_raw: bool = False) -> Journal:
    posted = date(item.get("date"))
    if posted is None:
        raise _unexpected("a journal without a date")
    lines = [
        trusted(JournalLine)(
            account_id=ref_id(line.get("ledger_account")) or "",
            description=text(line.get("details")),
            **_amounts(line, debit="debit", credit="credit"),
        )
        for line in item.get("journal_lines") or []
        if isinstance(line, Mapping)
    ]
    return trusted(Journal)(
        id=_key(item),
        created_at=timestamp(item.get("created_at")),
        updated_at=timestamp(item.get("updated_at")),
        raw=dict(item) if include_raw else None,
        date=posted,
        reference=text(item.get("reference")),
        # §9: journal examples carry the string "null" as description.
        description=text(item.get("description")),
        # §10.3: a Sage journal is posted on creation (no drafts; edits go through reissue).
        status=JournalStatus.posted,
        lines=lines,
    )


def journal_body_problems(data: JournalCreate) -> list[Problem]:
    """Problems found without any upstream lookup (balance included, computed in ``Decimal``)."""
    errors = ErrorCollector()
    for field, code, message in journal_problems(data.lines):
        errors.add(field, code, message)
    # [SPEC] postJournals/Journal: no number and no currency on a journal.
    if data.number is not None:
        errors.add("number", "unsupported_field", "Sage Accounting journals have no number")
    if data.currency is not None:
        errors.add("currency", "unsupported_field", "Sage Accounting journals are in the business currency")
    if not data.reference:
        # §10.3: reference is required by postJournals.
        errors.add("reference", "required", "Sage Accounting needs a journal reference")
    _too_long(errors, "reference", data.reference, JOURNAL_REFERENCE_MAX)
    _too_long(errors, "description", data.description, JOURNAL_DESCRIPTION_MAX)
    for index, line in enumerate(data.lines):
        for name in ("department_id", "location_id"):
            if getattr(line, name) is not None:
                errors.add(
                    f"lines[{index}].{name}", "unsupported_field", "Sage Accounting has no such dimension"
                )
    return errors.problems


def journal_body(data: JournalCreate, idempotency_id: str) -> dict[str, Any]:
    """``{"journal": {...}}`` (§10.3): each line carries both debit and credit, one of them zero."""
    journal: dict[str, Any] = {
        "idempotency_id": idempotency_id,
        "date": data.date.isoformat(),
        "reference": data.reference,
    }
    if data.description is not None:
        journal["description"] = data.description
    lines = []
    for line in data.lines:
        body: dict[str, Any] = {
            "ledger_account_id": line.account_id,
            "debit": money_out(line.debit),
            "credit": money_out(line.credit),
        }
        if line.description is not None:
            body["details"] = line.description
        lines.append(body)
    journal["journal_lines"] = lines
    return {"journal": journal}


# --- reference data -------------------------------------------------------------------------------


def account_from_sage(item: Mapping[str, Any], *, include_raw: bool = False) -> Account:
    kind = ref_id(item.get("ledger_account_type")) or ""
    group = ref_id(item.get("ledger_account_group")) or ""
    code = item.get("nominal_code")
    return trusted(Account)(
        id=_key(item),
        created_at=timestamp(item.get("created_at")),
        updated_at=timestamp(item.get("updated_at")),
        raw=dict(item) if include_raw else None,
        # §10.4: displayed_as shows the nominal code zero-padded to four digits ("Cash (1210)", "(0041)").
        code=f"{code:04d}" if isinstance(code, int) and not isinstance(code, bool) else None,
        name=text(item.get("name")) or text(item.get("displayed_as")) or "",
        type=ACCOUNT_TYPES.get(kind) or ACCOUNT_GROUPS.get(group, AccountType.other),
        status=Status.active if item.get("included_in_chart") is not False else Status.inactive,
    )


def tax_rate_from_sage(item: Mapping[str, Any], *, include_raw: bool = False) -> TaxRate:
    return trusted(TaxRate)(
        id=_key(item),
        created_at=timestamp(item.get("created_at")),
        updated_at=timestamp(item.get("updated_at")),
        raw=dict(item) if include_raw else None,
        # §10.5: name is the type ("STANDARD"); displayed_as is what users see ("Standard 20.00%").
        name=text(item.get("displayed_as")) or text(item.get("name")) or "",
        rate=money(item.get("percentage")),
        status=Status.active if item.get("is_visible") is not False else Status.inactive,
    )


@dataclass(frozen=True)
class LedgerInfo:
    """What validation needs to know of a ledger account."""

    active: bool
    hidden_in: frozenset[str]
    """Scopes the account is declared *not* visible in (``visible_in_sales: false`` …)."""


LEDGER_ATTRIBUTES = "included_in_chart,visible_in_sales,visible_in_journals"

# §4.2 [G-bp]: lists ask for the attributes their mapping reads instead of ``attributes=all`` (a contact
# carries ~2 KB of other fields: bank details, defaults, flags); ``id``, ``displayed_as`` and ``$path``
# always come. A list with ``include_raw`` still asks for all of them. Keep these in step with the
# ``*_from_sage`` functions: tests/api/test_unified.py compares both ways of listing, record by record.
LIST_ATTRIBUTES: dict[str, str] = {
    "contacts": "created_at,updated_at,contact_types,name,email,main_contact_person,reference,is_active,"
    "currency,tax_number,main_address,delivery_address",
    "sales_invoices": "created_at,updated_at,date,invoice_number,contact,due_date,currency,status,reference,"
    "notes,invoice_lines,net_amount,tax_amount,total_amount,outstanding_amount",
    "journals": "created_at,updated_at,date,reference,description,journal_lines",
    "ledger_accounts": "created_at,updated_at,ledger_account_type,ledger_account_group,nominal_code,name,"
    "included_in_chart",
    "tax_rates": "created_at,updated_at,name,percentage,is_visible",
}
TAX_RATE_ATTRIBUTES = "name,percentage"


def ledger_info(item: Mapping[str, Any]) -> LedgerInfo:
    scopes = {"sales": item.get("visible_in_sales"), "journals": item.get("visible_in_journals")}
    return LedgerInfo(
        active=item.get("included_in_chart") is not False,
        hidden_in=frozenset(k for k, v in scopes.items() if v is False),
    )


def account_problems(
    accounts: Iterable[tuple[int, str]], ledgers: Mapping[str, LedgerInfo], scope: Scope
) -> list[Problem]:
    """Each line's ledger account exists, is in the chart and is offered for ``scope``.

    §10.2/§10.3: sales lines take accounts from ``visible_in=sales``, journals from ``visible_in=journals``.
    """
    errors = ErrorCollector()
    for index, account_id in accounts:
        field = f"lines[{index}].account_id"
        info = ledgers.get(account_id)
        if info is None:
            errors.add(field, "not_found", "No such ledger account in this Sage business")
        elif not info.active:
            errors.add(field, "inactive", "The ledger account is not in the chart of accounts")
        elif scope in info.hidden_in:
            errors.add(field, "not_allowed", f"The ledger account cannot be used for {scope}")
    return errors.problems
