"""Records built without validation (``connectors.models.trusted``) and rendered by orjson (``dump_json``).

The contract suite (tests/connectors/contract.py, ``test_read_records_are_what_validation_builds``) checks
every record the connectors map from their simulators; these pin the helpers themselves.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import orjson
import pytest

from connectors.models import (
    Contact,
    ContactRole,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    Page,
    Status,
    dump_json,
    trusted,
)

UTC = dt.UTC


def _invoice(**extra: object) -> Invoice:
    return trusted(Invoice)(
        id="inv-1",
        created_at=dt.datetime(2026, 11, 2, 9, 30, 0, 120000, tzinfo=UTC),
        updated_at=dt.datetime(2026, 11, 2, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        contact_id="c-1",
        issue_date=dt.date(2026, 11, 2),
        status=InvoiceStatus.open,
        lines=[trusted(InvoiceLine)(description="Consulting", unit_price=Decimal("120.50"))],
        total_amount=Decimal("144.60"),
        **extra,  # type: ignore[arg-type]
    )


def test_trusted_record_is_the_validated_record() -> None:
    record = _invoice()
    validated = Invoice.model_validate(record.model_dump())
    assert record == validated
    assert list(record.__dict__) == list(Invoice.model_fields)  # declaration order, as validation gives
    assert record.lines[0].quantity == Decimal(1)  # defaults filled in
    assert record.model_fields_set == set(Invoice.model_fields)
    assert record.model_dump_json(exclude={"raw"}) == validated.model_dump_json(exclude={"raw"})


def test_default_factories_give_each_record_its_own_value() -> None:
    a = trusted(Contact)(id="a", roles=[ContactRole.customer], name="A")
    b = trusted(Contact)(id="b", roles=[ContactRole.supplier], name="B")
    assert a.addresses == [] and a.addresses is not b.addresses
    assert a.status is Status.active


def test_trusted_takes_keywords_only() -> None:
    with pytest.raises(TypeError):
        trusted(Contact)("a")  # type: ignore[call-arg]


def test_dump_json_is_model_dump_json() -> None:
    record = _invoice(raw={"id": "inv-1", "amount": 1.5, "nested": {"a": [1, None, True]}})
    page = Page(data=[record, _invoice()], next_cursor="abc")
    pairs = [
        (dump_json(record, include_raw=True), record.model_dump_json()),
        (dump_json(record, include_raw=False), record.model_dump_json(exclude={"raw"})),
        (dump_json(page, include_raw=True), page.model_dump_json()),
        (dump_json(page, include_raw=False), page.model_dump_json(exclude={"data": {"__all__": {"raw"}}})),
    ]
    for ours, pydantic in pairs:
        assert ours == pydantic.encode()  # byte for byte: same key order, UTC as Z, Decimal strings
    body = json.loads(dump_json(record, include_raw=False))
    assert "raw" not in body and body["total_amount"] == "144.60"
    assert body["created_at"] == "2026-11-02T09:30:00.120000Z"
    assert body["updated_at"] == "2026-11-02T10:00:00+01:00"


def test_dump_json_falls_back_for_what_orjson_refuses() -> None:
    huge = 2**70  # an upstream's raw record may hold any JSON number
    record = _invoice(raw={"big": huge})
    assert orjson.loads(dump_json(record, include_raw=False)) == json.loads(
        record.model_dump_json(exclude={"raw"})
    )
    assert json.loads(dump_json(record, include_raw=True))["raw"]["big"] == huge
    page = Page(data=[record], next_cursor=None)
    assert "raw" not in json.loads(dump_json(page, include_raw=False))["data"][0]


def test_every_field_given_in_order_or_not_builds_the_same_record() -> None:
    fields = {
        "id": "c-1",
        "created_at": None,
        "updated_at": None,
        "raw": None,
        "roles": [ContactRole.customer],
        "name": "A",
        "email": None,
        "phone": None,
        "reference": "R1",
        "status": Status.active,
        "currency": "GBP",
        "tax_number": None,
        "addresses": [],
    }
    assert list(fields) == list(Contact.model_fields)
    in_order = trusted(Contact)(**fields)  # type: ignore[arg-type]
    shuffled = trusted(Contact)(**dict(reversed(fields.items())))  # type: ignore[arg-type]
    validated = Contact.model_validate(fields)
    for record in (in_order, shuffled):
        assert record == validated and list(record.__dict__) == list(Contact.model_fields)
        assert record.model_fields_set == set(Contact.model_fields)
        assert dump_json(record, include_raw=True) == validated.model_dump_json().encode()
    assert in_order.model_fields_set is not shuffled.model_fields_set  # each record its own set
