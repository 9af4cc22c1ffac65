"""The one retry/backoff policy (connectors/http.py), against small fake upstreams (httpx.MockTransport)."""

from __future__ import annotations

import email.utils
import gc
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
from pydantic import BaseModel

from connectors.base import CallOutcome, ConnectorContext, MemoryCredentialStore, UpstreamCall
from connectors.errors import ConnectorError, OutcomeUnknown, RateLimited, UpstreamUnavailable
from connectors.http import RetryMode, RetryPolicy, backoff_delay, parse_retry_after, send


class _Empty(BaseModel):
    pass


FAST = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.002, max_retry_after=5)


class RecordingGate:
    def __init__(self, refuse_after: int | None = None, refusal: ConnectorError | None = None) -> None:
        self.outcomes: list[CallOutcome] = []
        self.admitted = 0
        self.refuse_after = refuse_after
        self.refusal = refusal

    @asynccontextmanager
    async def _admit(self) -> AsyncIterator[None]:
        if self.refuse_after is not None and self.admitted >= self.refuse_after:
            raise self.refusal or RateLimited("budget spent", policy="test", retry_after=9)
        self.admitted += 1
        yield

    def admit(self, call: UpstreamCall) -> AbstractAsyncContextManager[None]:
        return self._admit()

    async def record(self, call: UpstreamCall, outcome: CallOutcome) -> None:
        self.outcomes.append(outcome)


def _ctx(handler: Callable[[httpx.Request], httpx.Response], gate: RecordingGate) -> ConnectorContext:
    return ConnectorContext(
        http=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        app=_Empty(),
        settings=_Empty(),
        store=MemoryCredentialStore(),
        gate=gate,
    )


def _script(
    *steps: int | type[Exception], headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    remaining = list(steps)

    def handler(request: httpx.Request) -> httpx.Response:
        step = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        if isinstance(step, int):
            return httpx.Response(step, headers=headers or {}, json={"ok": step})
        raise step("boom", request=request)

    return handler


async def _send(
    handler: Callable[[httpx.Request], httpx.Response], retry: RetryMode, gate: RecordingGate | None = None
) -> httpx.Response:
    gate = gate or RecordingGate()
    call = UpstreamCall(
        "test", "POST", "http://up/x", "write" if retry != "read" else "read", label="POST /x"
    )
    return await send(
        _ctx(handler, gate), call, httpx.Request("POST", "http://up/x"), retry=retry, policy=FAST
    )


async def test_reads_retry_5xx_and_timeouts_then_succeed() -> None:
    gate = RecordingGate()
    response = await _send(_script(503, httpx.ReadTimeout, 200), "read", gate)
    assert response.status_code == 200
    assert [o.status for o in gate.outcomes] == [503, None, 200] and gate.admitted == 3


async def test_429_retry_after_is_honoured_and_too_long_is_handed_to_the_caller() -> None:
    gate = RecordingGate()
    with pytest.raises(RateLimited) as info:
        await _send(_script(429, headers={"Retry-After": "60"}), "read", gate)
    assert info.value.retry_after == 60 and len(gate.outcomes) == 1


async def test_unguarded_write_is_never_resent_after_sending() -> None:
    gate = RecordingGate()
    with pytest.raises(OutcomeUnknown):
        await _send(_script(httpx.ReadTimeout, 201), "never", gate)
    assert len(gate.outcomes) == 1


async def test_unguarded_write_is_resent_when_it_never_left() -> None:
    gate = RecordingGate()
    response = await _send(_script(httpx.ConnectError, 201), "never", gate)
    assert response.status_code == 201 and len(gate.outcomes) == 2


async def test_guarded_write_is_resent_with_the_same_body_then_unknown() -> None:
    gate = RecordingGate()
    assert (await _send(_script(500, httpx.RemoteProtocolError, 201), "guarded", gate)).status_code == 201
    gate = RecordingGate()
    with pytest.raises(OutcomeUnknown):
        await _send(_script(500), "guarded", gate)
    assert len(gate.outcomes) == FAST.max_attempts


async def test_524_is_outcome_unknown_for_writes_and_retried_for_reads() -> None:
    with pytest.raises(OutcomeUnknown):
        await _send(_script(524, 201), "guarded")
    assert (await _send(_script(524, 200), "read")).status_code == 200


async def test_a_refusal_after_a_possibly_landed_attempt_is_outcome_unknown() -> None:
    # The first attempt may have been applied (500 after sending); the retry is refused by the gate.
    gate = RecordingGate(refuse_after=1)
    with pytest.raises(OutcomeUnknown):
        await _send(_script(500, 201), "guarded", gate)
    gate = RecordingGate(refuse_after=1)
    with pytest.raises(RateLimited):  # a 429 means "not processed": nothing may have landed
        await _send(_script(429, 201), "guarded", gate)
    gate = RecordingGate(refuse_after=0)
    with pytest.raises(RateLimited):
        await _send(_script(201), "guarded", gate)
    # Whatever the gate's refusal (its budget store down, say), after a possible landing it is unknown: a
    # definitive error here would let a client without an Idempotency-Key post the write again.
    for refusal in (UpstreamUnavailable("budget store down"), ConnectorError("anything else")):
        gate = RecordingGate(refuse_after=1, refusal=refusal)
        with pytest.raises(OutcomeUnknown):
            await _send(_script(500, 201), "guarded", gate)
        gate = RecordingGate(refuse_after=1, refusal=refusal)
        with pytest.raises(OutcomeUnknown):
            await _send(_script(503, 201), "guarded", gate)


async def test_unreachable_read_is_unavailable() -> None:
    with pytest.raises(UpstreamUnavailable):
        await _send(_script(httpx.ConnectError), "read")


def test_backoff_is_full_jitter_capped_and_respects_retry_after() -> None:
    policy = RetryPolicy(base_delay=1, max_delay=4)
    delays = [backoff_delay(attempt, policy) for attempt in range(1, 8) for _ in range(50)]
    assert all(0 <= d <= 4 for d in delays) and max(delays) > 2
    assert backoff_delay(1, policy, retry_after=7) >= 7


def test_retry_after_forms() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    http_date = email.utils.formatdate(now + 30, usegmt=True)
    parsed = parse_retry_after(http_date, now=now)
    assert parsed is not None and 28 <= parsed <= 31


def test_parsed_urls_are_parsed_once_and_invalid_ones_still_refused() -> None:
    from connectors.http import parsed_url

    url = "http://127.0.0.1:9/v3.1/contacts?items_per_page=50&attributes=name,email"
    assert parsed_url(url) is parsed_url(url)
    assert str(httpx.Request("GET", parsed_url(url)).url) == url
    for _ in range(2):
        with pytest.raises(httpx.InvalidURL):
            parsed_url("http://127.0.0.1:9/a\nb")


async def test_upstream_responses_are_freed_without_waiting_for_a_garbage_collection() -> None:
    """httpx ties a response and its body's stream in a reference cycle; ``send`` breaks it once the body is
    read, so a page's bytes (and every retried attempt's) are freed at once, not at the next full
    collection (a served gateway grew by tens of MiB per 10,000 invoices listed before)."""
    sent: list[weakref.ref[httpx.Response]] = []
    statuses = iter([503, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        response = httpx.Response(next(statuses), content=b"x" * 100_000)
        sent.append(weakref.ref(response))
        return response

    gc.disable()
    try:
        response = await _send(handler, "read")
        assert response.status_code == 200 and response.content == b"x" * 100_000
        assert len(sent) == 2 and sent[0]() is None  # the retried attempt's answer is already gone
        assert sent[1]() is response
        del response
        assert sent[1]() is None
    finally:
        gc.enable()
