"""The contract suite every connector must pass.

A provider's test module subclasses :class:`ConnectorContract` and provides the fixtures:

* ``connector`` — a connector instance wired to the provider's simulator (fresh state per test);
* ``fixtures`` — a :class:`ContractFixtures` describing ids that exist in that simulator's seed data;
* ``upstream_count`` — an async callable ``(resource) -> int`` counting records upstream (from the
  simulator's raw state), so writes can be checked for "exactly one record".
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from connectors.base import Connector, ListQuery, Operation, Resource, WriteRequest
from connectors.errors import NotFound, UnsupportedOperation
from connectors.models import (
    ContactCreate,
    ContactRole,
    InvoiceCreate,
    InvoiceLineCreate,
    JournalCreate,
    JournalLineCreate,
    dump_json,
)

UpstreamCount = Callable[[Resource], Awaitable[int]]


@dataclass(frozen=True)
class ContractFixtures:
    customer_id: str
    revenue_account_id: str
    expense_account_id: str
    bank_account_id: str
    tax_rate_id: str | None
    tax_percent: Decimal
    location_id: str | None = None


_HANDLERS = {
    (Resource.contacts, Operation.list): "list_contacts",
    (Resource.contacts, Operation.get): "get_contact",
    (Resource.contacts, Operation.create): "create_contact",
    (Resource.contacts, Operation.update): "update_contact",
    (Resource.invoices, Operation.list): "list_invoices",
    (Resource.invoices, Operation.get): "get_invoice",
    (Resource.invoices, Operation.create): "create_invoice",
    (Resource.invoices, Operation.void): "void_invoice",
    (Resource.invoices, Operation.validate): "validate_invoice",
    (Resource.journals, Operation.list): "list_journals",
    (Resource.journals, Operation.get): "get_journal",
    (Resource.journals, Operation.create): "create_journal",
    (Resource.journals, Operation.validate): "validate_journal",
    (Resource.accounts, Operation.list): "list_accounts",
    (Resource.tax_rates, Operation.list): "list_tax_rates",
}


def _invoice(fx: ContractFixtures, reference: str) -> InvoiceCreate:
    net = Decimal("120.50")
    return InvoiceCreate(
        contact_id=fx.customer_id,
        issue_date=dt.date(2026, 11, 2),
        due_date=dt.date(2026, 12, 2),
        reference=reference,
        lines=[
            InvoiceLineCreate(
                description="Consulting",
                account_id=fx.revenue_account_id,
                quantity=Decimal(1),
                unit_price=net,
                tax_rate_id=fx.tax_rate_id,
                tax_amount=(net * fx.tax_percent / 100).quantize(Decimal("0.01")),
                location_id=fx.location_id,
            )
        ],
    )


def _journal(fx: ContractFixtures, reference: str) -> JournalCreate:
    return JournalCreate(
        date=dt.date(2026, 11, 3),
        reference=reference,
        description="Contract suite accrual",
        lines=[
            JournalLineCreate(
                account_id=fx.expense_account_id, debit=Decimal("99.99"), location_id=fx.location_id
            ),
            JournalLineCreate(
                account_id=fx.bank_account_id, credit=Decimal("99.99"), location_id=fx.location_id
            ),
        ],
    )


def _strict(value: Any) -> Any:
    """``value`` with every type spelled out: a str where an enum member belongs is a difference."""
    if isinstance(value, BaseModel):
        return (type(value), {k: _strict(v) for k, v in value.__dict__.items()})
    if isinstance(value, list):
        return [_strict(v) for v in value]
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    return (type(value), value)


def assert_as_validated(record: BaseModel) -> None:
    """A record a mapping built with ``trusted`` is what validation builds, and renders as pydantic does."""
    validated = type(record).model_validate(record.model_dump())
    assert _strict(record) == _strict(validated), record
    for include_raw in (False, True):
        exclude = None if include_raw else {"raw"}
        expected = orjson.loads(record.model_dump_json(exclude=exclude))
        assert orjson.loads(dump_json(record, include_raw=include_raw)) == expected


class ConnectorContract:
    """Behaviour every connector shares. Subclass it and provide the fixtures above."""

    async def test_read_records_are_what_validation_builds(
        self, connector: Connector, fixtures: ContractFixtures
    ) -> None:
        """Mappings build records without validating them (``connectors.models.trusted``): every record of
        every resource, with and without ``raw``, must equal the validated model, types included, and
        render to the same JSON as ``model_dump_json``."""
        cls = type(connector)
        await connector.create_invoice(_invoice(fixtures, "CONTRACT-REC"), WriteRequest(str(uuid.uuid4())))
        await connector.create_journal(_journal(fixtures, "CONTRACT-REC"), WriteRequest(str(uuid.uuid4())))
        seen: set[str] = set()
        for include_raw in (False, True):
            query = ListQuery(page_size=200, include_raw=include_raw)
            for resource, method in (
                (Resource.contacts, "list_contacts"),
                (Resource.invoices, "list_invoices"),
                (Resource.journals, "list_journals"),
                (Resource.accounts, "list_accounts"),
                (Resource.tax_rates, "list_tax_rates"),
            ):
                if not cls.supports(resource, Operation.list):
                    continue
                page = await getattr(connector, method)(query)
                assert page.data or resource == Resource.tax_rates, resource
                for record in page.data:
                    assert (record.raw is not None) == include_raw
                    assert_as_validated(record)
                    seen.add(type(record).__name__)
                assert orjson.loads(dump_json(page, include_raw=include_raw)) == orjson.loads(
                    page.model_dump_json(exclude=None if include_raw else {"data": {"__all__": {"raw"}}})
                )
                if resource in (Resource.invoices, Resource.journals) and page.data:
                    getter = getattr(connector, method.replace("list_", "get_").rstrip("s"))
                    assert_as_validated(await getter(page.data[-1].id, include_raw=include_raw))
        assert {"Contact", "Invoice", "Journal", "Account"} <= seen

    def test_capabilities_match_handlers(self, connector: Connector) -> None:
        cls = type(connector)
        for (resource, operation), handler in _HANDLERS.items():
            overridden = getattr(cls, handler) is not getattr(Connector, handler)
            assert overridden == cls.supports(resource, operation), (resource, operation)

    async def test_check(self, connector: Connector) -> None:
        result = await connector.check()
        assert result.ok

    async def test_contacts_pages_yield_every_record_once(self, connector: Connector) -> None:
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(1000):
            page = await connector.list_contacts(ListQuery(page_size=2, cursor=cursor))
            assert len(page.data) <= 2
            seen.extend(c.id for c in page.data)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen, "the simulator seeds contacts"
        assert len(seen) == len(set(seen))
        everything = await connector.list_contacts(ListQuery(page_size=200))
        assert sorted(seen) == sorted(c.id for c in everything.data)

    async def test_contact_create_get_and_include_raw(
        self, connector: Connector, upstream_count: UpstreamCount
    ) -> None:
        before = await upstream_count(Resource.contacts)
        data = ContactCreate(
            roles=[ContactRole.customer], name="Contract Suite Ltd", email="suite@example.com"
        )
        write = WriteRequest(str(uuid.uuid4()))
        created = await connector.create_contact(data, write)
        assert created.name == "Contract Suite Ltd"
        assert ContactRole.customer in created.roles
        again = await connector.create_contact(data, write)
        assert again.id == created.id
        assert await upstream_count(Resource.contacts) == before + 1
        fetched = await connector.get_contact(created.id, include_raw=True)
        assert fetched.id == created.id and fetched.email == "suite@example.com"
        assert fetched.raw
        plain = await connector.get_contact(created.id)
        assert plain.raw is None

    async def test_unknown_record_is_not_found(self, connector: Connector) -> None:
        with pytest.raises(NotFound):
            await connector.get_contact("does-not-exist-0000")

    async def test_invoice_write_is_exactly_once(
        self, connector: Connector, fixtures: ContractFixtures, upstream_count: UpstreamCount
    ) -> None:
        before = await upstream_count(Resource.invoices)
        write = WriteRequest(str(uuid.uuid4()))
        data = _invoice(fixtures, "CONTRACT-INV-1")
        first = await connector.create_invoice(data, write)
        second = await connector.create_invoice(data, write)
        assert first.id == second.id
        assert await upstream_count(Resource.invoices) == before + 1
        fetched = await connector.get_invoice(first.id)
        assert fetched.contact_id == fixtures.customer_id
        assert fetched.lines and fetched.lines[0].unit_price == Decimal("120.50")
        assert fetched.total_amount is not None and fetched.total_amount >= Decimal("120.50")

    async def test_invoice_validate_writes_nothing(
        self, connector: Connector, fixtures: ContractFixtures, upstream_count: UpstreamCount
    ) -> None:
        if not type(connector).supports(Resource.invoices, Operation.validate):
            pytest.skip("validate not offered")
        before = await upstream_count(Resource.invoices)
        good = await connector.validate_invoice(_invoice(fixtures, "CONTRACT-VAL"))
        assert good == []
        bad = _invoice(fixtures, "CONTRACT-VAL-2").model_copy(
            update={
                "lines": [
                    line.model_copy(update={"account_id": "NO-SUCH-ACCOUNT"})
                    for line in _invoice(fixtures, "x").lines
                ]
            }
        )
        problems = await connector.validate_invoice(bad)
        assert any("account" in p.field for p in problems)
        assert await upstream_count(Resource.invoices) == before

    async def test_journal_write_is_exactly_once(
        self, connector: Connector, fixtures: ContractFixtures, upstream_count: UpstreamCount
    ) -> None:
        before = await upstream_count(Resource.journals)
        write = WriteRequest(str(uuid.uuid4()))
        data = _journal(fixtures, "CONTRACT-JNL-1")
        first = await connector.create_journal(data, write)
        second = await connector.create_journal(data, write)
        assert first.id == second.id
        assert await upstream_count(Resource.journals) == before + 1
        fetched = await connector.get_journal(first.id)
        debit = sum((line.debit for line in fetched.lines), Decimal(0))
        credit = sum((line.credit for line in fetched.lines), Decimal(0))
        assert debit == credit == Decimal("99.99")

    async def test_reference_data(self, connector: Connector, fixtures: ContractFixtures) -> None:
        accounts = await connector.list_accounts(ListQuery(page_size=200))
        ids = {a.id for a in accounts.data}
        assert fixtures.revenue_account_id in ids or accounts.next_cursor is not None
        if type(connector).supports(Resource.tax_rates, Operation.list):
            rates = await connector.list_tax_rates(ListQuery(page_size=200))
            assert rates.data

    async def test_unsupported_reads_are_501(self, connector: Connector) -> None:
        cls = type(connector)
        for (resource, operation), handler in _HANDLERS.items():
            if cls.supports(resource, operation) or operation not in (Operation.list, Operation.get):
                continue
            method = getattr(connector, handler)
            with pytest.raises(UnsupportedOperation):
                await (method(ListQuery()) if operation == Operation.list else method("x"))
