"""Rate-limit governance (CONTRACT §7): policies, shared budgets and IETF RateLimit headers.

* **Policies** (``policies.py``): named quotas (``q`` calls per ``w`` seconds) and concurrency caps, per
  provider app, per upstream business/company or per tenant. Defaults: ``tenant`` 600/60 s;
  ``sage-accounting`` 1,296,000/day and ``sage-accounting-concurrency`` 150 per app;
  ``sage-intacct`` 2 concurrent per company, and ``sage-intacct-app`` / ``sage-intacct-concurrency`` the
  Sage Accounting per-app figures as an upper bound. Override with ``LEDGERBRIDGE_RATE_LIMIT_POLICIES``
  (JSON ``{name: fields | null}``), e.g. ``{"sage-intacct": {"limit": 4}}``.
* **Budgets** (``store.py``, ``redis_store.py``): in the gateway's database (atomic conditional upserts;
  PostgreSQL for replicas) or in Redis when ``LEDGERBRIDGE_REDIS_URL`` is set (Lua scripts). They are
  shared by every process and survive restarts; concurrency slots are leases that expire
  (``LEDGERBRIDGE_RATE_LIMIT_LEASE_SECONDS``) so a crashed holder cannot keep one.
* **Admission** (``governor.py``): every upstream attempt — retries of ``connectors.http.send`` included —
  passes ``admit()``; a spent budget raises ``RateLimited`` (429 ``upstream_rate_limited``) or, for the
  tenant's own quota, ``GatewayRateLimited`` (429 ``rate_limited``) before any upstream call. A caller
  waits at most ``LEDGERBRIDGE_RATE_LIMIT_CONCURRENCY_WAIT_SECONDS`` (2 s) for a concurrency slot.
* **Upstream signals** (``signals.py``): an upstream 429 (Sage Accounting; Intacct HTTP 429 / GW-0010),
  its ``Retry-After`` — or ``LEDGERBRIDGE_RATE_LIMIT_DEFAULT_RETRY_AFTER_SECONDS`` (30 s) when it sends
  none, as Sage documents none — and exhausted upstream rate-limit headers close the provider's signalled
  policy (``sage-accounting`` per app, ``sage-intacct`` per company) for every replica until then.
* **Headers** (``headers.py``): ``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers
  -10/-11 Structured Fields, no ``pk``) plus ``RateLimit-Limit``/``-Remaining``/``-Reset`` of the most
  constrained policy, on every ``/v1`` response of a tenant. ``t`` is exact (rounded up); ``Retry-After``
  on a refusal gets 0–10 % upward jitter, never earlier than the reset.

``LEDGERBRIDGE_RATE_LIMIT_ENABLED=false`` turns all of it off (no headers, no refusals).
"""

from __future__ import annotations

from api.ratelimit.governor import GatewayRateLimited, Governor, LimiterUnavailable
from api.ratelimit.limiter import Limiter, NoLimiter
from api.ratelimit.policies import DEFAULT_POLICIES, Policy, load_policies
from api.ratelimit.store import SqlStore, Store
from api.settings import Settings

__all__ = [
    "DEFAULT_POLICIES",
    "GatewayRateLimited",
    "Governor",
    "Limiter",
    "LimiterUnavailable",
    "NoLimiter",
    "Policy",
    "SqlStore",
    "Store",
    "build_governor",
    "load_policies",
]


def build_governor(settings: Settings) -> Governor | None:
    """The limiter the settings ask for: budgets in Redis when ``redis_url`` is set, else in the database.

    ``None`` when rate limiting is switched off (``LEDGERBRIDGE_RATE_LIMIT_ENABLED=false``).
    """
    if not settings.rate_limit_enabled:
        return None
    policies = load_policies(settings.rate_limit_policies)  # a bad configuration fails before any I/O
    store: Store
    if settings.redis_url:
        from api.ratelimit.redis_store import RedisStore

        store = RedisStore(settings.redis_url)
    else:
        store = SqlStore(settings.database_url)
    lease = settings.rate_limit_lease_seconds or 2 * settings.upstream_timeout_seconds + 30
    return Governor(
        policies,
        store,
        concurrency_wait=settings.rate_limit_concurrency_wait_seconds,
        default_retry_after=settings.rate_limit_default_retry_after_seconds,
        lease_ttl=lease,
    )
