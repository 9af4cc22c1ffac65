"""Engines and sessions. SQLite (default, single process) or PostgreSQL (``postgresql+psycopg``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


def sync_url(url: str) -> URL:
    """The URL Alembic and the CLI use (sync drivers)."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite+aiosqlite",):
        return parsed.set(drivername="sqlite")
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    return parsed


def async_url(url: str) -> URL:
    parsed = make_url(url)
    if parsed.drivername == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    return parsed


def is_sqlite(url: str | URL) -> bool:
    return make_url(str(url) if isinstance(url, URL) else url).get_backend_name() == "sqlite"


def sqlite_pragmas(*extra: str) -> Callable[[Any, Any], None]:
    """A ``connect`` listener setting WAL and a busy timeout (readers run beside the one writer, writers
    queue instead of failing), then ``extra`` pragmas, on every new SQLite connection."""

    def listener(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # The busy timeout first: switching to WAL takes a lock too, and without a timeout a connection
        # opened while another one writes failed at once with "database is locked".
        for pragma in ("busy_timeout=10000", "journal_mode=WAL", *extra):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return listener


def create_engine(url: str, *, pool_size: int = 5, max_overflow: int = 10) -> AsyncEngine:
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        engine = create_async_engine(target)
        event.listen(engine.sync_engine, "connect", sqlite_pragmas("foreign_keys=ON"))
        return engine
    # Small pools: every replica has one, and PostgreSQL's max_connections is shared by all of them.
    return create_async_engine(target, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True)


class Database:
    """The engine and session factory shared by the app (one per process)."""

    def __init__(self, url: str, *, pool_size: int = 5, max_overflow: int = 10) -> None:
        self.url = url
        self.engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        #: Shared by every session of this database (``api.cache.watch`` registers its caches here).
        self.session_info: dict[str, Any] = {}
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, info=self.session_info)
        self.sqlite = is_sqlite(url)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A unit of work committed once at the end (rolled back on error)."""
        async with self.sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    async def dispose(self) -> None:
        await self.engine.dispose()
