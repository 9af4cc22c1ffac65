"""What the app holds for its lifetime (built in the lifespan, one per process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from api.connections.store import SecretCache
from api.db import Database
from api.ratelimit import Limiter, NoLimiter
from api.settings import Settings
from api.vault import Keyring

if TYPE_CHECKING:
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
