"""The one place where upstream HTTP calls are attempted, retried and classified.

Backoff is exponential with full jitter, capped, and honours the upstream's ``Retry-After``; every attempt
passes through the gateway's :class:`~connectors.base.UpstreamGate`, so retries count against the same
budgets and appear in the request log. What may be retried follows reliability-notes.md §2.4:

* a connect failure never reached the upstream → any call may be retried;
* 429 means "not processed" → retried after ``Retry-After`` (bounded) with the same duplicate guard;
* a read timeout, dropped connection or 5xx after a *write* was sent has an unknown outcome → only
  ``retry="guarded"`` writes (whose body carries the upstream's duplicate guard) are re-sent; otherwise
  :class:`~connectors.errors.OutcomeUnknown` is raised;
* 524 (Intacct: "still processing") is never retried for writes.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import httpx

from connectors.base import CallOutcome, ConnectorContext, UpstreamCall
from connectors.errors import (
    ConnectorError,
    OutcomeUnknown,
    RateLimited,
    UpstreamInfo,
    UpstreamTimeout,
    UpstreamUnavailable,
)

RetryMode = Literal["read", "guarded", "never"]
"""``read``: safe to repeat. ``guarded``: a write whose body carries an upstream duplicate guard.
``never``: a write without one (only connect failures are retried)."""

REQUEST_ID_HEADERS = ("x_request_id", "x-request-id", "request-id")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 8.0
    max_retry_after: float = 20.0
    """A ``Retry-After`` longer than this is not waited for: the caller gets 429 with it instead."""


DEFAULT_POLICY = RetryPolicy()


@functools.lru_cache(maxsize=2048)
def parsed_url(url: str) -> httpx.URL:
    """``url`` parsed once per process. httpx checks and re-encodes every character of a URL it is handed as
    a string (a quarter of a million instructions for a Sage list URL with its ``attributes``, more than the
    rest of building the request), and a connector calls the same few URLs again and again; ``httpx.URL``
    is immutable, so one parsed instance serves every request. Bounded: a cursor's URL is new each time."""
    return httpx.URL(url)


def backoff_delay(attempt: int, policy: RetryPolicy, retry_after: float | None = None) -> float:
    """Delay before attempt ``attempt + 1``: full jitter over an exponential cap, at least ``retry_after``."""
    ceiling = min(policy.max_delay, policy.base_delay * (2 ** (attempt - 1)))
    delay = random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def upstream_request_id(headers: Mapping[str, str]) -> str | None:
    for name in REQUEST_ID_HEADERS:
        if name in headers:
            return headers[name]
    return None


def _retryable_status(status: int, mode: RetryMode) -> bool:
    if status == 429:
        return mode != "never"
    if status == 524:
        # Intacct: 524 = the request is still processing upstream (sage-intacct-wire.md §1.1).
        return mode == "read"
    if status in (500, 502, 503, 504) or 520 <= status <= 523:
        return mode in ("read", "guarded")
    return False


def _outcome_unknown(mode: RetryMode) -> bool:
    return mode != "read"


async def send(
    ctx: ConnectorContext,
    call: UpstreamCall,
    request: httpx.Request,
    *,
    retry: RetryMode,
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: bool = True,
) -> httpx.Response:
    """Send ``request`` with the retry policy; return the final response (any status but retryable ones).

    Raises :class:`RateLimited` when the gate refuses or the upstream keeps answering 429,
    :class:`OutcomeUnknown` when a write's fate is unknown — also when a later attempt is refused or fails
    after an earlier attempt of the same write may have landed — and :class:`UpstreamTimeout` /
    :class:`UpstreamUnavailable` for reads that could not complete.
    """
    attempts = _Attempts()
    try:
        return await _attempt_all(
            ctx, call, request, retry=retry, policy=policy, sleep=sleep, attempts=attempts
        )
    except ConnectorError as exc:
        # Any refusal or failure of a later attempt (a budget refused, the gate's store down, the upstream
        # gone) leaves a write that may have landed earlier unknown, never failed.
        if retry != "read" and attempts.maybe_landed and not isinstance(exc, OutcomeUnknown):
            raise OutcomeUnknown(
                f"An earlier attempt of {call.label} may have landed upstream; then: {exc.detail}",
                upstream=exc.upstream,
            ) from None
        raise


@dataclass
class _Attempts:
    maybe_landed: bool = False


async def _attempt_all(
    ctx: ConnectorContext,
    call: UpstreamCall,
    request: httpx.Request,
    *,
    retry: RetryMode,
    policy: RetryPolicy,
    sleep: bool,
    attempts: _Attempts,
) -> httpx.Response:
    attempt = 0
    while True:
        attempt += 1
        started = time.perf_counter()
        response: httpx.Response | None = None
        error: Exception | None = None
        async with ctx.gate.admit(call):
            try:
                response = await ctx.http.send(request, follow_redirects=False)
                await response.aread()
                # httpx binds the body's stream to its response (BoundAsyncStream ↔ Response, a reference
                # cycle), so a response and its body outlived the call until a full garbage collection:
                # paging 10,000 Sage invoices grew the process by tens of MiB each pass. The body is read
                # and the stream closed; a plain stream of the same bytes frees both on the last reference.
                response.stream = httpx.ByteStream(response.content)
            except httpx.HTTPError as exc:
                error = exc
        duration_ms = (time.perf_counter() - started) * 1000
        retry_after = parse_retry_after(response.headers.get("retry-after")) if response is not None else None
        await ctx.gate.record(
            call,
            CallOutcome(
                attempt=attempt,
                duration_ms=duration_ms,
                status=response.status_code if response is not None else None,
                upstream_request_id=upstream_request_id(response.headers) if response is not None else None,
                error=type(error).__name__ if error is not None else None,
                retry_after=retry_after,
                headers=dict(response.headers) if response is not None else {},
                response_body=response.content if response is not None else None,
            ),
        )
        last = attempt >= policy.max_attempts
        if error is not None:
            never_sent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
            attempts.maybe_landed = attempts.maybe_landed or not never_sent
            if never_sent or retry == "read" or (retry == "guarded" and not last):
                if not last:
                    if sleep:
                        await asyncio.sleep(backoff_delay(attempt, policy))
                    continue
                if never_sent:
                    raise UpstreamUnavailable(
                        f"{call.provider} could not be reached", upstream=UpstreamInfo(call.provider)
                    ) from None
            if _outcome_unknown(retry) and not never_sent:
                raise OutcomeUnknown(
                    f"The upstream write {call.label} was sent but no answer arrived ({type(error).__name__})",
                    upstream=UpstreamInfo(call.provider),
                ) from None
            if isinstance(error, httpx.TimeoutException):
                raise UpstreamTimeout(
                    f"{call.provider} did not answer in time", upstream=UpstreamInfo(call.provider)
                )
            raise UpstreamUnavailable(
                f"{call.provider} failed: {type(error).__name__}", upstream=UpstreamInfo(call.provider)
            ) from None
        assert response is not None
        status = response.status_code
        if not _retryable_status(status, retry):
            if status == 524 and retry != "read":
                raise OutcomeUnknown(
                    f"The upstream is still processing {call.label} (524)",
                    upstream=UpstreamInfo(call.provider, status, upstream_request_id(response.headers)),
                )
            return response
        if status != 429:
            attempts.maybe_landed = True  # a 5xx/524 after sending: the write may have been applied
        too_long = retry_after is not None and retry_after > policy.max_retry_after
        if last or too_long:
            info = UpstreamInfo(call.provider, status, upstream_request_id(response.headers))
            if status == 429:
                raise RateLimited(
                    f"{call.provider} is rate limiting this connection",
                    policy=call.provider.replace("_", "-"),
                    retry_after=retry_after if retry_after is not None else policy.max_delay,
                    upstream=info,
                )
            if _outcome_unknown(retry):
                raise OutcomeUnknown(f"The upstream answered {status} to {call.label}", upstream=info)
            raise UpstreamUnavailable(f"{call.provider} answered {status}", upstream=info)
        if sleep:
            await asyncio.sleep(backoff_delay(attempt, policy, retry_after))


def raise_for_unexpected(response: httpx.Response, provider: str, error: type[ConnectorError]) -> None:
    """Raise ``error`` carrying the upstream status and request id when ``response`` is not 2xx."""
    if response.is_success:
        return
    raise error(
        f"{provider} answered {response.status_code}",
        upstream=UpstreamInfo(provider, response.status_code, upstream_request_id(response.headers)),
    )
