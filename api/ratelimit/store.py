"""Where budgets live: shared by every gateway process through the database (or Redis, ``redis_store``).

Every decision is one atomic statement, so replicas never admit more than a policy allows (no
read-then-write race; reliability-notes.md §6.1):

* quotas — one multi-row ``INSERT … ON CONFLICT DO UPDATE SET used = used + 1 … WHERE used < quota AND
  not blocked RETURNING`` over every bucket a call needs; a bucket whose row does not come back refused the
  call, and the buckets that did count are given back (a refusal may briefly over-count, never under-count);
* concurrency — one row per slot; a call leases a free (or expired) slot with ``UPDATE … WHERE slot =
  (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING``; a crashed holder's lease expires. On PostgreSQL
  the lease and the quota count are one statement (data-modifying CTEs): one round trip per admitted call,
  plus the release after it;
* upstream signals — ``blocked_until`` on the bucket, checked by the same quota statement.

On SQLite (single process by design, reliability-notes.md §6.3) quotas and blocks use the same statements
under SQLite's one-writer lock, and concurrency slots are held in memory: the in-flight calls are this
process's own.
Times are the gateway hosts' clocks (replicas are expected to run NTP); windows are aligned to the epoch.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import (
    Integer,
    String,
    Table,
    bindparam,
    case,
    column,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import BindParameter, ColumnClause
from sqlalchemy.sql.selectable import TextualSelect

from api.db import async_url, sqlite_pragmas
from models import RateLimitBucket, RateLimitSlot
from models.tables import UTCDateTime

BUCKETS = cast(Table, RateLimitBucket.__table__)
SLOTS = cast(Table, RateLimitSlot.__table__)


@dataclass(frozen=True)
class Bucket:
    """One quota partition a call needs. ``quota`` is None for a block-only entry (concurrency policies
    that upstream signals can close)."""

    key: str
    quota: int | None
    window: int
    units: int = 1
    """How many calls to count at once (the governor leases blocks of a large quota: ``governor.py``)."""

    def window_start(self, now: float) -> float:
        return float(int(now // self.window) * self.window)


@dataclass(frozen=True)
class BucketState:
    used: int
    window_start: float
    blocked_until: float | None = None


@dataclass(frozen=True)
class TakeResult:
    admitted: bool
    states: dict[str, BucketState]
    """After admission: every bucket's new state. After a refusal: the refusing buckets' states."""


class Store(Protocol):
    local_slots: bool
    """Concurrency slots live in this process's memory (SQLite): releasing one is not I/O."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def take(self, buckets: Sequence[Bucket], now: float) -> TakeResult:
        """Count one call in every bucket, or in none of them."""
        ...

    async def claim(self, key: str, cap: int, holder: str, now: float, ttl: float) -> int | None:
        """Lease one concurrency slot of ``key`` (of ``cap``); None when all are held."""
        ...

    async def release(self, key: str, slot: int, holder: str) -> None: ...

    async def claim_take(
        self, key: str, cap: int, holder: str, now: float, ttl: float, buckets: Sequence[Bucket]
    ) -> tuple[int | None, TakeResult | None]:
        """``claim`` then, with a slot, ``take``: ``(None, None)`` without a slot; a refused take gives
        its slot back and returns ``(slot, refused result)``."""
        ...

    async def give_back(self, key: str, window_start: float, units: int) -> None:
        """Uncount ``units`` calls of the window that starts at ``window_start`` (a later window: no-op)."""
        ...

    async def block(self, bucket: Bucket, until: float, now: float) -> None:
        """Refuse every call of ``bucket`` until ``until`` (never shortens an existing block)."""
        ...

    async def read(
        self, buckets: Sequence[Bucket], slots: Sequence[str], now: float
    ) -> tuple[dict[str, BucketState], dict[str, int]]:
        """Bucket states and in-flight counts, for response headers."""
        ...


async def claim_then_take(
    store: Store, key: str, cap: int, holder: str, now: float, ttl: float, buckets: Sequence[Bucket]
) -> tuple[int | None, TakeResult | None]:
    """:meth:`Store.claim_take` as two calls, ``claim`` then ``take`` (a refused take gives the slot back),
    for stores that cannot do both in one round trip."""
    slot = await store.claim(key, cap, holder, now, ttl)
    if slot is None or not buckets:
        return slot, None
    result = await store.take(buckets, now)
    if not result.admitted:
        await store.release(key, slot, holder)
    return slot, result


# Count ``units`` more calls (the inserted row's ``used``) in a bucket's current window (a newer window
# restarts at ``units``; a replica whose clock is behind counts into the newer window, never reopens an old
# one) unless the bucket is blocked or that many calls would overspend it.
_UPSERT = """
    ON CONFLICT (key) DO UPDATE SET
      used = CASE WHEN rate_limit_buckets.window_start >= excluded.window_start
                  THEN rate_limit_buckets.used + excluded.used ELSE excluded.used END,
      window_start = CASE WHEN rate_limit_buckets.window_start >= excluded.window_start
                          THEN rate_limit_buckets.window_start ELSE excluded.window_start END,
      quota = excluded.quota
    WHERE (rate_limit_buckets.blocked_until IS NULL OR rate_limit_buckets.blocked_until <= :now)
      AND (excluded.quota IS NULL
           OR rate_limit_buckets.window_start < excluded.window_start
           OR rate_limit_buckets.used + excluded.used <= excluded.quota)
"""


def _ts(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, dt.UTC)


def _epoch(value: dt.datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


class SqlStore:
    """Budgets in the gateway's own database (PostgreSQL for replicas; SQLite for one process)."""

    def __init__(self, database_url: str) -> None:
        url = async_url(database_url)
        self.sqlite = url.get_backend_name() == "sqlite"
        self.local_slots = self.sqlite
        # Its own small pool, in autocommit: every decision is one statement and one round trip (no
        # BEGIN/COMMIT, no pre-ping, no reset on checkin), and the limiter never waits behind the app's
        # request sessions for a connection.
        options: dict[str, Any] = {
            "isolation_level": "AUTOCOMMIT",
            "pool_reset_on_return": None,
            "skip_autocommit_rollback": True,
        }
        if not self.sqlite:
            # Counters, not ledgers: a commit need not wait for the WAL flush (a PostgreSQL crash may lose
            # the last few counts; visibility and atomicity across replicas are unchanged). Session-level:
            # only the limiter's own connections.
            options.update(
                pool_size=10, max_overflow=40, connect_args={"options": "-c synchronous_commit=off"}
            )
        self.engine: AsyncEngine = create_async_engine(url, **options)
        if self.sqlite:
            # Counters, not ledgers: WAL + NORMAL survives a process crash (only an OS crash may lose the
            # last few counts), and spares an fsync per upstream call.
            event.listen(self.engine.sync_engine, "connect", sqlite_pragmas("synchronous=NORMAL"))
        self._slots_made: set[tuple[str, int]] = set()
        self._take_statements: dict[int, TextualSelect] = {}
        self._claim_statements: dict[int, TextualSelect] = {}
        self._local: dict[str, dict[str, float]] = {}

    def _insert(self, table: Any) -> Any:
        return (sqlite.insert if self.sqlite else postgresql.insert)(table)

    async def start(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(select(1))

    async def close(self) -> None:
        await self.engine.dispose()

    def _take_statement(self, n: int) -> TextualSelect:
        """The multi-row conditional upsert for ``n`` buckets, as cached SQL text (compiled once)."""
        statement = self._take_statements.get(n)
        if statement is not None:
            return statement
        rows = ", ".join(f"(:k{i}, :w{i}, :n{i}, :q{i})" for i in range(n))
        sql = f"""
            INSERT INTO rate_limit_buckets (key, window_start, used, quota) VALUES {rows}
            {_UPSERT}
            RETURNING key, used, window_start, blocked_until
        """  # noqa: S608 - only placeholders are interpolated
        params: list[BindParameter[Any]] = [bindparam("now", type_=UTCDateTime())]
        for i in range(n):
            params += [
                bindparam(f"w{i}", type_=UTCDateTime()),
                bindparam(f"n{i}", type_=Integer()),
                bindparam(f"q{i}", type_=Integer()),
            ]
        statement = (
            text(sql)
            .bindparams(*params)
            .columns(
                column("key", String()),
                column("used", Integer()),
                column("window_start", UTCDateTime()),
                column("blocked_until", UTCDateTime()),
            )
        )
        self._take_statements[n] = statement
        return statement

    async def take(self, buckets: Sequence[Bucket], now: float) -> TakeResult:
        ordered = sorted(buckets, key=lambda b: b.key)  # one lock order across replicas: no deadlocks
        values: dict[str, Any] = {"now": _ts(now)}
        for i, b in enumerate(ordered):
            values.update(self._bucket_params(i, b, now))
        async with self.engine.connect() as conn:
            result = await conn.execute(self._take_statement(len(ordered)), values)
            counted = {
                row.key: BucketState(row.used, row.window_start.timestamp(), _epoch(row.blocked_until))
                for row in result
            }
            if len(counted) == len(ordered):
                return TakeResult(True, counted)
        return await self._refuse(ordered, counted)

    @staticmethod
    def _bucket_params(i: int, bucket: Bucket, now: float) -> dict[str, Any]:
        return {
            f"k{i}": bucket.key,
            f"w{i}": _ts(bucket.window_start(now)),
            f"n{i}": bucket.units,
            f"q{i}": bucket.quota,
        }

    async def give_back(self, key: str, window_start: float, units: int) -> None:
        """Uncount ``units`` calls of the window that starts at ``window_start`` (a later window: no-op)."""
        async with self.engine.connect() as conn:
            await self._uncount(conn, key, window_start, units)

    @staticmethod
    async def _uncount(conn: Any, key: str, window_start: float, units: int) -> None:
        await conn.execute(
            update(BUCKETS)
            .where(
                BUCKETS.c.key == key,
                BUCKETS.c.window_start == _ts(window_start),
                BUCKETS.c.used >= units,
            )
            .values(used=BUCKETS.c.used - units)
        )

    async def _refuse(self, ordered: Sequence[Bucket], counted: dict[str, BucketState]) -> TakeResult:
        """Give back what a refused call counted; report the refusing buckets' states."""
        refused = [b.key for b in ordered if b.key not in counted]
        units = {b.key: b.units for b in ordered}
        async with self.engine.connect() as conn:
            for key, state in counted.items():
                await self._uncount(conn, key, state.window_start, units[key])
            current = await conn.execute(
                select(BUCKETS.c.key, BUCKETS.c.used, BUCKETS.c.window_start, BUCKETS.c.blocked_until).where(
                    BUCKETS.c.key.in_(refused)
                )
            )
            states = {
                row.key: BucketState(row.used, row.window_start.timestamp(), _epoch(row.blocked_until))
                for row in current
            }
        return TakeResult(False, states)

    async def _make_slots(self, key: str, cap: int) -> None:
        if (key, cap) in self._slots_made:
            return
        stmt = self._insert(SLOTS).values([{"key": key, "slot": i} for i in range(cap)])
        async with self.engine.connect() as conn:
            await conn.execute(stmt.on_conflict_do_nothing(index_elements=[SLOTS.c.key, SLOTS.c.slot]))
        self._slots_made.add((key, cap))

    async def claim(self, key: str, cap: int, holder: str, now: float, ttl: float) -> int | None:
        if cap <= 0:
            return None
        if self.sqlite:
            return self._claim_local(key, cap, holder, now, ttl)
        await self._make_slots(key, cap)
        async with self.engine.connect() as conn:
            slot: int | None = (
                await conn.execute(self._claim_sql(), self._claim_params(key, cap, holder, now, ttl))
            ).scalar_one_or_none()
        return slot

    def _claim_local(self, key: str, cap: int, holder: str, now: float, ttl: float) -> int | None:
        # SQLite serves exactly one process (reliability-notes.md §6.3): in-flight calls are this
        # process's own, so the slots live in memory (and die with it, like the calls).
        held = self._local.setdefault(key, {})
        for stale in [h for h, until in held.items() if until <= now]:
            del held[stale]
        if len(held) >= cap:
            return None
        held[holder] = now + ttl
        return 0

    @staticmethod
    def _claim_params(key: str, cap: int, holder: str, now: float, ttl: float) -> dict[str, Any]:
        return {"sk": key, "cap": cap, "holder": holder, "now": _ts(now), "exp": _ts(now + ttl)}

    def _claim_sql(self, buckets: int = 0) -> TextualSelect:
        """Lease a free slot; with ``buckets``, also count the call in them iff a slot was leased — one
        statement, one round trip (PostgreSQL: data-modifying CTEs)."""
        statement = self._claim_statements.get(buckets)
        if statement is not None:
            return statement
        claim = """
            UPDATE rate_limit_slots SET holder = :holder, expires_at = :exp
            WHERE key = :sk AND slot = (
              SELECT slot FROM rate_limit_slots
              WHERE key = :sk AND slot < :cap AND (holder IS NULL OR expires_at <= :now)
              ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING slot
        """
        params: list[BindParameter[Any]] = [
            bindparam("now", type_=UTCDateTime()),
            bindparam("exp", type_=UTCDateTime()),
        ]
        if not buckets:
            sql = claim
            columns: list[ColumnClause[Any]] = [column("slot", Integer())]
        else:
            rows = ", ".join(f"(CAST(:k{i} AS VARCHAR), :w{i}, :n{i}, :q{i})" for i in range(buckets))
            sql = f"""
                WITH claimed AS ({claim}),
                counted AS (
                  INSERT INTO rate_limit_buckets (key, window_start, used, quota)
                  SELECT v.k, v.w, v.n, v.q FROM (VALUES {rows}) AS v (k, w, n, q)
                  WHERE EXISTS (SELECT 1 FROM claimed)
                  {_UPSERT}
                  RETURNING key, used, window_start, blocked_until
                )
                SELECT (SELECT slot FROM claimed) AS slot, counted.key, counted.used,
                       counted.window_start, counted.blocked_until
                FROM (SELECT 1) AS one LEFT JOIN counted ON true
            """  # noqa: S608 - only placeholders are interpolated
            for i in range(buckets):
                params += [
                    bindparam(f"w{i}", type_=UTCDateTime()),
                    bindparam(f"n{i}", type_=Integer()),
                    bindparam(f"q{i}", type_=Integer()),
                ]
            columns = [
                column("slot", Integer()),
                column("key", String()),
                column("used", Integer()),
                column("window_start", UTCDateTime()),
                column("blocked_until", UTCDateTime()),
            ]
        statement = text(sql).bindparams(*params).columns(*columns)
        self._claim_statements[buckets] = statement
        return statement

    async def claim_take(
        self, key: str, cap: int, holder: str, now: float, ttl: float, buckets: Sequence[Bucket]
    ) -> tuple[int | None, TakeResult | None]:
        if self.sqlite or not buckets or cap <= 0:
            return await claim_then_take(self, key, cap, holder, now, ttl, buckets)
        await self._make_slots(key, cap)
        ordered = sorted(buckets, key=lambda b: b.key)
        values = self._claim_params(key, cap, holder, now, ttl)
        for i, b in enumerate(ordered):
            values.update(self._bucket_params(i, b, now))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(self._claim_sql(len(ordered)), values)).all()
        slot = rows[0].slot
        if slot is None:
            return None, None
        counted = {
            row.key: BucketState(row.used, row.window_start.timestamp(), _epoch(row.blocked_until))
            for row in rows
            if row.key is not None
        }
        if len(counted) == len(ordered):
            return slot, TakeResult(True, counted)
        await self.release(key, slot, holder)
        return slot, await self._refuse(ordered, counted)

    async def release(self, key: str, slot: int, holder: str) -> None:
        if self.sqlite:
            self._local.get(key, {}).pop(holder, None)
            return
        async with self.engine.connect() as conn:
            await conn.execute(
                update(SLOTS)
                .where(SLOTS.c.key == key, SLOTS.c.slot == slot, SLOTS.c.holder == holder)
                .values(holder=None, expires_at=None)
            )

    async def block(self, bucket: Bucket, until: float, now: float) -> None:
        stmt = self._insert(BUCKETS).values(
            key=bucket.key,
            window_start=_ts(bucket.window_start(now)),
            used=0,
            quota=bucket.quota,
            blocked_until=_ts(until),
        )
        new = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=[BUCKETS.c.key],
            set_={
                "blocked_until": case(
                    (
                        or_(BUCKETS.c.blocked_until.is_(None), BUCKETS.c.blocked_until < new.blocked_until),
                        new.blocked_until,
                    ),
                    else_=BUCKETS.c.blocked_until,
                )
            },
        )
        async with self.engine.connect() as conn:
            await conn.execute(stmt)

    async def read(
        self, buckets: Sequence[Bucket], slots: Sequence[str], now: float
    ) -> tuple[dict[str, BucketState], dict[str, int]]:
        states: dict[str, BucketState] = {}
        inflight: dict[str, int] = {}
        async with self.engine.connect() as conn:
            if buckets:
                rows = await conn.execute(
                    select(
                        BUCKETS.c.key, BUCKETS.c.used, BUCKETS.c.window_start, BUCKETS.c.blocked_until
                    ).where(BUCKETS.c.key.in_([b.key for b in buckets]))
                )
                states = {
                    row.key: BucketState(row.used, row.window_start.timestamp(), _epoch(row.blocked_until))
                    for row in rows
                }
            if slots and self.sqlite:
                inflight = {
                    key: sum(1 for until in self._local.get(key, {}).values() if until > now) for key in slots
                }
            elif slots:
                counts = await conn.execute(
                    select(SLOTS.c.key, func.count())
                    .where(
                        SLOTS.c.key.in_(list(slots)),
                        SLOTS.c.holder.is_not(None),
                        SLOTS.c.expires_at > _ts(now),
                    )
                    .group_by(SLOTS.c.key)
                )
                inflight = {row[0]: int(row[1]) for row in counts}
        return states, inflight
