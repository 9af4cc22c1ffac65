"""``Idempotency-Key`` on proxy writes (CONTRACT §7), on the same records as unified writes.

A raw write cannot be reconciled (the gateway does not know what it means upstream), so "never posted
twice" is kept by storing every answer of a write that may have reached the upstream — its response, or the
504 ``outcome_unknown`` when nobody knows — and replaying it for the same key. Only a write refused before
it left (rate limit, connect failure, re-authorization needed) releases the key for another try.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from starlette.responses import Response

from api import context
from api.connections.refs import ConnectionRef
from api.errors import TYPE_BASE, connector_error_response
from api.idempotency import RELEASED, IdempotencyStore, StoredResult, every, fingerprint, parse_key
from api.state import AppState
from api.writes import idempotency_store
from connectors.errors import (
    BusinessSelectionRequired,
    ConnectorError,
    RateLimited,
    ReauthorizationRequired,
    UpstreamTimeout,
    UpstreamUnavailable,
)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: Refused or failed before anything reached the upstream: the key is released and a retry runs again.
_NOT_SENT: tuple[type[ConnectorError], ...] = (
    RateLimited,
    UpstreamUnavailable,
    UpstreamTimeout,
    ReauthorizationRequired,
    BusinessSelectionRequired,
)


def _problem(status: int, code: str, detail: str) -> StoredResult:
    body: dict[str, object] = {
        "type": TYPE_BASE + code,
        "title": code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code,
    }
    return StoredResult(status, json.dumps(body).encode(), {"content-type": "application/problem+json"})


def _stored(response: Response) -> StoredResult:
    ctx = context.current()
    result = StoredResult.of(response, ctx.upstream_request_id if ctx is not None else None)
    try:
        result.body.decode("utf-8")
    except UnicodeDecodeError:
        return _problem(
            502,
            "upstream_error",
            f"The upstream answered {response.status_code} with a binary body, which is not kept for replay; "
            "the write was sent",
        )
    return result


def _heartbeat(store: IdempotencyStore, record_id: str, interval: float) -> AbstractAsyncContextManager[None]:
    return every(interval, lambda: store.heartbeat(record_id), "proxy write heartbeat")


async def once(
    state: AppState,
    connection: ConnectionRef,
    *,
    method: str,
    route: str,
    target: str,
    content_type: str | None,
    body: bytes,
    raw_key: str | None,
    run: Callable[[], Awaitable[Response]],
) -> Response:
    """Run a proxy write at most once per ``Idempotency-Key``; without a key (or for reads) just run it."""
    key = parse_key(raw_key)
    if key is None or method not in WRITE_METHODS:
        return await run()
    store = idempotency_store(state)
    request = {"sha256": hashlib.sha256(body).hexdigest(), "content_type": content_type}
    claim = await store.claim(
        tenant_id=connection.tenant_id,
        method=method,
        route=route,
        key=key,
        fingerprint=fingerprint(request, {"target": target}, connection.id),
    )
    if claim.replay is not None:
        return claim.replay.replay()
    interval = max(state.settings.write_lease_seconds / 3, 0.05)
    try:
        async with _heartbeat(store, claim.record_id, interval):
            response = await run()
    except ConnectorError as exc:
        if isinstance(exc, _NOT_SENT):
            await store.release(claim.record_id, RELEASED)
        else:
            await store.complete(claim.record_id, _stored(connector_error_response(exc)))
        raise
    except BaseException:
        unknown = _problem(
            504, "outcome_unknown", "The proxied write may or may not have reached the upstream"
        )
        await asyncio.shield(store.complete(claim.record_id, unknown))
        raise
    await store.complete(claim.record_id, _stored(response))
    return response
