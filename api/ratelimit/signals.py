"""Reading an upstream's "slow down" signals from one attempt's outcome (reliability-notes.md §1.4, §1.5).

Parsed per provider, not generically: the ``X-RateLimit-Reset`` of the wild can be seconds or an epoch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from http_sfv.list import List

from connectors.base import CallOutcome

EPOCH_THRESHOLD = 1_000_000_000
"""A reset value above this is a Unix time, not a delay (GitHub-style ``X-RateLimit-Reset``)."""

INTACCT_THROTTLE_HEADERS = (
    "x-ia-throttle-limit-retry-after",
    "x-ia-hour-rate-limit-retry-after",
    "x-ia-minute-rate-limit-retry-after",
    "x-ia-tenant-throttle-limit-retry-after",
)


def _seconds(value: str | None, now: float) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if number < 0:
        return None
    return max(0.0, number - now) if number > EPOCH_THRESHOLD else number


def _exhausted_ratelimit_field(value: str, default: float) -> float | None:
    """The longest ``t`` of an exhausted policy in an upstream's IETF ``RateLimit`` field (``r=0``)."""
    parsed = List()
    try:
        parsed.parse(value.encode("latin-1"))
    except ValueError:
        return None  # malformed fields MUST be ignored (draft §5)
    waits = []
    for member in parsed:
        params = getattr(member, "params", {})
        remaining = params.get("r")
        if isinstance(remaining, int) and not isinstance(remaining, bool) and remaining <= 0:
            reset = params.get("t")
            waits.append(float(reset) if isinstance(reset, int) and not isinstance(reset, bool) else default)
    return max(waits) if waits else None


def upstream_wait(
    provider: str, outcome: CallOutcome, default: float, now: float | None = None
) -> float | None:
    """Seconds the upstream asked us to hold off, or ``None`` when the attempt carried no such signal.

    A 429 without ``Retry-After`` (Sage documents none, sage-accounting-wire.md §6) waits ``default``.
    """
    now = time.time() if now is None else now
    headers: Mapping[str, str] = {k.lower(): v for k, v in outcome.headers.items()}
    waits: list[float] = []
    limited = outcome.status == 429
    if provider == "sage_intacct" and outcome.response_body and b"GW-0010" in outcome.response_body[:16384]:
        limited = True  # sage-intacct-wire.md §1.1: gateway rate limiting, errorno GW-0010
    if limited:
        waits.append(outcome.retry_after if outcome.retry_after is not None else default)
    if "ratelimit" in headers:
        wait = _exhausted_ratelimit_field(headers["ratelimit"], default)
        if wait is not None:
            waits.append(wait)
    for prefix in ("x-ratelimit-", "x-rate-limit-"):
        remaining = headers.get(prefix + "remaining")
        if remaining is not None and remaining.strip() in ("0", "0.0"):
            reset = _seconds(headers.get(prefix + "reset"), now)
            waits.append(reset if reset is not None else default)
    if provider == "sage_intacct":
        for name in INTACCT_THROTTLE_HEADERS:
            wait = _seconds(headers.get(name), now)
            if wait:
                waits.append(wait)
    if not waits:
        return None
    return max(waits)
