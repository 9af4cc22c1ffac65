"""The gateway's :class:`~api.ratelimit.limiter.Limiter`: shared budgets, concurrency caps, upstream signals.

Per upstream attempt (``admit``):

1. a partition closed by an upstream signal that this process already knows of is refused at once;
2. concurrency leases (per app, per company): callers queue in-process (at most ``limit`` of them touch the
   store), then lease a shared slot, polling for at most ``concurrency_wait`` seconds → 429 otherwise;
3. one atomic count in every quota bucket (tenant, app, …), which also checks blocks set by other replicas.

``observe`` turns an upstream 429 (with or without ``Retry-After``: ``default_retry_after`` then) or
rate-limit headers into a block of the provider's signalled policies, shared through the store, so later
calls are refused without reaching the upstream. Refusals raise :class:`~connectors.errors.RateLimited`
(``upstream_rate_limited``) or :class:`GatewayRateLimited` (``rate_limited``, the tenant's own quota).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from api.ratelimit.headers import PolicyStatus, render, seconds
from api.ratelimit.policies import Policy
from api.ratelimit.signals import upstream_wait
from api.ratelimit.store import Bucket, BucketState, Store, TakeResult
from connectors.base import CallOutcome, UpstreamCall
from connectors.errors import ConnectorError, RateLimited

log = logging.getLogger(__name__)

STATE_TTL = 1.0
"""How long a bucket state seen by this process is trusted for response headers (seconds)."""
CONCURRENCY_RETRY_AFTER = 1.0
BLOCK_WINDOW = 86_400
"""Window of the block-only bucket a concurrency policy keeps for upstream signals."""


class GatewayRateLimited(RateLimited):
    """The tenant's own gateway quota is spent (``rate_limited``), as opposed to an upstream's budget."""

    code, status, title = "rate_limited", 429, "Rate limit exceeded"


class LimiterUnavailable(ConnectorError):
    """The budget store (database or Redis) cannot be reached: the call is refused, never let through
    unmetered (fail closed), and the caller may retry shortly."""

    code, status, title = "upstream_unavailable", 503, "Rate limiter unavailable"


@dataclass(frozen=True)
class _Applied:
    policy: Policy
    key: str

    @property
    def bucket(self) -> Bucket:
        if self.policy.kind == "quota":
            return Bucket(self.key, self.policy.limit, self.policy.window)
        return Bucket(self.key, None, BLOCK_WINDOW)


@dataclass(frozen=True)
class _Lease:
    key: str
    slot: int
    holder: str


def storage_key(policy: Policy, partition: str) -> str:
    raw = f"{policy.name}:{partition}"
    if len(raw) <= 200:
        return raw
    return f"{policy.name}:h:" + hashlib.sha256(partition.encode()).hexdigest()


class Governor:
    def __init__(
        self,
        policies: Sequence[Policy],
        store: Store,
        *,
        concurrency_wait: float = 2.0,
        default_retry_after: float = 30.0,
        lease_ttl: float = 90.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policies = tuple(policies)
        self.store = store
        self.concurrency_wait = concurrency_wait
        self.default_retry_after = default_retry_after
        self.lease_ttl = lease_ttl
        self.clock = clock
        self._blocked: dict[str, float] = {}
        self._states: dict[str, tuple[BucketState, float]] = {}
        self._inflight: dict[str, tuple[int, float]] = {}
        self._queues: dict[str, asyncio.Semaphore] = {}
        self._released: dict[str, asyncio.Event] = {}
        self._pending: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.store.close()

    # --- which budgets a call touches ------------------------------------------------------------------

    def _applied(self, policies: Sequence[Policy], tenant_id: str, scope: str | None) -> list[_Applied]:
        applied = []
        for policy in policies:
            partition = policy.partition_value(tenant_id, scope)
            if partition is not None:
                applied.append(_Applied(policy, storage_key(policy, partition)))
        return applied

    def _for_call(self, call: UpstreamCall, tenant_id: str) -> list[_Applied]:
        policies = [p for p in self.policies if p.applies(call.provider, call.kind)]
        return self._applied(policies, tenant_id, call.scope)

    # --- admission --------------------------------------------------------------------------------------

    def admit(self, call: UpstreamCall, tenant_id: str) -> AbstractAsyncContextManager[None]:
        return self._admit(call, tenant_id)

    @asynccontextmanager
    async def _admit(self, call: UpstreamCall, tenant_id: str) -> AsyncIterator[None]:
        applied = self._for_call(call, tenant_id)
        now = self.clock()
        for a in applied:
            until = self._blocked.get(a.key)
            if until is not None:
                if until > now:
                    raise self._refusal(a.policy, until - now, call)
                del self._blocked[a.key]
            if a.policy.limit == 0:
                raise self._refusal(a.policy, self._window_left(a.policy, now), call)
        concurrency = sorted((a for a in applied if a.policy.kind == "concurrency"), key=lambda a: a.key)
        quota = [a for a in applied if a.policy.kind == "quota" or a.policy.upstream_signals]
        leases: list[_Lease] = []
        try:
            for i, a in enumerate(concurrency):
                # The last lease also counts the quotas (one round trip on PostgreSQL).
                leases.append(await self._lease(a, call, quota if i == len(concurrency) - 1 else []))
            if quota and not concurrency:
                await self._take(quota, call)
        except ConnectorError:
            await self._release_all(leases)
            raise
        except Exception as exc:
            await self._release_all(leases)
            log.error("rate-limit store unavailable; refusing the call", exc_info=True)
            raise LimiterUnavailable(
                "The gateway cannot check this call's rate budgets right now", retry_after=1.0
            ) from exc
        except BaseException:
            await self._release_all(leases)
            raise
        try:
            yield
        finally:
            # Off the response path: a slot freed a moment later is only ever tighter.
            self._release_later(leases)

    def _window_left(self, policy: Policy, now: float) -> float:
        window = policy.window or BLOCK_WINDOW
        return (now // window) * window + window - now

    def _refusal(self, policy: Policy, wait: float, call: UpstreamCall) -> RateLimited:
        # Jitter only upwards: a Retry-After earlier than the reset would just be refused again.
        retry_after = max(1.0, wait * (1 + random.uniform(0, 0.1)))  # noqa: S311 - jitter
        if policy.provider is None:
            return GatewayRateLimited(
                f"The tenant's gateway quota ({policy.name}) is exhausted",
                policy=policy.name,
                retry_after=retry_after,
            )
        return RateLimited(
            f"The {policy.name} budget of {call.provider} is exhausted; no upstream call was made",
            policy=policy.name,
            retry_after=retry_after,
        )

    async def _take(self, applied: list[_Applied], call: UpstreamCall) -> None:
        now = self.clock()
        self._settle(applied, await self.store.take([a.bucket for a in applied], now), now, call)

    def _settle(self, applied: list[_Applied], result: TakeResult, now: float, call: UpstreamCall) -> None:
        """Remember what the store said; raise the refusal (the longest wait) if it refused."""
        for key, state in result.states.items():
            self._states[key] = (state, now)
            if state.blocked_until is not None and state.blocked_until > now:
                self._blocked[key] = state.blocked_until
        if result.admitted:
            return
        worst: tuple[float, Policy] | None = None
        for a in applied:
            refused = result.states.get(a.key)
            if refused is None:
                continue
            if refused.blocked_until is not None and refused.blocked_until > now:
                wait = refused.blocked_until - now
            else:
                wait = refused.window_start + (a.policy.window or BLOCK_WINDOW) - now
            if worst is None or wait > worst[0]:
                worst = (wait, a.policy)
        if worst is None:  # the refusing row vanished meanwhile (purged): refuse briefly, never admit blindly
            worst = (1.0, applied[0].policy)
        raise self._refusal(worst[1], worst[0], call)

    async def _lease(self, applied: _Applied, call: UpstreamCall, quota: list[_Applied]) -> _Lease:
        policy = applied.policy
        deadline = time.monotonic() + self.concurrency_wait
        queue = self._queues.setdefault(applied.key, asyncio.Semaphore(policy.limit))
        try:
            async with asyncio.timeout(max(0.0, self.concurrency_wait)):
                await queue.acquire()
        except TimeoutError:
            self._inflight[applied.key] = (policy.limit, self.clock())
            raise self._refusal(policy, CONCURRENCY_RETRY_AFTER, call) from None
        holder = secrets.token_hex(8)
        pause = 0.005
        try:
            buckets = [a.bucket for a in quota]
            while True:
                now = self.clock()
                slot, taken = await self.store.claim_take(
                    applied.key, policy.limit, holder, now, self.lease_ttl, buckets
                )
                if slot is not None:
                    if taken is not None:
                        self._settle(quota, taken, now, call)  # a refusal: the store gave the slot back
                    return _Lease(applied.key, slot, holder)
                left = deadline - time.monotonic()
                if left <= 0:
                    self._inflight[applied.key] = (policy.limit, self.clock())
                    raise self._refusal(policy, CONCURRENCY_RETRY_AFTER, call)
                # Slots held by other replicas: poll with backoff (woken early by a local release).
                event = self._released.setdefault(applied.key, asyncio.Event())
                try:
                    async with asyncio.timeout(min(pause, left)):
                        await event.wait()
                except TimeoutError:
                    pass
                pause = min(pause * 2, 0.1)
        except BaseException:
            queue.release()
            raise

    def _release_later(self, leases: list[_Lease]) -> None:
        if leases:
            task = asyncio.ensure_future(self._give_back(leases))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _release_all(self, leases: list[_Lease]) -> None:
        if leases:
            # Shielded: a cancelled request still gives its slots back (and wakes the local queue).
            await asyncio.shield(asyncio.ensure_future(self._give_back(leases)))

    async def _give_back(self, leases: list[_Lease]) -> None:
        for lease in reversed(leases):
            try:
                await self.store.release(lease.key, lease.slot, lease.holder)
            except Exception:
                # The lease expires by itself (lease_ttl); never fail the caller's request over it.
                log.warning("could not release a concurrency slot", exc_info=True)
            finally:
                self._queues[lease.key].release()
                event = self._released.pop(lease.key, None)
                if event is not None:
                    event.set()

    # --- upstream signals -------------------------------------------------------------------------------

    async def observe(self, call: UpstreamCall, outcome: CallOutcome, tenant_id: str) -> None:
        wait = upstream_wait(call.provider, outcome, self.default_retry_after)
        if wait is None or wait <= 0:
            return
        now = self.clock()
        until = now + wait
        signalled = [p for p in self.policies if p.upstream_signals and p.applies(call.provider, call.kind)]
        for a in self._applied(signalled, tenant_id, call.scope):
            self._blocked[a.key] = max(until, self._blocked.get(a.key, 0.0))
            self._states.pop(a.key, None)
            log.info("upstream rate limit", extra={"policy": a.policy.name, "retry_after": round(wait)})
            try:
                await self.store.block(a.bucket, until, now)
            except Exception:
                # This process still honours the block; the others learn of it from their own 429.
                log.warning("could not share an upstream rate-limit block", exc_info=True)

    # --- headers ----------------------------------------------------------------------------------------

    async def response_headers(
        self, tenant_id: str, provider: str | None, scope: str | None
    ) -> dict[str, str]:
        policies = [
            p
            for p in self.policies
            if p.provider is None or (provider is not None and p.provider == provider)
        ]
        applied = self._applied(policies, tenant_id, scope)
        if not applied:
            return {}
        now = self.clock()
        stale_buckets = [
            a.bucket
            for a in applied
            if (a.policy.kind == "quota" or a.policy.upstream_signals)
            and (a.key not in self._states or now - self._states[a.key][1] >= STATE_TTL)
        ]
        stale_slots = [
            a.key
            for a in applied
            if a.policy.kind == "concurrency"
            and (a.key not in self._inflight or now - self._inflight[a.key][1] >= STATE_TTL)
        ]
        if stale_buckets or stale_slots:
            try:
                states, inflight = await self.store.read(stale_buckets, stale_slots, now)
            except Exception:
                log.warning("rate-limit state unavailable; headers omitted", exc_info=True)
                return {}
            for bucket in stale_buckets:
                state = states.get(bucket.key, BucketState(0, bucket.window_start(now)))
                self._states[bucket.key] = (state, now)
                if state.blocked_until is not None and state.blocked_until > now:
                    self._blocked[bucket.key] = state.blocked_until
            for key in stale_slots:
                self._inflight[key] = (inflight.get(key, 0), now)
        return render([self._status(a, now) for a in applied])

    def _status(self, applied: _Applied, now: float) -> PolicyStatus:
        policy = applied.policy
        until = self._blocked.get(applied.key)
        if until is not None and until > now:
            return PolicyStatus(policy, 0, seconds(until - now))
        if policy.kind == "concurrency":
            inflight = self._inflight.get(applied.key, (0, now))[0]
            return PolicyStatus(policy, max(0, policy.limit - inflight), None)
        window_start = (now // policy.window) * policy.window
        state = self._states.get(applied.key)
        used = state[0].used if state is not None and state[0].window_start >= window_start else 0
        return PolicyStatus(policy, max(0, policy.limit - used), seconds(window_start + policy.window - now))
