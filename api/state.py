"""What the app holds for its lifetime (built in the lifespan, one per process)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from api.cache import TtlCache
from api.connections.store import SecretCache
from api.db import Database
from api.ratelimit import Limiter, NoLimiter
from api.settings import Settings
from api.vault import Keyring

if TYPE_CHECKING:
    from api.connections.refs import ConnectionRef
    from api.deps import Principal
    from api.requestlog import RequestLogWriter


@dataclass
class AppState:
    settings: Settings
    db: Database
    keyring: Keyring
    http: httpx.AsyncClient
    request_log: RequestLogWriter
    limiter: Limiter = field(default_factory=NoLimiter)
    secret_cache: SecretCache = field(default_factory=SecretCache)
    extras: dict[str, Any] = field(default_factory=dict)
    principals: TtlCache[str, Principal] = field(default_factory=lambda: TtlCache(0))
    """API key hash → principal (``api.cache``)."""
    connections: TtlCache[tuple[str, str], ConnectionRef] = field(default_factory=lambda: TtlCache(0))
    """(tenant id, connection id) → connection snapshot (``api.cache``)."""
    health_success: dict[str, dt.datetime] = field(default_factory=dict)
    """Connection id → the last success this process recorded (or is recording) on it."""
    health_errors: set[str] = field(default_factory=set)
    """Connections with an error being recorded by this process right now."""
