"""The write path (CONTRACT §7, reliability-notes.md §2.4): every unified write goes through :func:`perform`.

1. With an ``Idempotency-Key``, the key is claimed first (:mod:`api.idempotency`): a stored final result is
   replayed, a different body is refused, a key in flight elsewhere answers 409.
2. Intent before effect: a ``write_intents`` row holding the operation, its payload and the duplicate guard
   (``WriteRequest.guard``) is committed before anything is sent; the guard is derived from tenant, route and
   key when a key is given (so every retry reuses it), else random. Connectors put it into the upstream's own
   duplicate protection, so calling a write again with the same guard never creates a second record.
3. States: ``pending → sending → succeeded | failed | unknown``. An unknown outcome (timeout after sending,
   dropped connection, 5xx/524 — :class:`~connectors.errors.OutcomeUnknown`, or any failure after a write
   attempt that may have landed) gets a bounded inline reconciliation: the same connector write again with the
   same guard. Still unknown → 504 ``outcome_unknown``, the intent stays ``unknown`` and a retry with the same
   key, or the background reconciler (:mod:`api.reconciler`), resumes it — never a blind second post.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from starlette.responses import Response

from api import context
from api.connections.refs import ConnectionRef
from api.connections.service import HEALTH_CODES, record_health
from api.errors import connector_error_response, problem_response
from api.idempotency import (
    RELEASED,
    UNKNOWN,
    Claim,
    IdempotencyStore,
    StoredResult,
    every,
    fingerprint,
    guard_for,
)
from api.state import AppState
from connectors.base import Connector, WriteRequest, derive_guard
from connectors.errors import (
    BusinessSelectionRequired,
    ConnectorError,
    OutcomeUnknown,
    RateLimited,
    ReauthorizationRequired,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from connectors.models import ContactCreate, ContactUpdate, InvoiceCreate, InvoiceVoid, JournalCreate
from models import WriteIntent

log = logging.getLogger(__name__)

PENDING, SENDING, SUCCEEDED, FAILED = "pending", "sending", "succeeded", "failed"

#: Errors that mean "nothing was done, try again later": not stored for replay, the key is released.
_NOT_EXECUTED: tuple[type[ConnectorError], ...] = (
    RateLimited,
    UpstreamUnavailable,
    UpstreamTimeout,
    ReauthorizationRequired,
    BusinessSelectionRequired,
)

Invoke = Callable[[Connector, str | None, Any, WriteRequest], Awaitable[BaseModel]]


@dataclass(frozen=True)
class WriteOperation:
    """One unified write: its route (the idempotency scope), success status, body model and connector call."""

    method: str
    route: str
    status: int
    model: type[BaseModel]
    invoke: Invoke


def _rid(record_id: str | None) -> str:
    assert record_id is not None
    return record_id


OPERATIONS: dict[str, WriteOperation] = {
    "contacts.create": WriteOperation(
        "POST", "/v1/contacts", 201, ContactCreate, lambda c, r, b, w: c.create_contact(b, w)
    ),
    "contacts.update": WriteOperation(
        "PATCH",
        "/v1/contacts/{record_id}",
        200,
        ContactUpdate,
        lambda c, r, b, w: c.update_contact(_rid(r), b, w),
    ),
    "invoices.create": WriteOperation(
        "POST", "/v1/invoices", 201, InvoiceCreate, lambda c, r, b, w: c.create_invoice(b, w)
    ),
    "invoices.void": WriteOperation(
        "POST",
        "/v1/invoices/{record_id}/void",
        200,
        InvoiceVoid,
        lambda c, r, b, w: c.void_invoice(_rid(r), b, w),
    ),
    "journals.create": WriteOperation(
        "POST", "/v1/journals", 201, JournalCreate, lambda c, r, b, w: c.create_journal(b, w)
    ),
}


@dataclass(frozen=True)
class Outcome:
    """The HTTP answer of one execution and whether it is final (stored for replay)."""

    response: Response
    final: bool
    unknown: bool = False


def idempotency_store(state: AppState) -> IdempotencyStore:
    return IdempotencyStore(
        state.db,
        lease_seconds=state.settings.write_lease_seconds,
        retention_days=state.settings.idempotency_retention_days,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def perform(
    state: AppState,
    connection: ConnectionRef,
    connector: Connector,
    operation: str,
    payload: BaseModel,
    *,
    record_id: str | None = None,
    idempotency_key: str | None = None,
) -> Response:
    """Run one unified write exactly once and answer with its response (replayed when the key is known)."""
    op = OPERATIONS[operation]
    # Unset fields stay unset (a PATCH that omits a field differs from one that clears it).
    body = payload.model_dump(mode="json", exclude_unset=True)
    if idempotency_key is None:
        intent = await _new_intent(
            state, connection, operation, body, record_id, "w:" + uuid.uuid4().hex, None
        )
        async with _heartbeat(state, None, intent):
            outcome = await execute(state, connection, connector, intent)
        return outcome.response

    store = idempotency_store(state)
    path_params = {"record_id": record_id} if record_id is not None else {}
    claim = await store.claim(
        tenant_id=connection.tenant_id,
        method=op.method,
        route=op.route,
        key=idempotency_key,
        fingerprint=fingerprint(body, path_params, connection.id),
    )
    if claim.replay is not None:
        _note_replayed_error(claim.replay)
        return claim.replay.replay()
    guard = guard_for(connection.tenant_id, op.method, op.route, idempotency_key)
    try:
        intent = await _intent_for_record(state, connection, operation, body, record_id, guard, claim)
        async with _heartbeat(state, store, intent):
            outcome = await execute(state, connection, connector, intent)
    except BaseException:
        # An unexpected failure (or cancellation) mid-write: the write may have landed, so resume it later.
        await asyncio.shield(store.release(claim.record_id, UNKNOWN))
        raise
    await settle_record(store, claim.record_id, outcome)
    return outcome.response


async def settle_record(store: IdempotencyStore, record_id: str, outcome: Outcome) -> None:
    if outcome.final:
        ctx = context.current()
        await store.complete(
            record_id, StoredResult.of(outcome.response, ctx.upstream_request_id if ctx else None)
        )
    else:
        await store.release(record_id, UNKNOWN if outcome.unknown else RELEASED)


def _note_replayed_error(result: StoredResult) -> None:
    ctx = context.current()
    if ctx is None or result.status < 400:
        return
    with contextlib.suppress(ValueError, AttributeError):
        code = json.loads(result.body).get("code")
        if isinstance(code, str):
            ctx.error_code = code


@contextlib.asynccontextmanager
async def _heartbeat(
    state: AppState, store: IdempotencyStore | None, intent: WriteIntent
) -> AsyncIterator[None]:
    """Renew the key's lease and the intent's ``updated_at`` while the write runs, so only the claim of a dead
    process ever goes stale (and only then do another request or the reconciler take the write over)."""
    interval = max(state.settings.write_lease_seconds / 3, 0.05)

    async def beat() -> None:
        if store is not None and intent.idempotency_record_id is not None:
            await store.heartbeat(intent.idempotency_record_id)
        async with state.db.session() as session:
            await session.execute(
                update(WriteIntent)
                .where(WriteIntent.id == intent.id, WriteIntent.state == SENDING)
                .values(updated_at=_now())
            )

    async with every(interval, beat, "write heartbeat"):
        yield


async def _new_intent(
    state: AppState,
    connection: ConnectionRef,
    operation: str,
    body: dict[str, Any],
    record_id: str | None,
    guard: str,
    idempotency_record_id: str | None,
) -> WriteIntent:
    intent = WriteIntent(
        tenant_id=connection.tenant_id,
        connection_id=connection.id,
        idempotency_record_id=idempotency_record_id,
        operation=operation,
        record_id=record_id,
        guard=guard,
        upstream_guard=derive_guard(guard),
        payload=body,
        state=PENDING,
        attempts=0,
    )
    async with state.db.session() as session:
        session.add(intent)
    return intent


async def _intent_for_record(
    state: AppState,
    connection: ConnectionRef,
    operation: str,
    body: dict[str, Any],
    record_id: str | None,
    guard: str,
    claim: Claim,
) -> WriteIntent:
    """The record's intent (a retry resumes it with the same guard), created on the first claim."""
    if claim.fresh:
        try:
            return await _new_intent(state, connection, operation, body, record_id, guard, claim.record_id)
        except IntegrityError:
            pass  # the guard outlived the key's reaped record: take that intent over below
    async with state.db.session() as session:
        intent = (
            await session.execute(select(WriteIntent).where(WriteIntent.guard == guard))
        ).scalar_one_or_none()
        if intent is None:
            return await _new_intent(state, connection, operation, body, record_id, guard, claim.record_id)
        if intent.idempotency_record_id != claim.record_id:
            # The key's previous record was reaped after its retention: this is a new request.
            intent.idempotency_record_id = claim.record_id
            intent.state, intent.attempts, intent.result_id, intent.last_error = PENDING, 0, None, None
        # The same body for a resumed write (the fingerprint matched), or a corrected one after a
        # rejection that executed nothing.
        intent.operation, intent.record_id, intent.payload = operation, record_id, body
        return intent


_INTENTS = cast(Table, WriteIntent.__table__)
# Built once: SET takes the columns of the parameters given (the statement is compiled once per column set).
_UPDATE_INTENT = update(_INTENTS).where(_INTENTS.c.id == bindparam("intent_id"))


async def _set_state(app: AppState, intent: WriteIntent, **values: Any) -> None:
    values["updated_at"] = _now()
    # One Core statement on its own transaction (no ORM unit of work): committed before the caller goes on.
    async with app.db.engine.begin() as connection:
        await connection.execute(_UPDATE_INTENT, {"intent_id": intent.id, **values})
    for name, value in values.items():
        setattr(intent, name, value)


def _ambiguous_attempts(calls: list[dict[str, Any]]) -> bool:
    """Whether any upstream write attempt among ``calls`` may have landed without us seeing the answer.

    ``calls`` are the gate's records (:mod:`api.upstream`), which keep a body for write attempts only."""
    for call in calls:
        if "request_body" not in call:
            continue
        error = call.get("error")
        status = call.get("status")
        if error and error not in ("ConnectError", "ConnectTimeout", "PoolTimeout"):
            return True
        if isinstance(status, int) and status >= 500:
            return True
    return False


def _write_accepted(calls: list[dict[str, Any]]) -> bool:
    """Whether an upstream write attempt among ``calls`` got a 2xx answer (Sage Intacct answers HTTP 200 to
    a processed request whatever its functions did)."""
    return any(
        "request_body" in call and isinstance(call.get("status"), int) and 200 <= call["status"] < 300
        for call in calls
    )


def _render(op: WriteOperation, result: BaseModel) -> Response:
    return JSONResponse(result.model_dump(mode="json", exclude={"raw"}), status_code=op.status)


def _outcome_unknown(detail: str, cause: ConnectorError | None) -> Response:
    extra: dict[str, Any] = {}
    if cause is not None and cause.upstream is not None:
        extra["upstream"] = cause.upstream.as_dict()
    return problem_response(504, "outcome_unknown", "Outcome unknown", detail, extra=extra)


async def execute(
    state: AppState, connection: ConnectionRef, connector: Connector, intent: WriteIntent
) -> Outcome:
    """Send the intent's write (with bounded inline reconciliation) and record how it ended."""
    op = OPERATIONS[intent.operation]
    payload = op.model.model_validate(intent.payload)
    write = WriteRequest(intent.guard)
    ctx = context.current()
    first_call = len(ctx.upstream_calls) if ctx is not None else 0
    await _set_state(state, intent, state=SENDING, attempts=intent.attempts + 1)
    unknown: ConnectorError | None = None
    for _ in range(1 + max(0, state.settings.inline_reconcile_attempts)):
        try:
            result = await op.invoke(connector, intent.record_id, payload, write)
        except OutcomeUnknown as exc:
            unknown = exc
            continue
        except ConnectorError as exc:
            calls = ctx.upstream_calls[first_call:] if ctx is not None else []
            if (
                unknown is not None
                or _ambiguous_attempts(calls)
                or (isinstance(exc, _NOT_EXECUTED) and _write_accepted(calls))
            ):
                # An earlier attempt may have landed (e.g. a timeout, then a 429 storm), or the upstream
                # accepted the write and a later call of the operation was refused (the read-back of the
                # created record, say): not a failure, and never "nothing was done, send it again".
                unknown = exc
                continue
            await _health(state, connection, exc)
            await _set_state(state, intent, state=FAILED, last_error=f"{exc.code}: {exc.detail}"[:1000])
            executed = not isinstance(exc, _NOT_EXECUTED) and exc.upstream is not None
            return Outcome(connector_error_response(exc), final=executed)
        except Exception as exc:
            # A failure after the call (e.g. mapping the answer): the write may have landed.
            await _set_state(state, intent, state=UNKNOWN, last_error=f"internal: {type(exc).__name__}")
            raise
        await _health(state, connection, None)
        await _set_state(
            state,
            intent,
            state=SUCCEEDED,
            result_id=str(getattr(result, "id", "") or "")[:200],
            last_error=None,
        )
        return Outcome(_render(op, result), final=True)
    assert unknown is not None
    await _health(state, connection, unknown)
    await _set_state(state, intent, state=UNKNOWN, last_error=f"{unknown.code}: {unknown.detail}"[:1000])
    detail = (
        "The upstream may or may not have recorded this write. It is being reconciled: retry with the same "
        "Idempotency-Key to get the final result (the write is never sent twice)."
    )
    return Outcome(_outcome_unknown(detail, unknown), final=False, unknown=True)


async def _health(state: AppState, connection: ConnectionRef, exc: ConnectorError | None) -> None:
    if exc is None:
        await record_health(state, connection, None)
    elif exc.code in HEALTH_CODES:
        await record_health(state, connection, f"{exc.code}: {exc.detail}")
