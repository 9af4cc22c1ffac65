"""The unified routes (CONTRACT §3): contacts, invoices, journals, accounts, tax rates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.responses import Response

from api import writes
from api.connections.refs import ConnectionRef, load_connection
from api.connections.service import HEALTH_CODES, build_connector, record_health
from api.deps import app_state, principal
from api.errors import ApiError
from api.idempotency import parse_key
from api.schemas import UNIFIED_READ_ERRORS, UNIFIED_WRITE_ERRORS
from connectors.base import Connector, ListQuery, Operation, Resource
from connectors.errors import ConnectorError, Problem, UnsupportedOperation, ValidationFailed
from connectors.models import (
    Account,
    Contact,
    ContactCreate,
    ContactUpdate,
    Invoice,
    InvoiceCreate,
    InvoiceVoid,
    Journal,
    JournalCreate,
    Page,
    TaxRate,
    ValidationReport,
    journal_problems,
)

router = APIRouter(tags=["accounting"])

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
ConnectionHeader = Annotated[
    str, Header(alias="X-Connection-Id", max_length=64, description="The connection to use")
]


class Bound:
    """A connector built for this request, with its connection row."""

    def __init__(self, request: Request, connection: ConnectionRef, connector: Connector) -> None:
        self.request = request
        self.connection = connection
        self.connector = connector

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        state = app_state(self.request)
        try:
            result = await fn()
        except ConnectorError as exc:
            if exc.code in HEALTH_CODES:
                await record_health(state, self.connection, f"{exc.code}: {exc.detail}")
            raise
        await record_health(state, self.connection, None)
        return result


def bound(resource: Resource, operation: Operation) -> Callable[..., Awaitable[Bound]]:
    async def dependency(request: Request, x_connection_id: ConnectionHeader) -> Bound:
        # principal() called here rather than declared as a sub-dependency: one FastAPI dependency per call.
        caller = await principal(request)
        state = app_state(request)
        # No database session on this path when the caches are warm (api/cache.py): the write path and
        # health bookkeeping open short sessions of their own.
        connection = await load_connection(state, caller.tenant_id, x_connection_id)
        connector = build_connector(state, connection)
        if not type(connector).supports(resource, operation):
            raise UnsupportedOperation(
                f"{type(connector).info.display_name} does not support {operation.value} on {resource.value}"
            )
        return Bound(request, connection, connector)

    return dependency


async def list_query(
    page_size: int = Query(50, ge=1, le=200),
    cursor: str | None = Query(None, max_length=4096),
    updated_since: dt.datetime | None = Query(
        None, description="RFC 3339; records created or changed at or after it"
    ),
    include_raw: bool = Query(False),
) -> ListQuery:
    if updated_since is not None and updated_since.tzinfo is None:
        raise ApiError(422, "validation_error", "updated_since needs a time zone (RFC 3339)")
    return ListQuery(page_size=page_size, cursor=cursor, updated_since=updated_since, include_raw=include_raw)


Listing = Annotated[ListQuery, Depends(list_query)]


def _with_filters(query: ListQuery, b: Bound, resource: Resource, **filters: str | None) -> ListQuery:
    given = {k: v for k, v in filters.items() if v is not None}
    cap = type(b.connector).capability(resource)
    allowed = cap.filters if cap else frozenset()
    refused = sorted(k for k in given if k not in allowed)
    if refused:
        raise ApiError(
            422,
            "unsupported_filter",
            f"{type(b.connector).info.display_name} cannot filter by {', '.join(refused)}",
        )
    return query.model_copy(update={"filters": given})


def _render(model: BaseModel, include_raw: bool, status: int = 200) -> Response:
    # Serialized once, by pydantic's Rust core (no dict round trip through json.dumps).
    body = model.model_dump_json(exclude=None if include_raw else {"raw"})
    return Response(body, status_code=status, media_type="application/json")


def _render_page(page: Page[Any], include_raw: bool) -> Response:
    exclude: Any = None if include_raw else {"data": {"__all__": {"raw"}}}
    return Response(page.model_dump_json(exclude=exclude), media_type="application/json")


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="1-255 printable ASCII characters (a UUID is recommended). A retry with the same key and "
        "request gets the stored result with `Idempotent-Replayed: true` and is never executed twice; "
        "kept at least 7 days.",
    ),
]


async def _write(
    b: Bound, operation: str, body: BaseModel, idempotency_key: str | None, record_id: str | None = None
) -> Response:
    return await writes.perform(
        app_state(b.request),
        b.connection,
        b.connector,
        operation,
        body,
        record_id=record_id,
        idempotency_key=parse_key(idempotency_key),
    )


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    """Document a body that the route parses itself (to report every problem instead of a 422)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class _JournalDraft(JournalCreate):
    """A journal whose balance is reported as problems by ``/validate`` rather than refused by the model."""

    def _balanced(self) -> _JournalDraft:  # type: ignore[override]
        return self


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise ApiError(400, "invalid_json", "The body is not valid JSON") from None


def _field(loc: tuple[int | str, ...]) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def _without(raw: Any, loc: tuple[int | str, ...]) -> Any:
    """``raw`` with the value at ``loc`` removed (an unknown field, reported as a problem)."""
    if not loc:
        return raw
    head, rest = loc[0], loc[1:]
    if isinstance(raw, dict) and isinstance(head, str) and head in raw:
        return {k: (v if k != head else _without(v, rest)) for k, v in raw.items() if k != head or rest}
    if isinstance(raw, list) and isinstance(head, int) and 0 <= head < len(raw):
        return [_without(v, rest) if i == head else v for i, v in enumerate(raw)]
    return raw


def _draft(model: type[M], raw: Any) -> tuple[M | None, list[Problem]]:
    """The body as ``model`` and every problem the unified model finds in it.

    Unknown fields are reported as ``unsupported_field`` and left out, so the remaining checks still run and
    the caller sees every problem at once; any other invalid field stops at the model's own checks.
    """
    try:
        return model.model_validate(raw), []
    except PydanticValidationError as exc:
        errors = exc.errors()
    unknown = [e["loc"] for e in errors if e.get("type") == "extra_forbidden"]
    problems = [
        Problem(_field(loc), "unsupported_field", "No such field in the unified model") for loc in unknown
    ]
    if len(unknown) == len(errors):
        stripped = raw
        for loc in unknown:
            stripped = _without(stripped, loc)
        if stripped != raw:
            data, more = _draft(model, stripped)
            return data, problems + more
        return None, problems
    problems += [
        Problem(_field(e["loc"]), str(e.get("type", "value_error")), str(e.get("msg", "")))
        for e in errors
        if e.get("type") != "extra_forbidden"
    ]
    return None, problems


async def _connector_problems(b: Bound, check: Callable[[], Awaitable[list[Problem]]]) -> list[Problem]:
    """The connector's checks; a check that refuses the input outright counts as its problems."""
    try:
        return await b.call(check)
    except ValidationFailed as exc:
        return exc.problems or [Problem("body", exc.code, exc.detail)]


def _report(problems: list[Problem]) -> ValidationReport:
    unique = list(dict.fromkeys(problems))
    return ValidationReport(valid=not unique, problems=[p.as_dict() for p in unique])


# --- contacts --------------------------------------------------------------------------------------------


@router.get("/v1/contacts", response_model=Page[Contact], responses=UNIFIED_READ_ERRORS)
async def list_contacts(
    query: Listing,
    b: Annotated[Bound, Depends(bound(Resource.contacts, Operation.list))],
    role: str | None = Query(None, pattern="^(customer|supplier)$"),
    email: str | None = Query(None, max_length=254),
    name: str | None = Query(None, max_length=200),
) -> Response:
    q = _with_filters(query, b, Resource.contacts, role=role, email=email, name=name)
    return _render_page(await b.call(lambda: b.connector.list_contacts(q)), q.include_raw)


@router.get("/v1/contacts/{record_id}", response_model=Contact, responses=UNIFIED_READ_ERRORS)
async def get_contact(
    record_id: str,
    b: Annotated[Bound, Depends(bound(Resource.contacts, Operation.get))],
    include_raw: bool = False,
) -> Response:
    return _render(
        await b.call(lambda: b.connector.get_contact(record_id, include_raw=include_raw)), include_raw
    )


@router.post("/v1/contacts", status_code=201, response_model=Contact, responses=UNIFIED_WRITE_ERRORS)
async def create_contact(
    body: ContactCreate,
    b: Annotated[Bound, Depends(bound(Resource.contacts, Operation.create))],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _write(b, "contacts.create", body, idempotency_key)


@router.patch("/v1/contacts/{record_id}", response_model=Contact, responses=UNIFIED_WRITE_ERRORS)
async def update_contact(
    record_id: str,
    body: ContactUpdate,
    b: Annotated[Bound, Depends(bound(Resource.contacts, Operation.update))],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _write(b, "contacts.update", body, idempotency_key, record_id)


# --- invoices --------------------------------------------------------------------------------------------


@router.get("/v1/invoices", response_model=Page[Invoice], responses=UNIFIED_READ_ERRORS)
async def list_invoices(
    query: Listing,
    b: Annotated[Bound, Depends(bound(Resource.invoices, Operation.list))],
    contact_id: str | None = Query(None, max_length=200),
    status: str | None = Query(None, pattern="^(draft|open|partially_paid|paid|void)$"),
) -> Response:
    q = _with_filters(query, b, Resource.invoices, contact_id=contact_id, status=status)
    return _render_page(await b.call(lambda: b.connector.list_invoices(q)), q.include_raw)


@router.post(
    "/v1/invoices/validate",
    response_model=ValidationReport,
    responses=UNIFIED_READ_ERRORS,
    openapi_extra=_request_body(InvoiceCreate),
)
async def validate_invoice(
    request: Request, b: Annotated[Bound, Depends(bound(Resource.invoices, Operation.validate))]
) -> ValidationReport:
    """Every check a post would make (fields, contact role, accounts, tax rates, dimensions), all problems at
    once; writes nothing. An invalid body is a report (``valid: false``), not a 422."""
    data, problems = _draft(InvoiceCreate, await _json(request))
    if data is not None:
        problems += await _connector_problems(b, lambda: b.connector.validate_invoice(data))
    return _report(problems)


@router.get("/v1/invoices/{record_id}", response_model=Invoice, responses=UNIFIED_READ_ERRORS)
async def get_invoice(
    record_id: str,
    b: Annotated[Bound, Depends(bound(Resource.invoices, Operation.get))],
    include_raw: bool = False,
) -> Response:
    return _render(
        await b.call(lambda: b.connector.get_invoice(record_id, include_raw=include_raw)), include_raw
    )


@router.post("/v1/invoices", status_code=201, response_model=Invoice, responses=UNIFIED_WRITE_ERRORS)
async def create_invoice(
    body: InvoiceCreate,
    b: Annotated[Bound, Depends(bound(Resource.invoices, Operation.create))],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _write(b, "invoices.create", body, idempotency_key)


@router.post("/v1/invoices/{record_id}/void", response_model=Invoice, responses=UNIFIED_WRITE_ERRORS)
async def void_invoice(
    record_id: str,
    body: InvoiceVoid,
    b: Annotated[Bound, Depends(bound(Resource.invoices, Operation.void))],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _write(b, "invoices.void", body, idempotency_key, record_id)


# --- journals --------------------------------------------------------------------------------------------


@router.get("/v1/journals", response_model=Page[Journal], responses=UNIFIED_READ_ERRORS)
async def list_journals(
    query: Listing, b: Annotated[Bound, Depends(bound(Resource.journals, Operation.list))]
) -> Response:
    return _render_page(await b.call(lambda: b.connector.list_journals(query)), query.include_raw)


@router.post(
    "/v1/journals/validate",
    response_model=ValidationReport,
    responses=UNIFIED_READ_ERRORS,
    openapi_extra=_request_body(JournalCreate),
)
async def validate_journal(
    request: Request, b: Annotated[Bound, Depends(bound(Resource.journals, Operation.validate))]
) -> ValidationReport:
    """Every check a post would make (balance to the cent, fields the provider cannot carry, accounts,
    dimensions), all problems at once; writes nothing."""
    data, problems = _draft(_JournalDraft, await _json(request))
    if data is not None:
        problems += [Problem(f, c, m) for f, c, m in journal_problems(data.lines)]
        problems += await _connector_problems(b, lambda: b.connector.validate_journal(data))
    return _report(problems)


@router.get("/v1/journals/{record_id}", response_model=Journal, responses=UNIFIED_READ_ERRORS)
async def get_journal(
    record_id: str,
    b: Annotated[Bound, Depends(bound(Resource.journals, Operation.get))],
    include_raw: bool = False,
) -> Response:
    return _render(
        await b.call(lambda: b.connector.get_journal(record_id, include_raw=include_raw)), include_raw
    )


@router.post("/v1/journals", status_code=201, response_model=Journal, responses=UNIFIED_WRITE_ERRORS)
async def create_journal(
    body: JournalCreate,
    b: Annotated[Bound, Depends(bound(Resource.journals, Operation.create))],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _write(b, "journals.create", body, idempotency_key)


# --- reference data --------------------------------------------------------------------------------------


@router.get("/v1/accounts", response_model=Page[Account], responses=UNIFIED_READ_ERRORS)
async def list_accounts(
    query: Listing, b: Annotated[Bound, Depends(bound(Resource.accounts, Operation.list))]
) -> Response:
    return _render_page(await b.call(lambda: b.connector.list_accounts(query)), query.include_raw)


@router.get("/v1/tax-rates", response_model=Page[TaxRate], responses=UNIFIED_READ_ERRORS)
async def list_tax_rates(
    query: Listing, b: Annotated[Bound, Depends(bound(Resource.tax_rates, Operation.list))]
) -> Response:
    return _render_page(await b.call(lambda: b.connector.list_tax_rates(query)), query.include_raw)
