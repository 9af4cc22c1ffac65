"""Handlers of the ``/v3.1`` resources: pure functions of a request context, answering a ``Reply``.

They never await, so every write (validation, insert, idempotency record) is atomic on the event loop.
Validation errors are collected and answered together as one error array, as Rails-style APIs do.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .config import SimConfig
from .records import (
    GBP,
    ZERO_TYPE_RATES,
    Ids,
    add_contact,
    contact_data,
    new_contact_fields,
    status_ref,
    tax_rate_ref,
)
from .store import BusinessData, Collection, Record, envelope, parse_attributes, project
from .wire import (
    ApiError,
    error_item,
    fmt_money,
    invalid,
    iso,
    not_found,
    parse_date,
    parse_decimal,
    parse_since,
    ref,
    round_money,
)

MAX_PER_PAGE = 200  # §4.1 [G-pag] "The maximum value for items_per_page is 200."
DEFAULT_PER_PAGE = 20
BUSINESSES_PER_PAGE = (25, 25, 500)  # §3.2 default, min, max
BUSINESSES_ITEMS_PER_PAGE_VALUE = 2_147_483_647  # §3.2: the value every /businesses example shows
INVOICE_SORT_KEYS = frozenset({"created_at", "updated_at", "date", "due_date"})  # §4.4 [G-sort]
CREDIT_TERMS = frozenset(
    {
        "month_end_invoice",
        "date_from_invoice",
        "immediate_invoice",
        "month_end_payment",
        "date_from_payment",
        "immediate_payment",
    }
)
IDEMPOTENCY_ID = re.compile(r"^[0-9a-fA-F]{32}$")


@dataclass
class UserState:
    login: str
    id: str
    data: dict[str, Any]
    business_ids: list[str]

    @property
    def lead(self) -> str:
        # §3.1 [G-bp]: the lead business is the first business the user created.
        return self.business_ids[0]


@dataclass
class Reply:
    status: int
    body: Any


@dataclass
class Ctx:
    method: str
    path: str  # relative to /v3.1, e.g. "/contacts"
    params: list[tuple[str, str]]
    path_params: dict[str, str]
    body: Any
    now: float
    config: SimConfig
    ids: Ids
    user: UserState
    businesses: dict[str, BusinessData]
    biz_id: str | None = None

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None

    @property
    def biz(self) -> BusinessData:
        assert self.biz_id is not None
        return self.businesses[self.biz_id]


class Errors:
    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, source: str, message: str = "This field is required.") -> None:
        self.items.append(invalid(source, message))

    def check(self) -> None:
        if self.items:
            raise ApiError(422, self.items)


# --------------------------------------------------------------------------------------------- helpers


def wrapped(ctx: Ctx, wrapper: str) -> dict[str, Any]:
    """§9: request bodies are wrapped in the singular resource name, e.g. ``{"contact": {...}}``."""
    payload = ctx.body.get(wrapper) if isinstance(ctx.body, dict) else None
    if not isinstance(payload, dict):
        raise ApiError(422, [invalid(wrapper)])
    return payload


def page_params(ctx: Ctx, default: int, low: int, high: int) -> tuple[int, int]:
    def as_int(name: str, fallback: int) -> int:
        raw = ctx.param(name)
        if raw is None or raw == "":
            return fallback
        try:
            return int(raw)
        except ValueError:
            raise ApiError(422, [invalid(name, "is not a number")]) from None

    per_page = as_int("items_per_page", default)
    if not low <= per_page <= high:
        # §4.1: the range is declared, the out-of-range behaviour is not; see SimConfig.
        if ctx.config.items_per_page_out_of_range == "reject":
            raise ApiError(422, [invalid("items_per_page", f"must be between {low} and {high}")])
        per_page = min(max(per_page, low), high)
    return max(as_int("page", 1), 1), per_page


def since_filter(ctx: Ctx) -> Callable[[Record], bool] | None:
    raw = ctx.param("updated_or_created_since")
    if raw is None:
        return None
    try:
        since = parse_since(raw)
    except ValueError:
        raise ApiError(422, [invalid("updated_or_created_since", "is not a valid date-time")]) from None
    # §4.3 [SPEC] "Inclusive of the passed timestamp"; timestamps have whole-second precision on the wire.
    return lambda r: int(r.updated) >= since


def sync_filters(ctx: Ctx) -> list[Callable[[Record], bool]]:
    """``updated_or_created_since`` (inclusive) and ``deleted_since`` (exclusive), §4.3."""
    filters: list[Callable[[Record], bool]] = []
    since = since_filter(ctx)
    if since:
        filters.append(since)
    raw = ctx.param("deleted_since")
    if raw is not None:
        try:
            deleted = parse_since(raw)
        except ValueError:
            raise ApiError(422, [invalid("deleted_since", "is not a valid date-time")]) from None
        # The simulator never hard-deletes, so only records carrying a deleted_at can match; answering all
        # live records here would make a connector treat them as deletions.
        filters.append(
            lambda r: bool(r.data.get("deleted_at")) and parse_since(r.data["deleted_at"]) > deleted
        )
    return filters


def date_param(ctx: Ctx, name: str) -> str | None:
    raw = ctx.param(name)
    if raw is None:
        return None
    if parse_date(raw) is None:
        raise ApiError(422, [invalid(name, "is not a valid date")])
    return raw


def list_reply(
    ctx: Ctx,
    records: Sequence[Record],
    filters: list[Callable[[Record], bool]],
) -> Reply:
    page, per_page = page_params(ctx, DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
    if filters:
        # The single O(N) pass a filtered request may cost; unfiltered pages are plain slices.
        records = [r for r in records if all(f(r) for f in filters)]
    attributes = parse_attributes(ctx.param("attributes"), default_all=False)
    body = envelope(
        records, path=ctx.path, page=page, per_page=per_page, params=ctx.params, attributes=attributes
    )
    return Reply(200, body)


def lookup(biz: BusinessData, collection: str, ident: Any) -> Record:
    found = biz.coll(collection).get(ident) if isinstance(ident, str) else None
    if found is None:
        raise not_found()
    return found


def get_one(ctx: Ctx, collection: str) -> Reply:
    record = lookup(ctx.biz, collection, ctx.path_params["key"])
    # §4.2 [G-attr]: "attributes=all is the default when requesting singular resources".
    return Reply(200, project(record, parse_attributes(ctx.param("attributes"), default_all=True)))


def money_field(
    payload: dict[str, Any], key: str, errs: Errors, source: str, *, required: bool
) -> Decimal | None:
    if key not in payload or payload[key] is None or payload[key] == "":
        if required:
            errs.add(source)
        return None
    value = parse_decimal(payload[key])
    if value is None:
        errs.add(source, "is not a number")
    return value


def text_field(
    payload: dict[str, Any], key: str, errs: Errors, source: str, *, required: bool = False, max_len: int = 0
) -> str | None:
    value = payload.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            errs.add(source)
        return None
    if not isinstance(value, str):
        errs.add(source, "must be a string")
        return None
    if max_len and len(value) > max_len:
        errs.add(source, f"is too long (maximum is {max_len} characters)")
    return value


# --------------------------------------------------------------------------------------------- read-only


def list_plain(collection: str) -> Callable[[Ctx], Reply]:
    def handler(ctx: Ctx) -> Reply:
        since = since_filter(ctx)
        return list_reply(ctx, ctx.biz.coll(collection).order, [since] if since else [])

    return handler


def get_plain(collection: str) -> Callable[[Ctx], Reply]:
    return lambda ctx: get_one(ctx, collection)


def list_ledger_accounts(ctx: Ctx) -> Reply:
    filters: list[Callable[[Record], bool]] = []
    since = since_filter(ctx)
    if since:
        filters.append(since)
    visible_in = ctx.param("visible_in")
    if visible_in:
        flag = f"visible_in_{visible_in}"
        filters.append(lambda r: bool(r.data.get(flag)))
    type_id = ctx.param("ledger_account_type_id")
    if type_id:
        filters.append(lambda r: r.data["ledger_account_type"]["id"] == type_id)
    search = (ctx.param("search") or "").lower()
    if search:
        filters.append(lambda r: search in r.data["displayed_as"].lower())
    return list_reply(ctx, ctx.biz.coll("ledger_accounts").order, filters)


# --------------------------------------------------------------------------------------------- businesses


def list_businesses(ctx: Ctx) -> Reply:
    """§3.2: its own paging parameters and the snake-case ``$items_per_page`` key."""
    default, low, high = BUSINESSES_PER_PAGE
    page_params(ctx, default, low, high)
    name = (ctx.param("name") or "").lower()
    data = [ctx.businesses[b].data for b in ctx.user.business_ids]
    items = [{"displayed_as": d["displayed_as"], "id": d["id"], "$path": d["$path"]} for d in data]
    items = [i for i in items if name in i["displayed_as"].lower()]
    # §3.2: every example answers all businesses in one page with $items_per_page 2147483647.
    body = {"$total": len(items), "$page": 1, "$next": None, "$back": None}
    return Reply(200, {**body, "$items_per_page": BUSINESSES_ITEMS_PER_PAGE_VALUE, "$items": items})


def get_business(ctx: Ctx) -> Reply:
    key = ctx.path_params["key"]
    # §3.3 [MOD]: "Use lead to get your lead business."
    biz_id = ctx.user.lead if key == "lead" else key
    if biz_id not in ctx.user.business_ids:
        raise not_found()
    return Reply(200, ctx.businesses[biz_id].data)


def get_user(ctx: Ctx) -> Reply:
    return Reply(200, ctx.user.data)


# --------------------------------------------------------------------------------------------- contacts


def list_contacts(ctx: Ctx) -> Reply:
    filters = sync_filters(ctx)
    # §4.3 [SPEC]: contact_type_id; no other spelling is documented, so others are ignored like any
    # unknown parameter.
    type_id = ctx.param("contact_type_id")
    if type_id:
        filters.append(lambda r: any(t["id"] == type_id for t in r.data["contact_types"]))
    search = (ctx.param("search") or "").lower()
    if search:
        filters.append(
            lambda r: search in r.data["name"].lower() or search in (r.data.get("reference") or "").lower()
        )
    email = (ctx.param("email") or "").lower()
    if email:
        filters.append(lambda r: (r.data.get("email") or "").lower() == email)
    if (ctx.param("exclude_system") or "").lower() == "true":
        filters.append(lambda r: not r.data["system"])
    return list_reply(ctx, ctx.biz.coll("contacts").order, filters)


_ADDRESS_KEYS = (
    "address_type_id",
    "name",
    "address_line_1",
    "address_line_2",
    "city",
    "region",
    "postal_code",
    "country_id",
    "country_group_id",
    "is_main_address",
)
_PERSON_KEYS = (
    "name",
    "job_title",
    "telephone",
    "mobile",
    "email",
    "fax",
    "is_main_contact",
    "contact_person_type_ids",
)


def _contact_fields(
    ctx: Ctx, payload: dict[str, Any], *, creating: bool, self_id: str | None
) -> dict[str, Any]:
    """Validate ``postContacts``/``putContacts`` (§10.1) into normalised fields."""
    biz = ctx.biz
    errs = Errors()
    out: dict[str, Any] = {}
    if creating or "name" in payload:
        name = text_field(payload, "name", errs, "name", required=True, max_len=100)
        if name is not None:
            out["name"] = name
    if creating or "contact_type_ids" in payload:
        types = payload.get("contact_type_ids")
        if not isinstance(types, list) or not types:
            errs.add("contact_type_ids")
        elif len(types) > 1:
            # §10.1 [G-inv]: "you cannot assign more than one contact_type_id".
            errs.add("contact_type_ids", "You cannot assign more than one contact type.")
        elif types[0] not in ("CUSTOMER", "VENDOR"):
            errs.add("contact_type_ids", "is invalid")
        else:
            out["contact_type_ids"] = [types[0]]
    if "reference" in payload:
        reference = text_field(payload, "reference", errs, "reference", max_len=10)
        if reference is not None and any(
            r.data.get("reference") == reference and r.id != self_id for r in biz.coll("contacts").order
        ):
            # §10.1 [SPEC]: "Unique reference for the contact".
            errs.add("reference", "has already been taken")
        out["reference"] = reference
    for key, limit in (("tax_number", 255), ("notes", 4000), ("credit_terms_and_conditions", 2000)):
        if key in payload:
            out[key] = text_field(payload, key, errs, key, max_len=limit)
    for key in ("locale", "source_guid", "aux_reference", "registered_number", "tax_calculation"):
        if key in payload:
            out[key] = text_field(payload, key, errs, key, max_len=255)
    if "credit_limit" in payload:
        out["credit_limit"] = money_field(payload, "credit_limit", errs, "credit_limit", required=False)
    if "credit_days" in payload and payload["credit_days"] is not None:
        days = payload["credit_days"]
        if isinstance(days, bool) or not isinstance(days, int | str) or not str(days).isdigit():
            errs.add("credit_days", "is not a number")
        elif not 0 <= int(days) <= 365:
            errs.add("credit_days", "must be between 0 and 365")
        else:
            out["credit_days"] = int(days)
    if payload.get("credit_terms") is not None:
        if payload["credit_terms"] not in CREDIT_TERMS:
            errs.add("credit_terms", "is invalid")
        else:
            out["credit_terms"] = payload["credit_terms"]
    if "destination_vat_blocking" in payload:
        out["destination_vat_blocking"] = bool(payload["destination_vat_blocking"])
    for key, keys in (("main_address", _ADDRESS_KEYS), ("delivery_address", _ADDRESS_KEYS)):
        if isinstance(payload.get(key), dict):
            out[key] = {k: payload[key][k] for k in keys if k in payload[key]}
    if isinstance(payload.get("main_contact_person"), dict):
        person = {
            k: payload["main_contact_person"][k] for k in _PERSON_KEYS if k in payload["main_contact_person"]
        }
        if len(str(person.get("email") or "")) > 100:
            errs.add("main_contact_person.email", "is too long (maximum is 100 characters)")
        out["main_contact_person"] = person
    if isinstance(payload.get("bank_account_details"), dict):
        bank_keys = ("account_name", "account_number", "sort_code", "bic", "iban")
        out["bank_account_details"] = {k: payload["bank_account_details"].get(k) for k in bank_keys}
    if isinstance(payload.get("tax_treatment"), dict):
        out["tax_treatment"] = dict(payload["tax_treatment"])
    errs.check()
    for key, collection in (
        ("default_sales_ledger_account_id", "ledger_accounts"),
        ("default_purchase_ledger_account_id", "ledger_accounts"),
        ("default_sales_tax_rate_id", "tax_rates"),
        ("currency_id", "currencies"),
    ):
        if payload.get(key) is not None:
            out[key] = lookup(biz, collection, payload[key]).id
    return out


def create_contact(ctx: Ctx) -> Reply:
    fields = _contact_fields(ctx, wrapped(ctx, "contact"), creating=True, self_id=None)
    record = add_contact(ctx.biz, ctx.ids, fields, ctx.now)
    return Reply(201, record.data)


def update_contact(ctx: Ctx) -> Reply:
    contacts = ctx.biz.coll("contacts")
    record = lookup(ctx.biz, "contacts", ctx.path_params["key"])
    changes = _contact_fields(ctx, wrapped(ctx, "contact"), creating=False, self_id=record.id)
    fields: dict[str, Any] = record.extra["fields"]
    fields.update(changes)
    new_contact_fields(ctx.ids, fields)
    record.data = contact_data(record.id, fields, ctx.biz, (record.data["created_at"], iso(ctx.now)))
    contacts.touch(record, ctx.now)
    return Reply(200, record.data)


# --------------------------------------------------------------------------------------------- invoices


@dataclass
class Line:
    description: str
    ledger: Record
    quantity: Decimal
    unit_price: Decimal
    tax_rate: Record | None
    tax_amount: Decimal
    discount: Decimal = Decimal(0)
    discount_pct: Decimal | None = None
    includes_tax: bool = False
    net: Decimal = field(init=False)

    def __post_init__(self) -> None:
        # §10.2 [G-inv]: net = quantity * unit_price - discount, total = net + tax. The tax itself is the
        # client's: Sage never derives it from the rate (factcheck §1b).
        gross = round_money(self.quantity * self.unit_price - self.discount)
        self.net = gross - self.tax_amount if self.includes_tax else gross


def _line_data(ids: Ids, line: Line) -> dict[str, Any]:
    rate = line.tax_rate
    breakdown = (
        [
            {
                "tax_rate": tax_rate_ref(rate),
                "percentage": rate.data["percentage"],
                "amount": fmt_money(line.tax_amount),
            }
        ]
        if rate is not None and Decimal(rate.data["percentage"]) != 0
        else []
    )
    base = line.quantity * line.unit_price
    pct = line.discount_pct
    if pct is None:
        pct = round_money(line.discount / base * 100) if base else Decimal(0)
    ledger = ref("ledger_accounts", line.ledger.id, line.ledger.data["displayed_as"])
    net, tax, total = fmt_money(line.net), fmt_money(line.tax_amount), fmt_money(line.net + line.tax_amount)
    return {
        "id": ids.new(),
        "displayed_as": line.description,
        "analysis_type_categories": [],
        "description": line.description,
        "product": None,
        "service": None,
        "ledger_account": ledger,
        "trade_of_asset": False,
        "quantity": fmt_money(line.quantity),
        "unit_price": fmt_money(line.unit_price),
        "net_amount": net,
        "tax_rate": tax_rate_ref(rate) if rate is not None else None,
        "tax_amount": tax,
        "tax_breakdown": breakdown,
        "total_amount": total,
        "base_currency_unit_price": fmt_money(line.unit_price),
        "unit_price_includes_tax": line.includes_tax,
        "base_currency_net_amount": net,
        "base_currency_tax_amount": tax,
        "base_currency_tax_breakdown": breakdown,
        "base_currency_total_amount": total,
        "eu_goods_services_type": None,
        "discount_amount": fmt_money(line.discount),
        "base_currency_discount_amount": fmt_money(line.discount),
        "discount_percentage": fmt_money(pct),
        "eu_sales_description": None,
    }


@dataclass
class InvoiceHeader:
    contact: Record
    date: dt.date
    due_date: dt.date
    status: str
    reference: str | None = None
    invoice_number: str | None = None
    contact_name: str | None = None
    contact_reference: str | None = None
    notes: str | None = None
    terms_and_conditions: str | None = None
    shipping_net: Decimal = Decimal(0)
    shipping_rate: Record | None = None
    shipping_tax: Decimal = Decimal(0)


def _free_form(address: dict[str, Any] | None) -> str | None:
    if not address:
        return None
    keys = ("address_line_1", "address_line_2", "city", "region", "postal_code")
    return "\n".join(str(address[k]) for k in keys if address.get(k))


def build_invoice(biz: BusinessData, ids: Ids, now: float, head: InvoiceHeader, lines: list[Line]) -> Record:
    """Create the SalesInvoice record (§10.2 response fields) and mark the contact as used."""
    ident = ids.new()
    stamp = iso(now)
    contact_fields: dict[str, Any] = head.contact.extra["fields"]
    issued = head.status == "UNPAID"
    if issued:
        number = head.invoice_number or f"SI-{biz.next_invoice_number}"
        if head.invoice_number is None:
            biz.next_invoice_number += 1
    else:
        number = head.invoice_number or "SI-DRAFT"  # §10.2: "SI-DRAFT" while draft
    net = sum((ln.net for ln in lines), head.shipping_net)
    tax = sum((ln.tax_amount for ln in lines), head.shipping_tax)
    total = net + tax
    analysis: dict[str, list[Decimal]] = {}
    rates: dict[str, Record] = {}
    for ln in lines:
        if ln.tax_rate is not None:
            rates[ln.tax_rate.id] = ln.tax_rate
            sums = analysis.setdefault(ln.tax_rate.id, [Decimal(0), Decimal(0)])
            sums[0] += ln.net
            sums[1] += ln.tax_amount
    outstanding = total if issued else Decimal(0)  # §10.2 [G-inv] draft example: outstanding "0.0"
    shipping_total = head.shipping_net + head.shipping_tax
    money = fmt_money
    data: dict[str, Any] = {
        "id": ident,
        "displayed_as": number,
        "$path": f"/sales_invoices/{ident}",
        "created_at": stamp,
        "updated_at": stamp,
        "links": [
            {
                "href": f"https://accounts-extra.sageone.com/invoicing/sales_invoices/{ident}",
                "rel": "alternate",
                "type": "text/html",
            }
        ],
        "editable": True,
        "vat_reverse_charge": False,
        "tax_calculation_method": None,
        "destination_consignment": None,
        "destination_vat_rates_in_use": False,
        "transaction": ref("transactions", ids.new(), number) if issued else None,  # null for drafts (§10.2)
        "transaction_type": ref("transaction_types", "SALES_INVOICE", "Sales Invoice"),
        "deleted_at": None,
        "is_cis": False,
        "cis_applicable_amount": None,
        "base_currency_cis_applicable_amount": None,
        "total_after_cis_deduction": None,
        "base_currency_total_after_cis_deduction": None,
        "has_cis_labour": False,
        "has_cis_materials": False,
        "contact": ref("contacts", head.contact.id, head.contact.data["displayed_as"]),
        "recurring_invoice": None,
        "invoice_number_prefix": "SI-",
        "invoice_number": number,
        # §11 [G-inv]: contact name/reference/address are copied at creation and never follow the contact.
        "contact_name": head.contact_name or head.contact.data["name"],
        "contact_reference": head.contact_reference or head.contact.data.get("reference") or "",
        "date": head.date.isoformat(),
        "due_date": head.due_date.isoformat(),
        "reference": head.reference,
        "main_address_free_form": _free_form(contact_fields.get("main_address")),
        "main_address": None,
        "delivery_address_free_form": _free_form(contact_fields.get("delivery_address")),
        "delivery_address": None,
        "notes": head.notes or "",
        "terms_and_conditions": head.terms_and_conditions or "",
        "shipping_net_amount": money(head.shipping_net),
        "shipping_tax_rate": tax_rate_ref(head.shipping_rate) if head.shipping_rate else None,
        "shipping_tax_amount": money(head.shipping_tax),
        "shipping_tax_breakdown": [],
        "shipping_total_amount": money(shipping_total),
        "net_amount": money(net),
        "tax_amount": money(tax),
        "total_amount": money(total),
        "payments_allocations_total_amount": "0.0",
        "payments_allocations_total_discount": "0.0",
        "total_paid": "0.0",
        "outstanding_amount": money(outstanding),
        "currency": GBP,
        "exchange_rate": "1.0",
        "inverse_exchange_rate": "1.0",
        "base_currency_shipping_net_amount": money(head.shipping_net),
        "base_currency_shipping_tax_amount": money(head.shipping_tax),
        "base_currency_shipping_tax_breakdown": [],
        "base_currency_shipping_total_amount": money(shipping_total),
        "total_quantity": money(sum((ln.quantity for ln in lines), Decimal(0))),
        "total_discount_amount": money(sum((ln.discount for ln in lines), Decimal(0))),
        "base_currency_total_discount_amount": money(sum((ln.discount for ln in lines), Decimal(0))),
        "base_currency_net_amount": money(net),
        "base_currency_tax_amount": money(tax),
        "base_currency_total_amount": money(total),
        "base_currency_outstanding_amount": money(outstanding),
        "status": status_ref(head.status),
        "sent": False,
        "sent_by_email": False,
        "void_reason": None,
        "invoice_lines": [_line_data(ids, ln) for ln in lines],
        "tax_analysis": [
            {
                "tax_rate": tax_rate_ref(rates[rate_id]),
                "net_amount": money(sums[0]),
                "tax_amount": money(sums[1]),
                "total_amount": money(sums[0] + sums[1]),
                "goods_amount": "0.0",
                "service_amount": "0.0",
            }
            for rate_id, sums in analysis.items()
        ],
        "detailed_tax_analysis": None,
        "payments_allocations": [],
        "last_paid": None,
        "original_quote_estimate": None,
        "tax_address_region": None,
        "delivery_performance_date": None,
        "withholding_tax_rate": None,
        "withholding_tax_amount": None,
        "base_currency_withholding_tax_amount": None,
        "corrections": [],
        "tax_reconciled": False,
        "migrated": False,
    }
    if not contact_fields.get("_has_transactions"):
        contact_fields["_has_transactions"] = True
        head.contact.data["deletable"] = False
    return biz.coll("sales_invoices").add(Record(ident, data, now, now))


def _parse_line(
    ctx: Ctx, raw: Any, errs: Errors
) -> tuple[dict[str, Any], Decimal | None, Decimal | None, Decimal | None, Decimal | None] | None:
    src = "invoice_lines"
    if not isinstance(raw, dict):
        errs.add(src, "is invalid")
        return None
    text_field(raw, "description", errs, f"{src}.description", required=True)
    if not raw.get("ledger_account_id"):
        errs.add(f"{src}.ledger_account_id")
    strict = ctx.config.require_quantity_and_tax_rate
    unit_price = money_field(raw, "unit_price", errs, f"{src}.unit_price", required=True)
    quantity = money_field(raw, "quantity", errs, f"{src}.quantity", required=strict)
    if strict and not raw.get("tax_rate_id"):
        errs.add(f"{src}.tax_rate_id")
    tax_amount = money_field(raw, "tax_amount", errs, f"{src}.tax_amount", required=False)
    discount = money_field(raw, "discount_amount", errs, f"{src}.discount_amount", required=False)
    return raw, unit_price, quantity, tax_amount, discount


def create_sales_invoice(ctx: Ctx) -> Reply:
    payload = wrapped(ctx, "sales_invoice")
    biz = ctx.biz
    errs = Errors()
    # §10.2 postSalesInvoices required: contact_id, date, invoice_lines.
    if not payload.get("contact_id"):
        errs.add("contact_id")
    date = parse_date(payload.get("date"))
    if payload.get("date") in (None, ""):
        errs.add("date")
    elif date is None:
        errs.add("date", "is not a valid date")
    due_date = parse_date(payload.get("due_date"))
    if payload.get("due_date") not in (None, "") and due_date is None:
        errs.add("due_date", "is not a valid date")
    reference = text_field(payload, "reference", errs, "reference", max_len=25)
    invoice_number = text_field(payload, "invoice_number", errs, "invoice_number", max_len=25)
    status = payload.get("status_id") or "UNPAID"
    if status not in ("UNPAID", "DRAFT", "PRO_FORMA"):
        # §10.2: "Directly after creation, invoices can only be UNPAID, DRAFT or PRO_FORMA."
        errs.add("status_id", "is invalid")
    raw_lines = payload.get("invoice_lines")
    parsed: list[tuple[dict[str, Any], Decimal | None, Decimal | None, Decimal | None, Decimal | None]] = []
    if not isinstance(raw_lines, list) or not raw_lines:
        errs.add("invoice_lines")
    else:
        for raw in raw_lines:
            one = _parse_line(ctx, raw, errs)
            if one is not None:
                parsed.append(one)
    shipping_net = money_field(payload, "shipping_net_amount", errs, "shipping_net_amount", required=False)
    shipping_tax = money_field(payload, "shipping_tax_amount", errs, "shipping_tax_amount", required=False)
    errs.check()
    if payload.get("currency_id") not in (None, "GBP"):
        lookup(biz, "currencies", payload["currency_id"])
        raise ApiError(422, [invalid("currency_id", "Foreign currency invoices are not simulated.")])

    contact = lookup(biz, "contacts", payload["contact_id"])
    if not any(t["id"] == "CUSTOMER" for t in contact.data["contact_types"]):
        # §10.2 / §5.1 [G-bp] "can't find customer"; [STAFF #29] shows the wording and the empty $source.
        raise ApiError(422, [error_item("RecordInvalid", "Couldn't find Customer.", "")])
    lines: list[Line] = []
    for raw, unit_price, quantity, given_tax, given_discount in parsed:
        ledger = lookup(biz, "ledger_accounts", raw["ledger_account_id"])
        if not ledger.data["visible_in_sales"]:
            # §10.2 [G-inv], [STAFF #32]: invoice lines take ledger accounts from visible_in=sales.
            errs.add("invoice_lines.ledger_account_id", "is not a valid sales ledger account")
        rate = lookup(biz, "tax_rates", raw["tax_rate_id"]) if raw.get("tax_rate_id") else None
        zero_type = rate is None or rate.data["name"] in ZERO_TYPE_RATES
        tax_amount = given_tax
        if tax_amount is None:
            if not zero_type and ctx.config.missing_tax_amount == "reject":
                # §10.2 [SPEC] "required in v3.1, unless the tax rate is of a zero, exempt or no_tax type";
                # factcheck §1: 422 RecordInvalid naming invoice_lines.tax_amount.
                errs.add("invoice_lines.tax_amount")
            tax_amount = Decimal(0)
        assert unit_price is not None
        pct = parse_decimal(raw.get("discount_percentage"))
        base = (quantity if quantity is not None else Decimal(1)) * unit_price
        discount = given_discount
        if discount is None:
            discount = round_money(base * pct / 100) if pct is not None else Decimal(0)
        lines.append(
            Line(
                description=str(raw["description"]),
                ledger=ledger,
                quantity=quantity if quantity is not None else Decimal(1),
                unit_price=unit_price,
                tax_rate=rate,
                tax_amount=round_money(tax_amount),
                discount=round_money(discount),
                discount_pct=pct,
                includes_tax=bool(raw.get("unit_price_includes_tax", False)),
            )
        )
    errs.check()
    assert date is not None
    shipping_rate = (
        lookup(biz, "tax_rates", payload["shipping_tax_rate_id"])
        if payload.get("shipping_tax_rate_id")
        else None
    )
    ship_net = round_money(shipping_net or Decimal(0))
    if shipping_tax is None:
        # §10.2 / factcheck §1: shipping tax is the one amount Sage computes ("calculated when omitted").
        pct_rate = Decimal(shipping_rate.data["percentage"]) if shipping_rate else Decimal(0)
        shipping_tax = ship_net * pct_rate / 100
    credit_days = contact.extra["fields"].get("credit_days")
    if credit_days is None:
        credit_days = ctx.config.default_credit_days
    head = InvoiceHeader(
        contact=contact,
        date=date,
        due_date=due_date or date + dt.timedelta(days=credit_days),
        status=status,
        reference=reference,
        invoice_number=invoice_number,
        contact_name=text_field(payload, "contact_name", errs, "contact_name"),
        contact_reference=text_field(payload, "contact_reference", errs, "contact_reference"),
        notes=text_field(payload, "notes", errs, "notes"),
        terms_and_conditions=text_field(payload, "terms_and_conditions", errs, "terms_and_conditions"),
        shipping_net=ship_net,
        shipping_rate=shipping_rate,
        shipping_tax=round_money(shipping_tax),
    )
    errs.check()
    record = build_invoice(biz, ctx.ids, ctx.now, head, lines)
    return Reply(201, record.data)


def list_sales_invoices(ctx: Ctx) -> Reply:
    coll = ctx.biz.coll("sales_invoices")
    records: Sequence[Record] = coll.order
    sort = ctx.param("sort")
    if (
        sort
    ):  # §4.4: documented only for the transactional lists; other lists ignore it like any unknown param
        key, _, direction = sort.partition(":")
        if key not in INVOICE_SORT_KEYS or direction not in ("", "asc", "desc"):
            raise ApiError(422, [invalid("sort", "is invalid")])
        records = coll.sorted_by(key, direction == "desc")
    filters = sync_filters(ctx)
    contact_id = ctx.param("contact_id")
    if contact_id:
        filters.append(lambda r: r.data["contact"]["id"] == contact_id)
    status_id = ctx.param("status_id")
    if status_id:
        filters.append(lambda r: r.data["status"]["id"] == status_id)
    from_date, to_date = date_param(ctx, "from_date"), date_param(ctx, "to_date")
    if from_date:
        filters.append(lambda r: r.data["date"] >= from_date)
    if to_date:
        filters.append(lambda r: r.data["date"] <= to_date)
    search = (ctx.param("search") or "").lower()
    if search:
        # §4.3 [SPEC]: "filter by the invoice reference or contact name".
        filters.append(
            lambda r: (
                search in (r.data.get("reference") or "").lower()
                or search in r.data["invoice_number"].lower()
                or search in r.data["contact_name"].lower()
            )
        )
    return list_reply(ctx, records, filters)


def void_sales_invoice(ctx: Ctx) -> Reply:
    """§11 / factcheck §6: DELETE voids; ``void_reason`` as query parameter or JSON body; 200 + invoice."""
    coll = ctx.biz.coll("sales_invoices")
    record = lookup(ctx.biz, "sales_invoices", ctx.path_params["key"])
    reason = ctx.param("void_reason")
    if not reason and isinstance(ctx.body, dict):
        body_reason = ctx.body.get("void_reason")
        if body_reason is None and isinstance(ctx.body.get("sales_invoice"), dict):
            body_reason = ctx.body["sales_invoice"].get("void_reason")
        reason = body_reason if isinstance(body_reason, str) else None
    status = record.data["status"]["id"]
    if status == "VOID":
        raise ApiError(422, [invalid("base", "The invoice has already been voided.")])
    if status in ("PAID", "PART_PAID"):
        # §11 [G-inv]: "You cannot directly void any invoice that has payments or allocations."
        raise ApiError(422, [invalid("base", "You cannot void an invoice that has payments or allocations.")])
    if not reason and status != "DRAFT":
        # §11 [SPEC]: void_reason is "required unless status is DRAFT".
        raise ApiError(422, [invalid("void_reason")])
    if reason and len(reason) > 200:
        raise ApiError(422, [invalid("void_reason", "is too long (maximum is 200 characters)")])
    record.data["status"] = status_ref("VOID")
    record.data["void_reason"] = reason or None
    record.data["editable"] = False
    coll.touch(record, ctx.now)
    return Reply(200, record.data)


def release_sales_invoice(ctx: Ctx) -> Reply:
    """§10.2: ``POST /sales_invoices/{id}/release`` moves DRAFT/PRO_FORMA to UNPAID; [SPEC] answers 201."""
    biz = ctx.biz
    record = lookup(biz, "sales_invoices", ctx.path_params["key"])
    if record.data["status"]["id"] not in ("DRAFT", "PRO_FORMA"):
        raise ApiError(422, [invalid("base", "Only draft or pro-forma invoices can be released.")])
    data = record.data
    if data["invoice_number"] == "SI-DRAFT":
        data["invoice_number"] = f"SI-{biz.next_invoice_number}"
        biz.next_invoice_number += 1
    data["displayed_as"] = data["invoice_number"]
    data["status"] = status_ref("UNPAID")
    data["transaction"] = ref("transactions", ctx.ids.new(), data["invoice_number"])
    data["outstanding_amount"] = data["total_amount"]
    data["base_currency_outstanding_amount"] = data["base_currency_total_amount"]
    biz.coll("sales_invoices").touch(record, ctx.now)
    return Reply(201, data)


# --------------------------------------------------------------------------------------------- journals


def create_journal(ctx: Ctx) -> Reply:
    """§10.3 / factcheck §9: header date, reference, journal_lines; lines ledger_account_id, debit, credit."""
    payload = wrapped(ctx, "journal")
    biz = ctx.biz
    errs = Errors()
    date = parse_date(payload.get("date"))
    if payload.get("date") in (None, ""):
        errs.add("date")
    elif date is None:
        errs.add("date", "is not a valid date")
    reference = text_field(payload, "reference", errs, "reference", required=True, max_len=255)
    description = text_field(payload, "description", errs, "description", max_len=200)
    raw_lines = payload.get("journal_lines")
    parsed: list[tuple[dict[str, Any], Decimal, Decimal]] = []
    if not isinstance(raw_lines, list) or not raw_lines:
        errs.add("journal_lines")
    else:
        for raw in raw_lines:
            if not isinstance(raw, dict):
                errs.add("journal_lines", "is invalid")
                continue
            if not raw.get("ledger_account_id"):
                errs.add("journal_lines.ledger_account_id")
            debit = money_field(raw, "debit", errs, "journal_lines.debit", required=True)
            credit = money_field(raw, "credit", errs, "journal_lines.credit", required=True)
            for name, value in (("debit", debit), ("credit", credit)):
                if value is not None and value < 0:
                    errs.add(f"journal_lines.{name}", "must be greater than or equal to 0")
            if debit is not None and credit is not None:
                parsed.append((raw, round_money(debit), round_money(credit)))
    errs.check()
    total_debit = sum((d for _, d, _ in parsed), Decimal(0))
    total_credit = sum((c for _, _, c in parsed), Decimal(0))
    if total_debit != total_credit:
        # §10.3 [G-jnl] "for every debit balance, there must be a corresponding credit balance"; the
        # rejection is UNCONFIRMED, 422 RecordInvalid on the record (factcheck §9).
        raise ApiError(422, [invalid("base", "The total debits must equal the total credits.")])
    lines: list[dict[str, Any]] = []
    for raw, debit, credit in parsed:
        ledger = lookup(biz, "ledger_accounts", raw["ledger_account_id"])
        lines.append(
            {
                "id": ctx.ids.new(),
                "ledger_account": ref("ledger_accounts", ledger.id, ledger.data["displayed_as"]),
                "details": raw.get("details"),
                "debit": fmt_money(debit),
                "credit": fmt_money(credit),
                "analysis_type_categories": [],
                "include_on_tax_return": bool(raw.get("include_on_tax_return", False)),
                # §10.3: sent values of these flags are ignored; the response always shows false.
                "tax_reconciled": False,
                "cleared": False,
                "bank_reconciled": False,
                "journal_line_foreign_currency": {
                    "currency_debit": None,
                    "currency_credit": None,
                    "exchange_rate": None,
                },
            }
        )
    assert date is not None and reference is not None
    ident = ctx.ids.new()
    stamp = iso(ctx.now)
    data = {
        "id": ident,
        "displayed_as": reference,  # §10.3: displayed_as of a journal equals its reference
        "$path": f"/journals/{ident}",
        "created_at": stamp,
        "updated_at": stamp,
        "transaction": ref("transactions", ctx.ids.new(), reference),
        "transaction_type": ref("transaction_types", "JOURNAL", "Journal"),
        "deleted_at": None,
        "date": date.isoformat(),
        "reference": reference,
        "description": description,
        "total": fmt_money(total_debit),
        "journal_code": None,
        "journal_lines": lines,
        "migrated": False,
    }
    record = biz.coll("journals").add(Record(ident, data, ctx.now, ctx.now))
    return Reply(201, record.data)


def list_journals(ctx: Ctx) -> Reply:
    return list_reply(ctx, ctx.biz.coll("journals").order, sync_filters(ctx))


def idempotency_id_valid(value: Any) -> bool:
    # factcheck §2: "a random 32 character hyphenless GUID".
    return isinstance(value, str) and bool(IDEMPOTENCY_ID.match(value))


def records_of(coll: Collection) -> list[dict[str, Any]]:
    return [r.data for r in coll.order]
