"""The gateway's :class:`~connectors.base.UpstreamGate`: rate budgets, request log, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

from api import context, metrics
from api.redact import redact_body
from connectors.base import CallOutcome, UpstreamCall

if TYPE_CHECKING:
    from api.ratelimit import Limiter


class GatewayGate:
    def __init__(self, limiter: Limiter, tenant_id: str, connection_id: str) -> None:
        self.limiter = limiter
        self.tenant_id = tenant_id
        self.connection_id = connection_id

    @asynccontextmanager
    async def _admit(self, call: UpstreamCall) -> AsyncIterator[None]:
        async with self.limiter.admit(call, self.tenant_id):
            yield

    def admit(self, call: UpstreamCall) -> AbstractAsyncContextManager[None]:
        return self._admit(call)

    async def record(self, call: UpstreamCall, outcome: CallOutcome) -> None:
        await self.limiter.observe(call, outcome, self.tenant_id)
        metrics.observe_upstream(call.provider, call.kind, outcome.status, outcome.duration_ms / 1000)
        ctx = context.current()
        if ctx is None:
            return
        entry: dict[str, object] = {
            "provider": call.provider,
            "method": call.method,
            "path": call.label or call.url,
            "status": outcome.status,
            "duration_ms": round(outcome.duration_ms, 2),
            "attempt": outcome.attempt,
            "upstream_request_id": outcome.upstream_request_id,
        }
        if outcome.error:
            entry["error"] = outcome.error
        if outcome.retry_after is not None:
            entry["retry_after"] = outcome.retry_after
        if call.kind == "write" and call.request_body:
            entry["request_body"] = redact_body(call.request_body)
        ctx.upstream_calls.append(entry)
        if outcome.upstream_request_id:
            ctx.upstream_request_id = outcome.upstream_request_id
