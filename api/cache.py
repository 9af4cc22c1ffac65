"""Short-lived per-process caches of the read path (API keys, connection rows), kept honest by the database.

Every unified call needs the caller's API key and the connection row. Reading both from the database on every
call cost two round trips and an ORM session per call (docs/benchmarks.md); they change rarely, so each
process keeps them for ``LEDGERBRIDGE_CACHE_SECONDS`` (5 s; 0 turns the caches off). How they stay correct:

* **This process** forgets an entry the moment its change commits: :func:`watch` hooks SQLAlchemy sessions
  of the :class:`~api.db.Database` and, after every commit that wrote a watched table (ORM flush or Core
  ``UPDATE``/``DELETE`` through the session), clears that table's caches. So revoking a key, deleting or
  re-pointing a connection is seen at once by the process that did it.
* **Other processes** see it within the TTL. A revoked API key keeps working there for at most that long;
  a deleted connection's stored credentials are erased at once, and upstream tokens are revoked where the
  provider allows it.
* **No stale fill**: a lookup that started before an invalidation does not store its (possibly old) row
  (:attr:`TtlCache.generation`).

Credentials are not cached here: the plaintext cache (:class:`~api.connections.store.SecretCache`) is keyed
by ``credentials_version`` and refreshes go through the row lock, which re-reads the row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_TOUCHED = "lb_touched_tables"
_WATCHERS = "lb_cache_watchers"


class TtlCache(Generic[K, V]):
    """A bounded map whose entries live ``ttl`` seconds (``ttl <= 0``: never stores anything)."""

    def __init__(
        self, ttl: float, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self.generation = 0
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] <= self.clock():
            self._entries.pop(key, None)
            return None
        return hit[1]

    def put(self, key: K, value: V, generation: int) -> None:
        """Store ``value`` unless the cache was cleared since ``generation`` was read (a stale fill)."""
        if self.ttl <= 0 or generation != self.generation:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (self.clock() + self.ttl, value)

    def update(self, key: K, change: Callable[[V], V]) -> None:
        """Replace a present entry by ``change(entry)``, keeping its expiry."""
        hit = self._entries.get(key)
        if hit is not None:
            self._entries[key] = (hit[0], change(hit[1]))

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()


def _statement_table(orm_state: ORMExecuteState) -> str | None:
    table = getattr(orm_state.statement, "table", None)
    return getattr(table, "name", None)


def _mark(session: Session, table: str) -> None:
    session.info.setdefault(_TOUCHED, set()).add(table)


KEEPS_CACHES = {"lb_keeps_caches": True}
"""Execution options of a statement whose writer updates the caches itself (no clearing)."""


@event.listens_for(Session, "do_orm_execute")
def _on_execute(orm_state: ORMExecuteState) -> None:
    if orm_state.execution_options.get("lb_keeps_caches"):
        return
    if orm_state.is_update or orm_state.is_delete or orm_state.is_insert:
        table = _statement_table(orm_state)
        if table is not None and table in orm_state.session.info.get(_WATCHERS, {}):
            _mark(orm_state.session, table)


@event.listens_for(Session, "after_flush")
def _on_flush(session: Session, _flush: UOWTransaction) -> None:
    watchers: dict[str, Any] = session.info.get(_WATCHERS, {})
    if not watchers:
        return
    for instance in (*session.new, *session.dirty, *session.deleted):
        table = getattr(getattr(type(instance), "__table__", None), "name", None)
        if table in watchers:
            _mark(session, table)


@event.listens_for(Session, "after_commit")
def _on_commit(session: Session) -> None:
    touched: set[str] = session.info.pop(_TOUCHED, set())
    watchers: dict[str, list[TtlCache[Any, Any]]] = session.info.get(_WATCHERS, {})
    for table in touched:
        for cache in watchers.get(table, ()):
            cache.clear()


@event.listens_for(Session, "after_soft_rollback")
def _on_rollback(session: Session, _previous: Any) -> None:
    session.info.pop(_TOUCHED, None)


def watch(session_info: dict[str, Any], table: str, cache: TtlCache[Any, Any]) -> None:
    """Clear ``cache`` after every commit of a session made with ``session_info`` that wrote ``table``."""
    session_info.setdefault(_WATCHERS, {}).setdefault(table, []).append(cache)
