"""Wire shapes of the resources and the UK seed data (sage-accounting-wire.md §3, §10, §12.8).

Shapes follow the verbatim [MOD] examples quoted in the doc; a field the simulator has no behaviour for is
still emitted with the value a fresh UK business shows, so connectors parse realistic payloads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .store import BusinessData, Record
from .wire import fmt_money, iso, ref

GBP = {"id": "GBP", "displayed_as": "Pound Sterling (GBP)", "$path": "/currencies/GBP"}
CONTACT_TYPE_NAMES = {"CUSTOMER": "Customer", "VENDOR": "Supplier"}  # §10.1 GET /contact_types
STATUS_NAMES = {
    "DRAFT": "Draft",
    "UNPAID": "Unpaid",
    "PART_PAID": "Part Paid",
    "PAID": "Paid",
    "VOID": "Void",
    "PRO_FORMA": "Pro-Forma",
}
# §10.2 SPEC on tax_amount: not required when the rate is of a "zero", "exempt" or "no_tax" type.
ZERO_TYPE_RATES = frozenset({"ZERO", "EXEMPT", "NO_TAX"})


class Ids:
    """32-char lowercase hex ids like Sage's (§9); reproducible when seeded."""

    def __init__(self, seed: int | None) -> None:
        # Ids are not secrets (tokens come from ``secrets``): a plain PRNG is fast enough for bulk seeding
        # and, when seeded, makes runs reproducible. Unseeded, it starts from OS entropy.
        self._rng = random.Random(seed)  # noqa: S311

    def new(self) -> str:
        return f"{self._rng.getrandbits(128):032x}"

    def number(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)


def status_ref(status: str) -> dict[str, str]:
    return ref("artefact_statuses", status, STATUS_NAMES[status])


def contact_type_ref(type_id: str) -> dict[str, str]:
    return ref("contact_types", type_id, CONTACT_TYPE_NAMES[type_id])


def tax_rate_ref(record: Record) -> dict[str, str]:
    return ref("tax_rates", record.id, record.data["displayed_as"])


def business_data(biz_id: str, name: str, ts: float) -> dict[str, Any]:
    """Shape of [MOD] ``PUT /businesses/{key}`` (§3.3)."""
    stamp = iso(ts)
    return {
        "created_at": stamp,
        "updated_at": stamp,
        "displayed_as": name,
        "id": biz_id,
        "name": name,
        "address_line_1": "1 High Street",
        "address_line_2": "",
        "city": "Newcastle Upon Tyne",
        "postal_code": "NE1 1AA",
        "country": {"id": "GB", "displayed_as": "United Kingdom"},
        "region": "Tyne and Wear",
        "ni_based": False,
        "telephone": "01910000000",
        "mobile": "",
        "website": "",
        "is_demo": False,
        "subscriptions": [
            {
                "created_at": stamp,
                "updated_at": stamp,
                "displayed_as": "Accounting",
                "id": "ACCOUNTING",
                "active": True,
                "status": "active",
                "accountant_pays": False,
            }
        ],
        "$path": f"/businesses/{biz_id}",
        "user_roles": [],
        "user_permissions": [
            {"area": area, "role": "full_access"}
            for area in (
                "accounting_sales",
                "accounting_catalogs",
                "accounting_journals",
                "accounting_purchases",
                "accounting_contacts",
                "accounting_statutory_reporting",
                "accounting_bank",
                "accounting_reporting",
                "accounting_settings",
            )
        ],
    }


def user_data(user_id: str, first: str, last: str, email: str, ts: float) -> dict[str, Any]:
    """Shape of [MOD] ``GET /user`` (§3.4)."""
    return {
        "created_at": iso(ts),
        "updated_at": iso(ts),
        "displayed_as": f"{first} {last}",
        "id": user_id,
        "first_name": first,
        "last_name": last,
        "initials": f"{first[:1]}{last[:1]}",
        "email": email,
        "locale": "en-GB",
    }


# (id, name, displayed_as, percentage) from the [MOD] GET /tax_rates example (§10.5).
_TAX_RATES = (
    ("GB_STANDARD", "STANDARD", "Standard 20.00%", "20.0"),
    ("GB_LOWER", "LOWER", "Lower Rate 5.00%", "5.0"),
    ("GB_ZERO", "ZERO", "Zero Rated 0.00%", "0.0"),
    ("GB_EXEMPT", "EXEMPT", "Exempt 0.00%", "0.0"),
    ("GB_NO_TAX", "NO_TAX", "No VAT", "0.0"),
)

_TYPE_NAMES = {
    "SALES": ("Sales", "INCOME", "Income"),
    "OTHER_INCOME": ("Other Income", "INCOME", "Income"),
    "DIRECT_EXPENSES": ("Direct Expenses", "EXPENSE", "Expense"),
    "OVERHEADS": ("Overheads", "EXPENSE", "Expense"),
    "DEPRECIATION": ("Depreciation", "EXPENSE", "Expense"),
    "CURRENT_ASSETS": ("Current Assets", "ASSET", "Asset"),
    "FIXED_ASSETS": ("Fixed Assets", "ASSET", "Asset"),
    "BANK": ("Bank", "ASSET", "Asset"),
    "CURRENT_LIABILITY": ("Current Liability", "LIABILITY", "Liability"),
    "EQUITY": ("Equity", "LIABILITY", "Liability"),
}


@dataclass(frozen=True)
class _Ledger:
    code: int
    name: str
    type_id: str
    scopes: tuple[str, ...]
    tax_rate: str | None = None
    control: str | None = None


# §12.8: Bank Account (1200), Cash (1210), sales 4000/4900, Trade Creditors (2100), plus the neighbours a
# UK chart has; bank accounts first, as in the [MOD] GET /ledger_accounts example.
_LEDGERS = (
    _Ledger(1200, "Bank Account", "BANK", ("bank", "journals", "reporting")),
    _Ledger(1210, "Cash", "BANK", ("bank", "journals", "reporting")),
    _Ledger(30, "Office equipment and IT - Cost", "FIXED_ASSETS", ("journals", "other_payment", "reporting")),
    _Ledger(40, "Fixtures and fittings - Cost", "FIXED_ASSETS", ("journals", "other_payment", "reporting")),
    _Ledger(1100, "Trade Debtors", "CURRENT_ASSETS", ("journals", "reporting"), control="DEBTORS"),
    _Ledger(2100, "Trade Creditors", "CURRENT_LIABILITY", ("journals", "reporting"), control="CREDITORS"),
    _Ledger(
        2200, "Sales Tax Control Account", "CURRENT_LIABILITY", ("journals", "reporting"), control="SALES_TAX"
    ),
    _Ledger(3000, "Share Capital", "EQUITY", ("journals", "reporting")),
    _Ledger(
        4000, "Sales Type A", "SALES", ("sales", "journals", "other_receipt", "reporting"), "GB_STANDARD"
    ),
    _Ledger(
        4010, "Sales Type B", "SALES", ("sales", "journals", "other_receipt", "reporting"), "GB_STANDARD"
    ),
    _Ledger(4900, "Other income", "OTHER_INCOME", ("sales", "journals", "other_receipt", "reporting")),
    _Ledger(
        5000,
        "Cost of Sales - Goods",
        "DIRECT_EXPENSES",
        ("expenses", "journals", "other_payment", "reporting"),
    ),
    _Ledger(7500, "Office Costs", "OVERHEADS", ("expenses", "journals", "other_payment", "reporting")),
    _Ledger(8050, "Motor Vehicles Depreciation", "DEPRECIATION", ("journals", "reporting")),
)

# (name, reference, type, email, credit_days) — names from the [MOD] contacts examples.
_CONTACTS = (
    ("ABS Garages Ltd", "ABS001", "CUSTOMER", "accounts@absgarages.example", 30),
    ("Bobs Building Supplies", "BBS001", "CUSTOMER", "bob@bobsbuilding.example", 30),
    ("Fred Briant", "BRI001", "CUSTOMER", "fred@briant.example", 14),
    ("County Golf Supplies", "CGS001", "CUSTOMER", None, None),
    ("Thompsons Electricals", "THO001", "VENDOR", "sales@thompsons.example", 30),
    ("Business Exhibitions", "BUS001", "VENDOR", None, None),
)


def ledger_account_data(
    ident: str, spec: _Ledger, tax_rates: dict[str, Record], stamp: str
) -> dict[str, Any]:
    """Shape of [MOD] ``GET /ledger_accounts/{key}`` (§10.4)."""
    type_name, group_id, group_name = _TYPE_NAMES[spec.type_id]
    code = f"{spec.code:04d}"
    tax = tax_rates.get(spec.tax_rate or "GB_NO_TAX")
    scopes = set(spec.scopes)
    return {
        "id": ident,
        "displayed_as": f"{spec.name} ({code})",
        "$path": f"/ledger_accounts/{ident}",
        "created_at": stamp,
        "updated_at": stamp,
        "ledger_account_group": {"id": group_id, "displayed_as": group_name},
        "name": spec.name,
        "display_name": spec.name,
        "visible_scopes": list(spec.scopes),
        "included_in_chart": True,
        "nominal_code": spec.code,
        "ledger_account_type": ref("ledger_account_types", spec.type_id, type_name),
        "ledger_account_classification": None,
        "tax_rate": tax_rate_ref(tax) if tax is not None else None,
        "fixed_tax_rate": spec.tax_rate is None,
        "visible_in_banking": "bank" in scopes,
        "visible_in_expenses": "expenses" in scopes,
        "visible_in_journals": "journals" in scopes,
        "visible_in_other_payments": "other_payment" in scopes,
        "visible_in_other_receipts": "other_receipt" in scopes,
        "visible_in_reporting": "reporting" in scopes,
        "visible_in_sales": "sales" in scopes,
        "ui_visible": True,
        "bank_attached": spec.type_id == "BANK",
        "is_control_account": spec.control is not None,
        "control_name": spec.control,
        "display_formatted": f"{code} - {spec.name}",
        "tax_recoverable": None,
        "recoverable_percentage": None,
        "non_recoverable_ledger_account": None,
        "cis_materials": False,
        "tax_instalment": False,
        "cis_labour": False,
        "gifi_code": None,
    }


def contact_data(
    record_id: str, fields: dict[str, Any], biz: BusinessData, stamps: tuple[str, str]
) -> dict[str, Any]:
    """Shape of [MOD] ``GET /contacts/{key}`` (§10.1) rendered from the normalised writable fields."""
    name = fields["name"]
    reference = fields.get("reference")
    type_id = fields["contact_type_ids"][0]
    person = fields.get("main_contact_person")
    main_address = fields.get("main_address")
    delivery = fields.get("delivery_address")
    address_ref = (
        ref("addresses", fields["_main_address_id"], main_address.get("address_line_1") or "")
        if (main_address)
        else None
    )
    person_ref = (
        ref("contact_persons", fields["_person_id"], person.get("name") or "Main Contact") if person else None
    )

    def lookup(collection: str, key: str) -> dict[str, str] | None:
        ident = fields.get(key)
        found = biz.coll(collection).get(ident) if ident else None
        return ref(collection, found.id, found.data["displayed_as"]) if found else None

    currency_id = fields.get("currency_id") or "GBP"
    currency = biz.coll("currencies").get(currency_id)
    kind = "customers" if type_id == "CUSTOMER" else "vendors"
    return {
        "id": record_id,
        "displayed_as": f"{name} ({reference})" if reference else name,
        "$path": f"/contacts/{record_id}",
        "created_at": stamps[0],
        "updated_at": stamps[1],
        "links": [
            {
                "href": f"https://accounts-extra.sageone.com/contacts/{kind}/{fields['_legacy_id']}",
                "rel": "alternate",
                "type": "text/html",
            }
        ],
        "deleted_at": None,
        "contact_types": [contact_type_ref(t) for t in fields["contact_type_ids"]],
        "name": name,
        "reference": reference,
        "default_sales_ledger_account": lookup("ledger_accounts", "default_sales_ledger_account_id"),
        "default_sales_tax_rate": lookup("tax_rates", "default_sales_tax_rate_id"),
        "default_purchase_ledger_account": lookup("ledger_accounts", "default_purchase_ledger_account_id"),
        "tax_number": fields.get("tax_number") or "",
        "notes": fields.get("notes") or "",
        "locale": fields.get("locale") or "en",
        "main_address": address_ref,
        "preferred_address": address_ref,
        "delivery_address": ref(
            "addresses", fields["_delivery_address_id"], delivery.get("address_line_1") or ""
        )
        if delivery
        else None,
        "main_contact_person": person_ref,
        "preferred_contact_person": person_ref,
        "bank_account_details": {
            "account_name": None,
            "account_number": None,
            "sort_code": None,
            "bic": None,
            "iban": None,
            **(fields.get("bank_account_details") or {}),
        },
        "credit_limit": fmt_money(fields.get("credit_limit") or Decimal(0)),
        "credit_days": fields.get("credit_days"),
        "credit_terms": fields.get("credit_terms"),
        "credit_terms_and_conditions": fields.get("credit_terms_and_conditions"),
        "product_sales_price_type": None,
        "source_guid": fields.get("source_guid"),
        "currency": ref("currencies", currency.id, currency.data["displayed_as"]) if currency else GBP,
        "aux_reference": fields.get("aux_reference"),
        "registered_number": fields.get("registered_number"),
        "deletable": not fields.get("_has_transactions", False) and not fields.get("_system", False),
        "tax_treatment": {
            "home_tax": True,
            "eu_tax_registered": False,
            "eu_not_tax_registered": False,
            "rest_of_world_tax": False,
            "is_importer": None,
            **(fields.get("tax_treatment") or {}),
        },
        "email": (person or {}).get("email"),
        "tax_calculation": fields.get("tax_calculation") or "",
        "gdpr_obfuscated": False,
        "system": fields.get("_system", False),
        "has_unfinished_recurring_invoices": False,
        "cis_registered": False,
        "ni_based": False,
        "is_active": True,
        "gb_based": True,
        "cis_settings": None,
        "destination_vat_blocking": bool(fields.get("destination_vat_blocking", False)),
        "mandate_active": False,
        "send_statements": True,
        "statement_run": None,
        "go_cardless_mandate": None,
    }


def new_contact_fields(ids: Ids, fields: dict[str, Any]) -> dict[str, Any]:
    """Add the simulator-owned ids a contact needs (address/person ids, legacy id for ``links``)."""
    fields.setdefault("_main_address_id", ids.new())
    fields.setdefault("_delivery_address_id", ids.new())
    fields.setdefault("_person_id", ids.new())
    fields.setdefault("_legacy_id", ids.number(100_000_000, 999_999_999))
    return fields


def add_contact(biz: BusinessData, ids: Ids, fields: dict[str, Any], now: float) -> Record:
    ident = ids.new()
    new_contact_fields(ids, fields)
    stamp = iso(now)
    record = Record(ident, contact_data(ident, fields, biz, (stamp, stamp)), now, now, {"fields": fields})
    return biz.coll("contacts").add(record)


def seed_business(biz: BusinessData, ids: Ids, now: float) -> None:
    """§12.8 seed data of a fresh UK business."""
    stamp = iso(now)
    data: dict[str, Any]
    for type_id, name in CONTACT_TYPE_NAMES.items():
        data = {**ref("contact_types", type_id, name), "created_at": stamp, "updated_at": stamp, "name": name}
        biz.coll("contact_types").add(Record(type_id, data, now, now))
    for cur_id, cur_name, symbol in (
        ("GBP", "Pound Sterling", "£"),
        ("EUR", "Euro", "€"),
        ("USD", "US Dollar", "$"),
    ):
        data = {
            **ref("currencies", cur_id, f"{cur_name} ({cur_id})"),
            "created_at": stamp,
            "updated_at": stamp,
            "name": cur_name,
            "symbol": symbol,
        }
        biz.coll("currencies").add(Record(cur_id, data, now, now))
    rates = biz.coll("tax_rates")
    for rate_id, name, shown, pct in _TAX_RATES:
        data = {
            **ref("tax_rates", rate_id, shown),
            "created_at": stamp,
            "updated_at": stamp,
            "name": name,
            "agency": None,
            "percentage": pct,
            "percentages": [{"percentage": pct, "from_date": "1900-01-01", "to_date": None}],
            "is_visible": True,
            "retailer": False,
            "editable": False,
            "deletable": False,
            "is_combined_rate": False,
            "component_tax_rates": [],
        }
        rates.add(Record(rate_id, data, now, now))
    ledgers = biz.coll("ledger_accounts")
    by_code: dict[int, Record] = {}
    for spec in _LEDGERS:
        ident = ids.new()
        by_code[spec.code] = ledgers.add(
            Record(ident, ledger_account_data(ident, spec, rates.by_id, stamp), now, now, {"code": spec.code})
        )
    banks = biz.coll("bank_accounts")
    for code, type_id, type_name in ((1200, "CHECKING", "Current"), (1210, "CASH_IN_HAND", "Cash in Hand")):
        ledger = by_code[code]
        ident = ids.new()
        bank: dict[str, Any] = {
            **ref("bank_accounts", ident, ledger.data["displayed_as"]),
            "created_at": stamp,
            "updated_at": stamp,
            "bank_account_type": ref("bank_account_types", type_id, type_name),
            "ledger_account": ref("ledger_accounts", ledger.id, ledger.data["displayed_as"]),
            "nominal_code": code,
            "balance": "0.0",
            "currency": GBP,
            "editable": True,
            "deletable": False,
        }
        banks.add(Record(ident, bank, now, now))
    # [G-first]/[MOD]: a fresh UK business already has these two system contacts.
    for name, reference in (("HMRC Reclaimed", "HMRC Rec"), ("HMRC Payments", "HMRC Pay")):
        add_contact(
            biz,
            ids,
            {"name": name, "reference": reference, "contact_type_ids": ["VENDOR"], "_system": True},
            now,
        )
    for name, reference, type_id, email, credit_days in _CONTACTS:
        fields: dict[str, Any] = {
            "name": name,
            "reference": reference,
            "contact_type_ids": [type_id],
            "credit_days": credit_days,
            "main_address": {"address_line_1": f"{ids.number(1, 99)} Market Street", "city": "Leeds"},
        }
        if email:
            fields["main_contact_person"] = {"name": name, "email": email}
        if type_id == "CUSTOMER":
            fields["default_sales_ledger_account_id"] = by_code[4000].id
            fields["default_sales_tax_rate_id"] = "GB_STANDARD"
        else:
            fields["default_purchase_ledger_account_id"] = by_code[5000].id
        add_contact(biz, ids, fields, now)
