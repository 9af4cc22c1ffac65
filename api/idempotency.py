"""``Idempotency-Key`` records (CONTRACT §7, reliability-notes.md §2.5).

A record is scoped by ``(tenant, method, route template, key)`` (unique constraint) and moves through:

* ``in_flight`` — claimed by one request; ``locked_until`` is a lease renewed by a heartbeat, so a crashed
  process's claim expires and another process or replica may take over;
* ``completed`` — the final status, body and relevant headers are stored and replayed;
* ``unknown`` — the upstream outcome is unknown (504 ``outcome_unknown``, never stored as final): the next
  retry, or the background reconciler, resumes the same write intent;
* ``released`` — execution stopped before anything was written (upstream 429, connect failure, reauthorization
  needed): the next retry runs again.

Claims are atomic across processes: ``INSERT … ON CONFLICT DO NOTHING`` for a new key, and a conditional
``UPDATE`` (the fence) to take over an ``unknown``/``released`` record or an expired lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, delete, exists, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from starlette.responses import Response

from api.db import Database
from api.errors import ApiError
from models import IdempotencyRecord, WriteIntent
from models.tables import new_id

log = logging.getLogger(__name__)

IN_FLIGHT, COMPLETED, UNKNOWN, RELEASED = "in_flight", "completed", "unknown", "released"
REPLAYED_HEADER = "Idempotent-Replayed"
#: Response headers kept with a stored result (the rest is per response: request id, rate limits).
STORED_HEADERS = ("content-type", "upstream-request-id", "location")
TERMINAL_INTENT_STATES = ("succeeded", "failed")
MAX_KEY_LENGTH = 255


def parse_key(raw: str | None) -> str | None:
    """The key of an ``Idempotency-Key`` header: 1–255 printable ASCII; a Structured-Field string is unquoted.

    Raises 400 ``invalid_idempotency_key`` for anything else (an empty or over-long value, control or
    non-ASCII characters).
    """
    if raw is None:
        return None
    value = raw.strip()
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        value = value[1:-1]
    if not 1 <= len(value) <= MAX_KEY_LENGTH or not all(0x20 <= ord(c) <= 0x7E for c in value):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
        )
    return value


def fingerprint(body: Any, path_params: dict[str, Any], connection_id: str) -> str:
    """SHA-256 over the canonical JSON of the request: body, path parameters and target connection."""
    canonical = json.dumps(
        {"body": body, "path": path_params, "connection": connection_id},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def guard_for(tenant_id: str, method: str, route: str, key: str) -> str:
    """The write guard of a keyed request: stable for every retry with the same key and scope."""
    digest = hashlib.sha256(f"{tenant_id}\n{method}\n{route}\n{key}".encode()).hexdigest()
    return f"idem:{digest}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class StoredResult:
    status: int
    body: bytes
    headers: dict[str, str]

    @classmethod
    def of(cls, response: Response, upstream_request_id: str | None) -> StoredResult:
        headers = {k: v for k, v in response.headers.items() if k in STORED_HEADERS}
        if upstream_request_id:
            headers["upstream-request-id"] = upstream_request_id
        return cls(response.status_code, bytes(response.body), headers)

    def replay(self) -> Response:
        return Response(self.body, self.status, headers={**self.headers, REPLAYED_HEADER: "true"})


@dataclass(frozen=True)
class Claim:
    """A claimed record (``replay`` is None) or a stored result to answer with."""

    record_id: str
    replay: StoredResult | None = None
    fresh: bool = False
    """A new record (no intent can exist for it yet)."""


_RECORDS = cast(Table, IdempotencyRecord.__table__)
_COMPLETE = update(_RECORDS).where(_RECORDS.c.id == bindparam("record_id"))


class IdempotencyStore:
    def __init__(self, db: Database, *, lease_seconds: float, retention_days: int) -> None:
        self.db = db
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.retention = dt.timedelta(days=retention_days)
        # Built once (statement construction cost more than the database round trip): the columns of an
        # insert come from its parameters, the SET of an update from the parameters besides ``record_id``.
        self._claim_insert = (
            (sqlite_insert if db.sqlite else pg_insert)(_RECORDS)
            .on_conflict_do_nothing()
            .returning(_RECORDS.c.id)
        )

    async def claim(self, *, tenant_id: str, method: str, route: str, key: str, fingerprint: str) -> Claim:
        """Claim the key for this request, or raise 409/422, or return the stored result to replay."""
        for _ in range(5):
            now = _now()
            record_id = new_id()
            async with self.db.engine.begin() as connection:
                inserted = (
                    await connection.execute(
                        self._claim_insert,
                        {
                            "id": record_id,
                            "tenant_id": tenant_id,
                            "key": key,
                            "method": method,
                            "route": route,
                            "fingerprint": fingerprint,
                            "state": IN_FLIGHT,
                            "locked_until": now + self.lease,
                            "created_at": now,
                            "expires_at": now + self.retention,
                        },
                    )
                ).scalar_one_or_none()
            if inserted is not None:
                return Claim(record_id, fresh=True)
            scope = (
                (IdempotencyRecord.tenant_id == tenant_id)
                & (IdempotencyRecord.method == method)
                & (IdempotencyRecord.route == route)
                & (IdempotencyRecord.key == key)
            )
            async with self.db.session() as session:
                row = (await session.execute(select(IdempotencyRecord).where(scope))).scalar_one_or_none()
                if row is None:
                    continue  # reaped between the insert and the read: try again
                if row.expires_at <= now and row.state in (COMPLETED, RELEASED):
                    # Past retention but not reaped yet: the key is free again (Stripe: a new request).
                    await self._purge(session, row.id, now)
                    continue
            if row.fingerprint != fingerprint and row.state == RELEASED:
                # Nothing was executed for the first body (Stripe: failed validation is not saved).
                if await self.take_over(row.id, fingerprint=fingerprint):
                    return Claim(row.id)
                continue
            if row.fingerprint != fingerprint:
                raise ApiError(
                    422,
                    "idempotency_key_reused",
                    "This Idempotency-Key was used with a different request; use a new key for a new request",
                )
            if row.state == COMPLETED:
                assert row.response_status is not None
                return Claim(
                    row.id,
                    StoredResult(
                        row.response_status,
                        (row.response_body or "").encode(),
                        dict(row.response_headers or {}),
                    ),
                )
            if await self.take_over(row.id):
                return Claim(row.id)
            raise in_use()
        raise in_use()

    async def take_over(self, record_id: str, *, fingerprint: str | None = None) -> bool:
        """The fence: move an ``unknown``/``released`` record or an expired lease to ``in_flight`` (one winner).

        With ``fingerprint``, only a ``released`` record is taken (it gets the new request's fingerprint).
        """
        now = _now()
        values: dict[str, Any] = {"state": IN_FLIGHT, "locked_until": now + self.lease}
        if fingerprint is not None:
            condition = IdempotencyRecord.state == RELEASED
            values["fingerprint"] = fingerprint
        else:
            condition = or_(
                IdempotencyRecord.state.in_((UNKNOWN, RELEASED)),
                and_(
                    IdempotencyRecord.state == IN_FLIGHT,
                    or_(IdempotencyRecord.locked_until.is_(None), IdempotencyRecord.locked_until < now),
                ),
            )
        async with self.db.session() as session:
            result = await session.execute(
                update(IdempotencyRecord).where(IdempotencyRecord.id == record_id, condition).values(**values)
            )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def heartbeat(self, record_id: str) -> None:
        async with self.db.session() as session:
            await session.execute(
                update(IdempotencyRecord)
                .where(IdempotencyRecord.id == record_id, IdempotencyRecord.state == IN_FLIGHT)
                .values(locked_until=_now() + self.lease)
            )

    async def complete(self, record_id: str, result: StoredResult) -> None:
        async with self.db.engine.begin() as connection:
            await connection.execute(
                _COMPLETE,
                {
                    "record_id": record_id,
                    "state": COMPLETED,
                    "locked_until": None,
                    "response_status": result.status,
                    "response_body": result.body.decode("utf-8"),
                    "response_headers": result.headers,
                },
            )

    async def release(self, record_id: str, state: str) -> None:
        """End a claim without a final result: ``unknown`` (resume later) or ``released`` (run again)."""
        async with self.db.session() as session:
            await session.execute(
                update(IdempotencyRecord)
                .where(IdempotencyRecord.id == record_id, IdempotencyRecord.state == IN_FLIGHT)
                .values(state=state, locked_until=None)
            )

    async def _purge(self, session: Any, record_id: str, now: dt.datetime) -> None:
        await session.execute(
            delete(WriteIntent).where(
                WriteIntent.idempotency_record_id == record_id, WriteIntent.state.in_(TERMINAL_INTENT_STATES)
            )
        )
        await session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.id == record_id,
                IdempotencyRecord.expires_at <= now,
                IdempotencyRecord.state.in_((COMPLETED, RELEASED)),
                ~exists().where(WriteIntent.idempotency_record_id == IdempotencyRecord.id),
            )
        )

    async def reap(self) -> int:
        """Delete records past retention whose write is settled, with their intents; returns records deleted.

        Records whose write is still ``unknown`` are kept until the reconciler settles them. Intents of
        writes made without a key are deleted after the same retention once settled.
        """
        now = _now()
        expired = select(IdempotencyRecord.id).where(
            IdempotencyRecord.expires_at <= now, IdempotencyRecord.state.in_((COMPLETED, RELEASED))
        )
        async with self.db.session() as session:
            await session.execute(
                delete(WriteIntent).where(
                    WriteIntent.idempotency_record_id.in_(expired),
                    WriteIntent.state.in_(TERMINAL_INTENT_STATES),
                )
            )
            result = await session.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.expires_at <= now,
                    IdempotencyRecord.state.in_((COMPLETED, RELEASED)),
                    ~exists().where(WriteIntent.idempotency_record_id == IdempotencyRecord.id),
                )
            )
            await session.execute(
                delete(WriteIntent).where(
                    WriteIntent.idempotency_record_id.is_(None),
                    WriteIntent.state.in_(TERMINAL_INTENT_STATES),
                    WriteIntent.updated_at <= now - self.retention,
                )
            )
        return int(result.rowcount)  # type: ignore[attr-defined]


def in_use() -> ApiError:
    return ApiError(
        409,
        "idempotency_key_in_use",
        "A request with this Idempotency-Key is still being processed; retry shortly",
        headers={"Retry-After": "1"},
    )


@contextlib.asynccontextmanager
async def every(interval: float, beat: Callable[[], Awaitable[None]], what: str) -> AsyncIterator[None]:
    """Run ``beat`` every ``interval`` seconds while the block runs (lease heartbeats); a failed beat is
    logged and the next one still runs."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await beat()
            except Exception:
                log.exception("%s failed", what)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
