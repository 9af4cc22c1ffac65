"""The limiter interface the gate and the middleware use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from connectors.base import CallOutcome, UpstreamCall


class Limiter(Protocol):
    def admit(self, call: UpstreamCall, tenant_id: str) -> AbstractAsyncContextManager[None]:
        """Reserve budget for one upstream attempt; raise ``RateLimited`` to refuse it early."""
        ...

    async def observe(self, call: UpstreamCall, outcome: CallOutcome, tenant_id: str) -> None:
        """See an attempt's outcome (upstream 429s and rate-limit headers tighten the budget)."""
        ...

    async def response_headers(
        self, tenant_id: str, provider: str | None, scope: str | None
    ) -> dict[str, str]:
        """``RateLimit-Policy``/``RateLimit`` (and the classic trio) for a ``/v1`` response."""
        ...


class NoLimiter:
    @asynccontextmanager
    async def _admit(self) -> AsyncIterator[None]:
        yield

    def admit(self, call: UpstreamCall, tenant_id: str) -> AbstractAsyncContextManager[None]:
        return self._admit()

    async def observe(self, call: UpstreamCall, outcome: CallOutcome, tenant_id: str) -> None:
        return None

    async def response_headers(
        self, tenant_id: str, provider: str | None, scope: str | None
    ) -> dict[str, str]:
        return {}
