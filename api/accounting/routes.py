"""The unified routes (CONTRACT §3): contacts, invoices, journals, accounts, tax rates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
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
    dump_json,
    journal_problems,
)

router = APIRouter(tags=["accounting"])

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
RP = TypeVar("RP", bound="ReadParams")
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


async def _bind(request: Request, connection_id: str, resource: Resource, operation: Operation) -> Bound:
    caller = await principal(request)
    state = app_state(request)
    # No database session on this path when the caches are warm (api/cache.py): the write path and
    # health bookkeeping open short sessions of their own.
    connection = await load_connection(state, caller.tenant_id, connection_id)
    connector = build_connector(state, connection)
    if not type(connector).supports(resource, operation):
        raise UnsupportedOperation(
            f"{type(connector).info.display_name} does not support {operation.value} on {resource.value}"
        )
    return Bound(request, connection, connector)


def bound(resource: Resource, operation: Operation) -> Callable[..., Awaitable[Bound]]:
    """The write routes' dependency (their parameters go through FastAPI; see :class:`ReadParams`)."""

    async def dependency(request: Request, x_connection_id: ConnectionHeader) -> Bound:
        # principal() called here rather than declared as a sub-dependency: one FastAPI dependency per call.
        return await _bind(request, x_connection_id, resource, operation)

    return dependency


# --- read routes' parameters -------------------------------------------------------------------------
#
# The read routes are the gateway's hot path. FastAPI's per-request parameter solving cost more CPU than
# everything else the framework does for a call (docs/benchmarks.md), so these routes take the Request and
# validate their query in one pydantic call; the parameters are documented from the same models. Errors
# are the RequestValidationError FastAPI would raise: the same 422 problem, field by field.


class ReadParams(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown query parameters are ignored, as FastAPI does

    include_raw: bool = False


class ListParams(ReadParams):
    page_size: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, max_length=4096)
    updated_since: dt.datetime | None = Field(
        None, description="RFC 3339; records created or changed at or after it"
    )

    def query(self, **filters: str | None) -> ListQuery:
        if self.updated_since is not None and self.updated_since.tzinfo is None:
            raise ApiError(422, "validation_error", "updated_since needs a time zone (RFC 3339)")
        return ListQuery(
            page_size=self.page_size,
            cursor=self.cursor,
            updated_since=self.updated_since,
            include_raw=self.include_raw,
            filters={k: v for k, v in filters.items() if v is not None},
        )


class ContactListParams(ListParams):
    role: str | None = Field(None, pattern="^(customer|supplier)$")
    email: str | None = Field(None, max_length=254)
    name: str | None = Field(None, max_length=200)


class InvoiceListParams(ListParams):
    contact_id: str | None = Field(None, max_length=200)
    status: str | None = Field(None, pattern="^(draft|open|partially_paid|paid|void)$")


_CONNECTION_HEADER = "X-Connection-Id"
_CONNECTION_HEADER_MAX = 64
_FILTERS: dict[type[ReadParams], tuple[str, ...]] = {
    ContactListParams: ("role", "email", "name"),
    InvoiceListParams: ("contact_id", "status"),
}


def _documented(params: type[ReadParams], *, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """``openapi_extra`` for a read route: its path, query and header parameters, as FastAPI writes them."""
    schema = params.model_json_schema()["properties"]
    own = _FILTERS.get(params, ())
    order = [*own, *(name for name in schema if name not in own and name != "include_raw"), "include_raw"]
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"title": name.replace("_", " ").title(), "type": "string"},
        }
        for name in path
    ]
    for name in order:
        prop = {k: v for k, v in schema[name].items() if not (k == "default" and v is None)}
        entry: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": prop}
        if "description" in prop:
            entry["description"] = prop["description"]
        parameters.append(entry)
    parameters.append(
        {
            "name": _CONNECTION_HEADER,
            "in": "header",
            "required": True,
            "description": "The connection to use",
            "schema": {
                "type": "string",
                "maxLength": _CONNECTION_HEADER_MAX,
                "title": _CONNECTION_HEADER,
                "description": "The connection to use",
            },
        }
    )
    return {"parameters": parameters}


async def _read(
    request: Request, params: type[RP], resource: Resource, operation: Operation
) -> tuple[Bound, RP]:
    """The caller's connection and the route's query, in FastAPI's order: a missing or invalid header is
    reported (with any query errors) before authentication; query errors after the connection is found."""
    header: list[dict[str, Any]] = []
    connection_id = request.headers.get(_CONNECTION_HEADER)
    loc = ("header", _CONNECTION_HEADER)
    if connection_id is None:
        header.append({"type": "missing", "loc": loc, "msg": "Field required", "input": None})
    elif len(connection_id) > _CONNECTION_HEADER_MAX:
        header.append(
            {
                "type": "string_too_long",
                "loc": loc,
                "msg": f"String should have at most {_CONNECTION_HEADER_MAX} characters",
                "input": connection_id,
                "ctx": {"max_length": _CONNECTION_HEADER_MAX},
            }
        )
    parsed: RP | None = None
    query: list[dict[str, Any]] = []
    try:
        parsed = params.model_validate(request.query_params)
    except PydanticValidationError as exc:
        query = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]
    if header or connection_id is None:
        raise RequestValidationError(header + query)
    b = await _bind(request, connection_id, resource, operation)
    if parsed is None:
        raise RequestValidationError(query)
    return b, parsed


def _check_filters(query: ListQuery, b: Bound, resource: Resource) -> ListQuery:
    given = query.filters
    cap = type(b.connector).capability(resource)
    allowed = cap.filters if cap else frozenset()
    refused = sorted(k for k in given if k not in allowed)
    if refused:
        raise ApiError(
            422,
            "unsupported_filter",
            f"{type(b.connector).info.display_name} cannot filter by {', '.join(refused)}",
        )
    return query


def _render(model: BaseModel, include_raw: bool, status: int = 200) -> Response:
    return Response(
        dump_json(model, include_raw=include_raw), status_code=status, media_type="application/json"
    )


def _render_page(page: Page[Any], include_raw: bool) -> Response:
    return Response(dump_json(page, include_raw=include_raw), media_type="application/json")


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


@router.get(
    "/v1/contacts",
    response_model=Page[Contact],
    responses=UNIFIED_READ_ERRORS,
    openapi_extra=_documented(ContactListParams),
)
async def list_contacts(request: Request) -> Response:
    b, p = await _read(request, ContactListParams, Resource.contacts, Operation.list)
    q = _check_filters(p.query(role=p.role, email=p.email, name=p.name), b, Resource.contacts)
    return _render_page(await b.call(lambda: b.connector.list_contacts(q)), q.include_raw)


@router.get(
    "/v1/contacts/{record_id}",
    response_model=Contact,
    responses=UNIFIED_READ_ERRORS,
    openapi_extra=_documented(ReadParams, path=("record_id",)),
)
async def get_contact(request: Request) -> Response:
    record_id: str = request.path_params["record_id"]
    b, p = await _read(request, ReadParams, Resource.contacts, Operation.get)
    return _render(
        await b.call(lambda: b.connector.get_contact(record_id, include_raw=p.include_raw)), p.include_raw
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


@router.get(
    "/v1/invoices",
    response_model=Page[Invoice],
    responses=UNIFIED_READ_ERRORS,
    openapi_extra=_documented(InvoiceListParams),
)
async def list_invoices(request: Request) -> Response:
    b, p = await _read(request, InvoiceListParams, Resource.invoices, Operation.list)
    q = _check_filters(p.query(contact_id=p.contact_id, status=p.status), b, Resource.invoices)
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


@router.get(
    "/v1/invoices/{record_id}",
    response_model=Invoice,
    responses=UNIFIED_READ_ERRORS,
    openapi_extra=_documented(ReadParams, path=("record_id",)),
)
async def get_invoice(request: Request) -> Response:
    record_id: str = request.path_params["record_id"]
    b, p = await _read(request, ReadParams, Resource.invoices, Operation.get)
    return _render(
        await b.call(lambda: b.connector.get_invoice(record_id, include_raw=p.include_raw)), p.include_raw
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


@router.get(
    "/v1/journals",
    response_model=Page[Journal],
    responses=UNIFIED_READ_ERRORS,
    openapi_extra=_documented(ListParams),
)
async def list_journals(request: Request) -> Response:
    b, p = await _read(request, ListParams, Resource.journals, Operation.list)
    q = p.query()
    return _render_page(await b.call(lambda: b.connector.list_journals(q)), q.include_raw)


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


@router.get(
    "/v1/journals/{record_id}",
    response_model=Journal,
    responses=UNIFIED_READ_ERRORS,
    openapi_extra=_documented(ReadParams, path=("record_id",)),
)
async def get_journal(request: Request) -> Response:
    record_id: str = request.path_params["record_id"]
    b, p = await _read(request, ReadParams, Resource.journals, Operation.get)
    return _render(
        await b.call(lambda: b.connector.get_journal(record_id, include_raw=p.include_raw)), p.include_raw
    )


@router.post("/v1/journals", status_code=201, response_model=Journal, responses=UNIFIED_WRITE_ERRORS)
async def create_journal(
    body: JournalCreate,
    b: Annotated[Bound, Depends(bound(Resource.journals, Operation.create))],
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _write(b, "journals.create", body, idempotency_key)


# --- reference data --------------------------------------------------------------------------------------


@router.get(
    "/v1/accounts",
    response_model=Page[Account],
    responses=UNIFIED_READ_ERRORS,
    openapi_extra=_documented(ListParams),
)
async def list_accounts(request: Request) -> Response:
    b, p = await _read(request, ListParams, Resource.accounts, Operation.list)
    q = p.query()
    return _render_page(await b.call(lambda: b.connector.list_accounts(q)), q.include_raw)


@router.get(
    "/v1/tax-rates",
    response_model=Page[TaxRate],
    responses=UNIFIED_READ_ERRORS,
    openapi_extra=_documented(ListParams),
)
async def list_tax_rates(request: Request) -> Response:
    b, p = await _read(request, ListParams, Resource.tax_rates, Operation.list)
    q = p.query()
    return _render_page(await b.call(lambda: b.connector.list_tax_rates(q)), q.include_raw)
