"""Unified records (CONTRACT §4): the output type of every connector and the API's response models.

Money is :class:`~decimal.Decimal` end to end and travels as a decimal string (``"1450.80"``). A JSON
float is refused on input: binary floats cannot carry cents exactly. Write models forbid unknown fields,
so a typo is a 422 instead of a silently dropped value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Generic, ParamSpec, TypeVar

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator
from pydantic_core import PydanticCustomError


def _parse_money(value: Any) -> Decimal:
    if isinstance(value, (bool, float)):
        raise PydanticCustomError("money_type", 'Money must be a decimal string such as "12.50", not a float')
    if isinstance(value, Decimal):
        parsed = value
    elif isinstance(value, int | str):
        try:
            parsed = Decimal(str(value).strip())
        except InvalidOperation:
            raise PydanticCustomError(
                "money_parsing", "Not a decimal amount: {value!r}", {"value": value}
            ) from None
    else:
        raise PydanticCustomError("money_type", "Money must be a decimal string")
    if not parsed.is_finite():
        raise PydanticCustomError("money_parsing", "Amounts must be finite")
    return parsed


def _format_decimal(value: Decimal) -> str:
    return format(value, "f")


Money = Annotated[
    Decimal,
    BeforeValidator(_parse_money),
    PlainSerializer(_format_decimal, return_type=str, when_used="json"),
    Field(json_schema_extra={"type": "string", "format": "decimal", "examples": ["1450.80"]}),
]
"""A decimal amount, serialized as a string."""


class _Record(BaseModel):
    """Fields every unified record carries."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The upstream's stable key (opaque)")
    created_at: dt.datetime | None = Field(default=None, description="Upstream creation time (UTC)")
    updated_at: dt.datetime | None = Field(default=None, description="Upstream modification time (UTC)")
    raw: dict[str, Any] | None = Field(default=None, description="The upstream record, with include_raw=true")


class _Write(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContactRole(StrEnum):
    customer = "customer"
    supplier = "supplier"


class Status(StrEnum):
    active = "active"
    inactive = "inactive"


class AddressType(StrEnum):
    billing = "billing"
    shipping = "shipping"
    main = "main"


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: AddressType = AddressType.main
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    region: str | None = None
    postal_code: str | None = None
    country: str | None = Field(default=None, description="ISO 3166-1 alpha-2")


class Contact(_Record):
    roles: list[ContactRole]
    name: str
    email: str | None = None
    phone: str | None = None
    reference: str | None = None
    status: Status = Status.active
    currency: str | None = None
    tax_number: str | None = None
    addresses: list[Address] = Field(default_factory=list)


class ContactCreate(_Write):
    roles: list[ContactRole] = Field(min_length=1)
    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=254)
    phone: str | None = Field(default=None, max_length=50)
    reference: str | None = Field(default=None, max_length=100)
    status: Status | None = None
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    tax_number: str | None = Field(default=None, max_length=50)
    addresses: list[Address] | None = None


class ContactUpdate(_Write):
    roles: list[ContactRole] | None = Field(default=None, min_length=1)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=254)
    phone: str | None = Field(default=None, max_length=50)
    reference: str | None = Field(default=None, max_length=100)
    status: Status | None = None
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    tax_number: str | None = Field(default=None, max_length=50)
    addresses: list[Address] | None = None


class InvoiceStatus(StrEnum):
    draft = "draft"
    open = "open"
    partially_paid = "partially_paid"
    paid = "paid"
    void = "void"


class InvoiceLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    account_id: str | None = None
    quantity: Money = Decimal(1)
    unit_price: Money = Decimal(0)
    discount_amount: Money | None = None
    tax_rate_id: str | None = None
    net_amount: Money | None = None
    tax_amount: Money | None = None
    total_amount: Money | None = None
    department_id: str | None = None
    location_id: str | None = None


class Invoice(_Record):
    number: str | None = None
    contact_id: str
    issue_date: dt.date
    due_date: dt.date | None = None
    currency: str | None = None
    status: InvoiceStatus
    reference: str | None = None
    memo: str | None = None
    lines: list[InvoiceLine] = Field(default_factory=list)
    net_amount: Money | None = None
    tax_amount: Money | None = None
    total_amount: Money | None = None
    amount_due: Money | None = None


class InvoiceLineCreate(_Write):
    description: str = Field(min_length=1, max_length=1000)
    account_id: str = Field(min_length=1)
    quantity: Money = Decimal(1)
    unit_price: Money
    discount_amount: Money | None = None
    tax_rate_id: str | None = None
    tax_amount: Money | None = Field(
        default=None, description="Line tax; required by some providers for taxed lines"
    )
    department_id: str | None = None
    location_id: str | None = None

    @model_validator(mode="after")
    def _non_negative(self) -> InvoiceLineCreate:
        if self.quantity <= 0:
            raise PydanticCustomError("value_error", "quantity must be greater than zero")
        for name in ("discount_amount", "tax_amount"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise PydanticCustomError("value_error", "{name} must not be negative", {"name": name})
        return self


class InvoiceCreate(_Write):
    number: str | None = Field(default=None, max_length=50)
    contact_id: str = Field(min_length=1)
    issue_date: dt.date
    due_date: dt.date | None = None
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    reference: str | None = Field(default=None, max_length=100)
    memo: str | None = Field(default=None, max_length=1000)
    lines: list[InvoiceLineCreate] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _dates(self) -> InvoiceCreate:
        if self.due_date is not None and self.due_date < self.issue_date:
            raise PydanticCustomError("value_error", "due_date must not be before issue_date")
        return self


class InvoiceVoid(_Write):
    reason: str = Field(min_length=1, max_length=500, description="Why the invoice is voided (kept upstream)")


class JournalStatus(StrEnum):
    draft = "draft"
    posted = "posted"
    reversed = "reversed"


class JournalLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_id: str
    description: str | None = None
    debit: Money = Decimal(0)
    credit: Money = Decimal(0)
    department_id: str | None = None
    location_id: str | None = None


class Journal(_Record):
    number: str | None = None
    date: dt.date
    reference: str | None = None
    description: str | None = None
    currency: str | None = None
    status: JournalStatus = JournalStatus.posted
    lines: list[JournalLine] = Field(default_factory=list)


class JournalLineCreate(_Write):
    account_id: str = Field(min_length=1)
    description: str | None = Field(default=None, max_length=1000)
    debit: Money = Decimal(0)
    credit: Money = Decimal(0)
    department_id: str | None = None
    location_id: str | None = None


def journal_problems(lines: list[JournalLineCreate]) -> list[tuple[str, str, str]]:
    """Every balance problem of a journal as ``(field, code, message)``; empty when it balances.

    Exactly one side per line above zero, no negative amounts, at least two lines, debits equal credits
    exactly (``Decimal``, no rounding: a sub-cent difference is a difference).
    """
    problems: list[tuple[str, str, str]] = []
    if len(lines) < 2:
        problems.append(("lines", "unbalanced_journal", "A journal needs at least two lines"))
    for i, line in enumerate(lines):
        if line.debit < 0 or line.credit < 0:
            problems.append((f"lines[{i}]", "unbalanced_journal", "Amounts must not be negative"))
        elif (line.debit > 0) == (line.credit > 0):
            problems.append(
                (
                    f"lines[{i}]",
                    "unbalanced_journal",
                    "Each line needs exactly one of debit or credit above zero",
                )
            )
    debits = sum((line.debit for line in lines), Decimal(0))
    credits = sum((line.credit for line in lines), Decimal(0))
    if debits != credits:
        problems.append(
            ("lines", "unbalanced_journal", f"Total debits {debits} differ from total credits {credits}")
        )
    return problems


class JournalCreate(_Write):
    number: str | None = Field(default=None, max_length=50)
    date: dt.date
    reference: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=1000)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    lines: list[JournalLineCreate] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _balanced(self) -> JournalCreate:
        problems = journal_problems(self.lines)
        if problems:
            raise PydanticCustomError("unbalanced_journal", "; ".join(message for _, _, message in problems))
        return self


class AccountType(StrEnum):
    asset = "asset"
    liability = "liability"
    equity = "equity"
    revenue = "revenue"
    expense = "expense"
    other = "other"


class Account(_Record):
    code: str | None = None
    name: str
    type: AccountType
    status: Status = Status.active
    currency: str | None = None


class TaxRate(_Record):
    name: str
    rate: Money | None = Field(default=None, description='Percent, e.g. "20.00"')
    status: Status = Status.active


T = TypeVar("T", bound=BaseModel)


class Page(BaseModel, Generic[T]):
    """One page of a list. Following ``next_cursor`` to the end yields every record exactly once."""

    data: list[T]
    next_cursor: str | None = None


# --- building and rendering records on the read path ------------------------------------------------

P = ParamSpec("P")
R = TypeVar("R", bound=BaseModel)
_set = object.__setattr__


def trusted(model: Callable[P, R]) -> Callable[P, R]:
    """A constructor of ``model`` that does not validate: for the records a connector's mapping builds.

    Mapping code hands over values it has already parsed and typed (``Decimal``, aware ``datetime``, enum
    members, nested records built the same way), and mypy checks its keyword arguments against the model's
    fields exactly as for ``model(...)``. Validating them again cost about a third of a list call's CPU
    (docs/benchmarks.md); the contract suite (tests/connectors/contract.py) validates every record the
    connectors map from their simulators, so a mapping that relied on coercion fails there. The instance
    is what validation would have built: every field in declaration order, defaults filled in (a fresh
    value for each ``default_factory``), ``model_fields_set`` every field (as validating a complete record
    gives).
    """
    built = _BUILDERS.get(model)
    if built is None:
        built = _BUILDERS[model] = _builder(model)
    return built


_BUILDERS: dict[Any, Callable[..., Any]] = {}


_BASE_SLOTS = BaseModel.__dict__
_set_fields = _BASE_SLOTS["__pydantic_fields_set__"].__set__
_set_extra = _BASE_SLOTS["__pydantic_extra__"].__set__
_set_private = _BASE_SLOTS["__pydantic_private__"].__set__


def _builder(model: Callable[P, R]) -> Callable[P, R]:
    cls: type[R] = model  # type: ignore[assignment]
    template: dict[str, Any] = {}
    factories: dict[str, Callable[[], Any]] = {}
    for name, field in cls.model_fields.items():
        if field.default_factory is not None:
            factories[name] = field.default_factory  # type: ignore[assignment]
            template[name] = None
        else:
            template[name] = None if field.is_required() else field.default
    new = cls.__new__
    order = tuple(template)
    names = set(order)

    def build(*args: P.args, **values: P.kwargs) -> R:
        if args:
            raise TypeError(f"{cls.__name__} takes keyword arguments only")
        record = new(cls)
        if tuple(values) == order:
            fields: dict[str, Any] = values  # every field, in declaration order: the call's own dict as is
        else:
            fields = template.copy()
            fields.update(values)
            if factories:
                for name, factory in factories.items():
                    if name not in values:
                        fields[name] = factory()
        _set(record, "__dict__", fields)
        _set_fields(record, names.copy())
        _set_extra(record, None)
        _set_private(record, None)
        return record

    return build


def _without_raw(value: Any) -> Any:
    if isinstance(value, _Record):
        fields = value.__dict__.copy()
        del fields["raw"]
        return fields
    return _with_raw(value)


def _with_raw(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.__dict__
    if isinstance(value, Decimal):
        return _format_decimal(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dump_json(value: BaseModel, *, include_raw: bool) -> bytes:
    """A unified record or page as JSON, as ``model_dump_json`` writes it (``raw`` left out unless
    ``include_raw``), by orjson: several times faster on a page of records. Every field of the unified models
    is a string, number, bool, enum, ``Decimal`` (Money, a decimal string), date/datetime (RFC 3339, UTC as
    ``Z``), list or nested record; tests/connectors/test_records.py pins the equality byte for byte.
    """
    try:
        return orjson.dumps(
            value, default=_with_raw if include_raw else _without_raw, option=orjson.OPT_UTC_Z
        )
    except orjson.JSONEncodeError:
        # Only an upstream's own ``raw`` can hold what orjson refuses (an integer beyond 64 bits).
        exclude: Any = None
        if not include_raw:
            exclude = {"raw"} if isinstance(value, _Record) else {"data": {"__all__": {"raw"}}}
        return value.model_dump_json(exclude=exclude).encode()


class ValidationReport(BaseModel):
    """Result of a dry run (``/validate``): every problem found, nothing written."""

    valid: bool
    problems: list[dict[str, str]] = Field(default_factory=list)
