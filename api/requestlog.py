"""The request log (CONTRACT §9): a batched writer and ``GET /v1/requests``."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import delete, insert
from sqlalchemy.exc import DataError, IntegrityError

from api.db import Database
from api.deps import Repo
from api.errors import ApiError
from api.schemas import problem_responses
from models import RequestLog

log = logging.getLogger(__name__)
router = APIRouter(tags=["request log"])

MAX_PENDING = 100_000


class RequestLogWriter:
    """Buffers log rows and writes them in batches off the request path; ``flush()`` forces a write.

    A row reaches ``GET /v1/requests`` within ``interval`` (0.2 s): a batch of a few hundred rows costs about
    20 µs of CPU per row, a batch of a few dozen about 50 (docs/benchmarks.md)."""

    def __init__(self, db: Database, *, batch: int = 500, interval: float = 0.2) -> None:
        self.db = db
        self.batch = batch
        self.interval = interval
        self.pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def add(self, row: dict[str, Any]) -> None:
        self.pending.append(row)
        if len(self.pending) >= self.batch:
            self._wake.set()

    async def flush(self) -> None:
        async with self._lock:
            rows, self.pending = self.pending, []
            if not rows:
                return
            try:
                await self._insert(rows)
            except (DataError, IntegrityError):
                await self._insert_singly(rows)
            except Exception:
                log.exception("request log write failed; %d rows kept for retry", len(rows))
                self.pending[:0] = rows
                if len(self.pending) > MAX_PENDING:
                    dropped = len(self.pending) - MAX_PENDING
                    del self.pending[MAX_PENDING:]
                    log.error("request log backlog full: %d rows dropped", dropped)

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        # A Core executemany on a connection of its own: no ORM unit of work (and its bulk-insert
        # bookkeeping) for rows that are only ever written.
        async with self.db.engine.begin() as connection:
            await connection.execute(insert(RequestLog), rows)

    async def _insert_singly(self, rows: list[dict[str, Any]]) -> None:
        """One bad row (the database refused its data) must not hold back the others."""
        for row in rows:
            try:
                await self._insert([row])
            except (DataError, IntegrityError):
                log.error("request log row refused by the database", extra={"request_id": row.get("id")})

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def stop(self) -> None:
        # Never cancel a flush half-way: a write cancelled inside the database driver can leave its pooled
        # connection checked out with the transaction open, and SQLite then refuses every other writer
        # (the final flush below included) until that connection is collected.
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()

    async def reap(self, retention_days: int) -> int:
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=retention_days)
        async with self.db.session() as session:
            result = await session.execute(delete(RequestLog).where(RequestLog.created_at < cutoff))
        return int(result.rowcount)  # type: ignore[attr-defined]


class UpstreamCallView(BaseModel):
    provider: str
    method: str
    path: str
    status: int | None = None
    duration_ms: float
    attempt: int
    upstream_request_id: str | None = None
    error: str | None = None
    retry_after: float | None = None
    request_body: Any = None


class RequestLogView(BaseModel):
    id: str
    created_at: dt.datetime
    method: str
    path: str
    connection_id: str | None
    status: int
    duration_ms: float
    idempotency_key: str | None
    error_code: str | None
    request_body: Any = None
    upstream_calls: list[UpstreamCallView]


class RequestLogPage(BaseModel):
    data: list[RequestLogView]
    next_cursor: str | None = None


def _view(row: RequestLog) -> RequestLogView:
    return RequestLogView(
        id=row.id,
        created_at=row.created_at,
        method=row.method,
        path=row.path,
        connection_id=row.connection_id,
        status=row.status,
        duration_ms=row.duration_ms,
        idempotency_key=row.idempotency_key,
        error_code=row.error_code,
        request_body=row.request_body,
        upstream_calls=[UpstreamCallView.model_validate(c) for c in row.upstream_calls or []],
    )


def _encode_cursor(row: RequestLog) -> str:
    return base64.urlsafe_b64encode(json.dumps([row.created_at.isoformat(), row.id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        created, rid = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        when = dt.datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("naive cursor time")
        return when, str(rid)
    except (ValueError, TypeError):
        raise ApiError(422, "validation_error", "Invalid cursor") from None


@router.get("/v1/requests", response_model=RequestLogPage, responses=problem_responses(401, 422))
async def list_requests(
    repo: Repo,
    page_size: int = Query(50, ge=1, le=200),
    cursor: str | None = Query(None, max_length=500),
    connection_id: str | None = Query(None, max_length=64),
    status: int | None = Query(None, ge=100, le=599),
    since: dt.datetime | None = Query(None, description="RFC 3339, inclusive"),
    until: dt.datetime | None = Query(None, description="RFC 3339, exclusive"),
) -> RequestLogPage:
    """The tenant's calls, newest first (background reconciliations appear with method ``RECONCILE``)."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise ApiError(422, "validation_error", f"{name} needs a time zone (RFC 3339)")
    stmt = (
        repo.scoped(RequestLog)
        .order_by(RequestLog.created_at.desc(), RequestLog.id.desc())
        .limit(page_size + 1)
    )
    if connection_id:
        stmt = stmt.where(RequestLog.connection_id == connection_id)
    if status is not None:
        stmt = stmt.where(RequestLog.status == status)
    if since is not None:
        stmt = stmt.where(RequestLog.created_at >= since)
    if until is not None:
        stmt = stmt.where(RequestLog.created_at < until)
    if cursor:
        created, rid = _decode_cursor(cursor)
        stmt = stmt.where(
            (RequestLog.created_at < created) | ((RequestLog.created_at == created) & (RequestLog.id < rid))
        )
    rows = list((await repo.session.execute(stmt)).scalars())
    more = len(rows) > page_size
    rows = rows[:page_size]
    return RequestLogPage(
        data=[_view(r) for r in rows], next_cursor=_encode_cursor(rows[-1]) if more else None
    )


@router.get("/v1/requests/{request_id}", response_model=RequestLogView, responses=problem_responses(401, 404))
async def get_request(request_id: str, repo: Repo) -> RequestLogView:
    row = (
        await repo.session.execute(repo.scoped(RequestLog).where(RequestLog.id == request_id))
    ).scalar_one_or_none()
    if row is None:
        raise ApiError(404, "not_found", "No such request")
    return _view(row)
