"""The unified routes (CONTRACT §3): contacts, invoices, journals, accounts, tax rates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api import writes
from api.connections.service import build_connector, record_health
from api.deps import Repo, app_state
from api.errors import ApiError
from api.schemas import UNIFIED_READ_ERRORS, UNIFIED_WRITE_ERRORS
from connectors.base import Connector, ListQuery, Operation, Resource
from connectors.errors import ConnectorError, UnsupportedOperation
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
)
from models import Connection

router = APIRouter(tags=["accounting"])

T = TypeVar("T")
ConnectionHeader = Annotated[
    str, Header(alias="X-Connection-Id", max_length=64, description="The connection to use")
]

#: Errors that say something about the connection's health (not about the caller's input).
_HEALTH_CODES = {
    "upstream_error",
    "upstream_unavailable",
    "upstream_timeout",
    "reauthorization_required",
    "business_selection_required",
    "upstream_rate_limited",
}


class Bound:
    """A connector built for this request, with its connection row."""

    def __init__(self, request: Request, connection: Connection, connector: Connector) -> None:
        self.request = request
        self.connection = connection
        self.connector = connector

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        state = app_state(self.request)
        try:
            result = await fn()
        except ConnectorError as exc:
            if exc.code in _HEALTH_CODES:
                await record_health(state, self.connection, f"{exc.code}: {exc.detail}")
            raise
        await record_health(state, self.connection, None)
        return result


def bound(resource: Resource, operation: Operation) -> Callable[..., Awaitable[Bound]]:
    async def dependency(request: Request, repo: Repo, x_connection_id: ConnectionHeader) -> Bound:
        connection = await repo.connection(x_connection_id)
        cls_supports = build_connector(app_state(request), connection)
        if not type(cls_supports).supports(resource, operation):
            raise UnsupportedOperation(
                f"{type(cls_supports).info.display_name} does not support {operation.value} on {resource.value}"
            )
        return Bound(request, connection, cls_supports)

    return dependency


def list_query(
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


def _render(model: BaseModel, include_raw: bool, status: int = 200) -> JSONResponse:
    return JSONResponse(
        model.model_dump(mode="json", exclude=None if include_raw else {"raw"}), status_code=status
    )


def _render_page(page: Page[Any], include_raw: bool) -> JSONResponse:
    exclude: Any = None if include_raw else {"data": {"__all__": {"raw"}}}
    return JSONResponse(page.model_dump(mode="json", exclude=exclude))


# --- contacts --------------------------------------------------------------------------------------------


@router.get("/v1/contacts", response_model=Page[Contact], responses=UNIFIED_READ_ERRORS)
async def list_contacts(
    query: Listing,
    b: Annotated[Bound, Depends(bound(Resource.contacts, Operation.list))],
    role: str | None = Query(None, pattern="^(customer|supplier)$"),
    email: str | None = Query(None, max_length=254),
    name: str | None = Query(None, max_length=200),
) -> JSONResponse:
    q = _with_filters(query, b, Resource.contacts, role=role, email=email, name=name)
    return _render_page(await b.call(lambda: b.connector.list_contacts(q)), q.include_raw)


@router.get("/v1/contacts/{record_id}", response_model=Contact, responses=UNIFIED_READ_ERRORS)
async def get_contact(
    record_id: str,
    b: Annotated[Bound, Depends(bound(Resource.contacts, Operation.get))],
    include_raw: bool = False,
) -> JSONResponse:
    return _render(
        await b.call(lambda: b.connector.get_contact(record_id, include_raw=include_raw)), include_raw
    )


@router.post("/v1/contacts", status_code=201, response_model=Contact, responses=UNIFIED_WRITE_ERRORS)
async def create_contact(
    body: ContactCreate, b: Annotated[Bound, Depends(bound(Resource.contacts, Operation.create))]
) -> JSONResponse:
    state = app_state(b.request)
    result = await b.call(
        lambda: writes.perform(
            state, b.connection, "contacts.create", body, lambda w: b.connector.create_contact(body, w)
        )
    )
    return _render(result, False, 201)


@router.patch("/v1/contacts/{record_id}", response_model=Contact, responses=UNIFIED_WRITE_ERRORS)
async def update_contact(
    record_id: str,
    body: ContactUpdate,
    b: Annotated[Bound, Depends(bound(Resource.contacts, Operation.update))],
) -> JSONResponse:
    state = app_state(b.request)
    result = await b.call(
        lambda: writes.perform(
            state,
            b.connection,
            "contacts.update",
            body,
            lambda w: b.connector.update_contact(record_id, body, w),
            record_id=record_id,
        )
    )
    return _render(result, False)


# --- invoices --------------------------------------------------------------------------------------------


@router.get("/v1/invoices", response_model=Page[Invoice], responses=UNIFIED_READ_ERRORS)
async def list_invoices(
    query: Listing,
    b: Annotated[Bound, Depends(bound(Resource.invoices, Operation.list))],
    contact_id: str | None = Query(None, max_length=200),
    status: str | None = Query(None, pattern="^(draft|open|partially_paid|paid|void)$"),
) -> JSONResponse:
    q = _with_filters(query, b, Resource.invoices, contact_id=contact_id, status=status)
    return _render_page(await b.call(lambda: b.connector.list_invoices(q)), q.include_raw)


@router.post("/v1/invoices/validate", response_model=ValidationReport, responses=UNIFIED_WRITE_ERRORS)
async def validate_invoice(
    body: InvoiceCreate, b: Annotated[Bound, Depends(bound(Resource.invoices, Operation.validate))]
) -> ValidationReport:
    """Every check a post would make (balance, contact role, accounts, tax rates, dimensions); writes nothing."""
    problems = await b.call(lambda: b.connector.validate_invoice(body))
    return ValidationReport(valid=not problems, problems=[p.as_dict() for p in problems])


@router.get("/v1/invoices/{record_id}", response_model=Invoice, responses=UNIFIED_READ_ERRORS)
async def get_invoice(
    record_id: str,
    b: Annotated[Bound, Depends(bound(Resource.invoices, Operation.get))],
    include_raw: bool = False,
) -> JSONResponse:
    return _render(
        await b.call(lambda: b.connector.get_invoice(record_id, include_raw=include_raw)), include_raw
    )


@router.post("/v1/invoices", status_code=201, response_model=Invoice, responses=UNIFIED_WRITE_ERRORS)
async def create_invoice(
    body: InvoiceCreate, b: Annotated[Bound, Depends(bound(Resource.invoices, Operation.create))]
) -> JSONResponse:
    state = app_state(b.request)
    result = await b.call(
        lambda: writes.perform(
            state, b.connection, "invoices.create", body, lambda w: b.connector.create_invoice(body, w)
        )
    )
    return _render(result, False, 201)


@router.post("/v1/invoices/{record_id}/void", response_model=Invoice, responses=UNIFIED_WRITE_ERRORS)
async def void_invoice(
    record_id: str, body: InvoiceVoid, b: Annotated[Bound, Depends(bound(Resource.invoices, Operation.void))]
) -> JSONResponse:
    state = app_state(b.request)
    result = await b.call(
        lambda: writes.perform(
            state,
            b.connection,
            "invoices.void",
            body,
            lambda w: b.connector.void_invoice(record_id, body, w),
            record_id=record_id,
        )
    )
    return _render(result, False)


# --- journals --------------------------------------------------------------------------------------------


@router.get("/v1/journals", response_model=Page[Journal], responses=UNIFIED_READ_ERRORS)
async def list_journals(
    query: Listing, b: Annotated[Bound, Depends(bound(Resource.journals, Operation.list))]
) -> JSONResponse:
    return _render_page(await b.call(lambda: b.connector.list_journals(query)), query.include_raw)


@router.post("/v1/journals/validate", response_model=ValidationReport, responses=UNIFIED_WRITE_ERRORS)
async def validate_journal(
    body: JournalCreate, b: Annotated[Bound, Depends(bound(Resource.journals, Operation.validate))]
) -> ValidationReport:
    """Every check a post would make; writes nothing."""
    problems = await b.call(lambda: b.connector.validate_journal(body))
    return ValidationReport(valid=not problems, problems=[p.as_dict() for p in problems])


@router.get("/v1/journals/{record_id}", response_model=Journal, responses=UNIFIED_READ_ERRORS)
async def get_journal(
    record_id: str,
    b: Annotated[Bound, Depends(bound(Resource.journals, Operation.get))],
    include_raw: bool = False,
) -> JSONResponse:
    return _render(
        await b.call(lambda: b.connector.get_journal(record_id, include_raw=include_raw)), include_raw
    )


@router.post("/v1/journals", status_code=201, response_model=Journal, responses=UNIFIED_WRITE_ERRORS)
async def create_journal(
    body: JournalCreate, b: Annotated[Bound, Depends(bound(Resource.journals, Operation.create))]
) -> JSONResponse:
    state = app_state(b.request)
    result = await b.call(
        lambda: writes.perform(
            state, b.connection, "journals.create", body, lambda w: b.connector.create_journal(body, w)
        )
    )
    return _render(result, False, 201)


# --- reference data --------------------------------------------------------------------------------------


@router.get("/v1/accounts", response_model=Page[Account], responses=UNIFIED_READ_ERRORS)
async def list_accounts(
    query: Listing, b: Annotated[Bound, Depends(bound(Resource.accounts, Operation.list))]
) -> JSONResponse:
    return _render_page(await b.call(lambda: b.connector.list_accounts(query)), query.include_raw)


@router.get("/v1/tax-rates", response_model=Page[TaxRate], responses=UNIFIED_READ_ERRORS)
async def list_tax_rates(
    query: Listing, b: Annotated[Bound, Depends(bound(Resource.tax_rates, Operation.list))]
) -> JSONResponse:
    return _render_page(await b.call(lambda: b.connector.list_tax_rates(query)), query.include_raw)
