"""The background reconciler and reaper (reliability-notes.md §2.4: the "completer" and the "reaper").

:meth:`Reconciler.run_once` finds write intents whose outcome is ``unknown``, and ``pending``/``sending``
intents nobody has touched for a lease (their process died), and finishes them by running the connector
write again with the stored payload and the same duplicate guard — an *ensure*, so the upstream never gets a
second record. Each intent is fenced before it is run (its idempotency record is taken over, or the intent
row is updated conditionally), so a client retry, another replica or another reconciler never runs it at
the same time. The result is stored on the idempotency record, so the client's next retry with the same
``Idempotency-Key`` gets the final answer. Every run appears in the tenant's request log as a ``RECONCILE``
entry with its upstream calls.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

from sqlalchemy import or_, select, update

from api import context, writes
from api.connections.refs import ConnectionRef
from api.connections.service import build_connector
from api.errors import ApiError
from api.idempotency import UNKNOWN
from api.state import AppState
from models import Connection, IdempotencyRecord, WriteIntent

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def lease(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.state.settings.write_lease_seconds)

    async def candidates(self, limit: int = 100) -> list[WriteIntent]:
        now = dt.datetime.now(dt.UTC)
        stmt = (
            select(WriteIntent)
            .where(
                WriteIntent.attempts < self.state.settings.reconciler_max_attempts,
                or_(
                    WriteIntent.state == UNKNOWN,
                    (WriteIntent.state.in_((writes.PENDING, writes.SENDING)))
                    & (WriteIntent.updated_at < now - self.lease),
                ),
            )
            .order_by(WriteIntent.updated_at)
            .limit(limit)
        )
        async with self.state.db.session() as session:
            return list((await session.execute(stmt)).scalars())

    async def run_once(self) -> int:
        """Reconcile every eligible intent once; returns how many were settled (succeeded or failed)."""
        settled = 0
        for intent in await self.candidates():
            try:
                if await self.reconcile(intent):
                    settled += 1
            except Exception:
                log.exception("reconciling write intent %s failed", intent.id)
        return settled

    async def _fence(self, intent: WriteIntent) -> bool:
        """Take the intent for this run; False when someone else holds it (or it moved on)."""
        if intent.idempotency_record_id is not None:
            return await writes.idempotency_store(self.state).take_over(intent.idempotency_record_id)
        async with self.state.db.session() as session:
            result = await session.execute(
                update(WriteIntent)
                .where(
                    WriteIntent.id == intent.id,
                    WriteIntent.state == intent.state,
                    WriteIntent.updated_at == intent.updated_at,
                )
                .values(updated_at=dt.datetime.now(dt.UTC))
            )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def reconcile(self, intent: WriteIntent) -> bool:
        state = self.state
        async with state.db.session() as session:
            connection = await session.get(Connection, intent.connection_id)
            record = (
                await session.get(IdempotencyRecord, intent.idempotency_record_id)
                if intent.idempotency_record_id
                else None
            )
        if connection is None or connection.status != "active":
            return False
        if not await self._fence(intent):
            return False
        store = writes.idempotency_store(state)
        # Re-read after the fence: a client retry may have settled it meanwhile.
        async with state.db.session() as session:
            fresh = await session.get(WriteIntent, intent.id)
        if fresh is None or fresh.state in (writes.SUCCEEDED, writes.FAILED):
            if intent.idempotency_record_id is not None:
                await store.release(intent.idempotency_record_id, UNKNOWN)
            return False
        ctx = context.begin()
        ctx.tenant_id, ctx.connection_id = intent.tenant_id, intent.connection_id
        ctx.idempotency_key = record.key if record is not None else None
        started = time.perf_counter()
        status = 500
        outcome: writes.Outcome | None = None
        try:
            ref = ConnectionRef.of(connection)
            connector = build_connector(state, ref)
            outcome = await writes.execute(state, ref, connector, fresh)
            status = outcome.response.status_code
            if intent.idempotency_record_id is not None:
                await writes.settle_record(store, intent.idempotency_record_id, outcome)
            if outcome.unknown and fresh.attempts >= state.settings.reconciler_max_attempts:
                log.error(
                    "write intent %s is still unknown after %d attempts; it needs a look by hand",
                    fresh.id,
                    fresh.attempts,
                )
            return not outcome.unknown
        except ApiError as exc:
            status = exc.status
            ctx.error_code = exc.code
            raise
        finally:
            if outcome is None and intent.idempotency_record_id is not None:
                await store.release(intent.idempotency_record_id, UNKNOWN)
            state.request_log.add(self._log_row(fresh, ctx, status, started))

    @staticmethod
    def _log_row(
        intent: WriteIntent, ctx: context.RequestContext, status: int, started: float
    ) -> dict[str, Any]:
        op = writes.OPERATIONS[intent.operation]
        path = op.route.replace("{record_id}", intent.record_id or "")
        return {
            "id": ctx.request_id,
            "tenant_id": intent.tenant_id,
            "connection_id": intent.connection_id,
            "method": "RECONCILE",
            "path": path,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "idempotency_key": ctx.idempotency_key,
            "error_code": ctx.error_code,
            "request_body": None,
            "upstream_calls": ctx.upstream_calls,
            "created_at": dt.datetime.now(dt.UTC),
        }

    async def reap(self) -> tuple[int, int]:
        """Delete expired idempotency records and request-log rows; returns both counts."""
        records = await writes.idempotency_store(self.state).reap()
        logs = await self.state.request_log.reap(self.state.settings.request_log_retention_days)
        return records, logs

    async def _every(self, seconds: float, job: str) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                if job == "reconcile":
                    await self.run_once()
                else:
                    await self.reap()
            except Exception:
                log.exception("background %s failed", job)

    def start(self) -> None:
        settings = self.state.settings
        if settings.reconciler_interval_seconds > 0:
            self._tasks.append(
                asyncio.create_task(self._every(settings.reconciler_interval_seconds, "reconcile"))
            )
        if settings.reaper_interval_seconds > 0:
            self._tasks.append(asyncio.create_task(self._every(settings.reaper_interval_seconds, "reap")))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
