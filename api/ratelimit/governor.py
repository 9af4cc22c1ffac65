"""The gateway's :class:`~api.ratelimit.limiter.Limiter`: shared budgets, concurrency caps, upstream signals.

Per upstream attempt (``admit``):

1. a partition closed by an upstream signal that this process already knows of is refused at once;
2. concurrency leases (per app, per company): callers queue in-process (at most ``limit`` of them touch the
   store), then lease a shared slot, polling for at most ``concurrency_wait`` seconds → 429 otherwise;
3. one atomic count in every quota bucket (tenant, app, …), which also checks blocks set by other replicas.
   A large quota is counted in blocks (:func:`lease_units`: 1 % of it, at most 100 calls): the process
   takes a block with one statement and spends it in memory, so the Sage daily budget costs one database
   write per 100 calls instead of one per call. Blocks are taken atomically, so every replica together still
   never admits more than the quota; the price is that a replica may sit on up to a block's unused calls
   while another is refused (a quota under 200 is counted call by call, exactly as before). What a process
   still holds is given back when it stops. A process spending its allowance still asks the store at least
   every ``STATE_TTL`` (counting nothing), so blocks set by other replicas reach it within that time. Block
   takes, these checks and header reads are single-flight per bucket: a burst of calls makes one statement.

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
from dataclasses import dataclass, replace

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
LEASE_FRACTION = 100
LEASE_MAX = 100


def lease_units(policy: Policy) -> int:
    """How many calls of ``policy``'s quota a process counts in the store at once."""
    if policy.kind != "quota":
        return 1
    return max(1, min(LEASE_MAX, policy.limit // LEASE_FRACTION))


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


@dataclass
class _Allowance:
    """Calls of a quota window this process has counted in the store but not spent yet."""

    window_start: float
    units: int


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
        self._allowance: dict[str, _Allowance] = {}
        self._applied_cache: dict[tuple[str | None, ...], list[_Applied]] = {}
        self._asking: dict[str, asyncio.Event] = {}
        """Buckets with a store call of this process in flight: their state is being refreshed, so other calls
        need not ask too (no herd of identical statements each time a state turns ``STATE_TTL`` old)."""

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._give_back_allowance()
        await self.store.close()

    async def _give_back_allowance(self) -> None:
        """Uncount the calls this process counted but never made (their window may still be running)."""
        allowance, self._allowance = self._allowance, {}
        for key, left in allowance.items():
            if left.units > 0:
                try:
                    await self.store.give_back(key, left.window_start, left.units)
                except Exception:
                    log.warning("could not give back unused rate budget", exc_info=True)

    # --- which budgets a call touches ------------------------------------------------------------------

    def _applied(self, policies: Sequence[Policy], tenant_id: str, scope: str | None) -> list[_Applied]:
        applied = []
        for policy in policies:
            partition = policy.partition_value(tenant_id, scope)
            if partition is not None:
                applied.append(_Applied(policy, storage_key(policy, partition)))
        return applied

    def _remember(
        self, key: tuple[str | None, ...], policies: list[Policy], tenant_id: str, scope: str | None
    ) -> list[_Applied]:
        if len(self._applied_cache) >= 10_000:
            self._applied_cache.clear()
        applied = self._applied_cache[key] = self._applied(policies, tenant_id, scope)
        return applied

    def _for_call(self, call: UpstreamCall, tenant_id: str) -> list[_Applied]:
        key = ("call", call.provider, call.kind, tenant_id, call.scope)
        applied = self._applied_cache.get(key)
        if applied is None:
            policies = [p for p in self.policies if p.applies(call.provider, call.kind)]
            applied = self._remember(key, policies, tenant_id, call.scope)
        return applied

    def _for_headers(self, tenant_id: str, provider: str | None, scope: str | None) -> list[_Applied]:
        """The budgets a response reports on: the tenant's own, and its provider's."""
        key = ("headers", provider, tenant_id, scope)
        applied = self._applied_cache.get(key)
        if applied is None:
            policies = [
                p
                for p in self.policies
                if p.provider is None or (provider is not None and p.provider == provider)
            ]
            applied = self._remember(key, policies, tenant_id, scope)
        return applied

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
            if leases and self.store.local_slots:
                await self._give_back(leases)  # slots in this process's memory: no I/O, no task
            else:
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

    def _to_count(self, applied: list[_Applied], now: float) -> list[Bucket]:
        """What this call must count in the store: ``[]`` when this process's allowance covers every quota
        and it saw every bucket's state less than ``STATE_TTL`` ago; else a block for each quota it lacks,
        nothing (0: only the block and window checks) for the quotas it covers."""
        lacking = {
            a.key
            for a in applied
            if a.policy.kind == "quota" and not self._covered(a.key, a.policy.window, now)
        }
        if not lacking and all(
            a.key in self._asking or (a.key in self._states and now - self._states[a.key][1] < STATE_TTL)
            for a in applied
        ):
            return []
        return [
            replace(a.bucket, units=lease_units(a.policy) if a.key in lacking else 0)
            if a.policy.kind == "quota"
            else a.bucket
            for a in applied
        ]

    def _ask(self, keys: set[str]) -> list[str]:
        """Mark ``keys`` as being asked of the store by this call; returns the ones it marked."""
        mine = [k for k in keys if k not in self._asking]
        for key in mine:
            self._asking[key] = asyncio.Event()
        return mine

    def _asked(self, keys: list[str]) -> None:
        for key in keys:
            event = self._asking.pop(key, None)
            if event is not None:
                event.set()

    async def _await_blocks(self, applied: list[_Applied], now: float) -> bool:
        """Wait for a block another call of this process is taking for a quota this call lacks (one
        statement for the burst, not one per call). True when it waited (plan again)."""
        pending = [
            self._asking[a.key]
            for a in applied
            if a.policy.kind == "quota"
            and a.key in self._asking
            and not self._covered(a.key, a.policy.window, now)
        ]
        if not pending:
            return False
        await pending[0].wait()
        return True

    def _covered(self, key: str, window: int, now: float) -> bool:
        left = self._allowance.get(key)
        return left is not None and left.units > 0 and left.window_start == (now // window) * window

    def _plan(self, applied: list[_Applied], now: float) -> tuple[list[Bucket], list[_Allowance]]:
        """What to count in the store, and the allowance already spent on this call (synchronously, so
        concurrent calls of this process never spend one unit twice; :meth:`_refund` on a refusal)."""
        buckets = self._to_count(applied, now)
        counted = {b.key for b in buckets if b.units > 0}
        reserved = []
        for a in applied:
            if a.policy.kind == "quota" and a.key not in counted:
                left = self._allowance[a.key]
                left.units -= 1
                reserved.append(left)
        return buckets, reserved

    @staticmethod
    def _refund(reserved: list[_Allowance]) -> None:
        for left in reserved:
            left.units += 1

    def _credit(self, counted: list[Bucket], now: float) -> None:
        """Keep what the store counted beyond this call as this process's allowance."""
        for b in counted:
            if b.quota is None or b.units <= 1:
                continue
            window_start = b.window_start(now)
            left = self._allowance.get(b.key)
            if left is None or left.window_start != window_start:
                left = self._allowance[b.key] = _Allowance(window_start, 0)
            left.units += b.units - 1

    @staticmethod
    def _single(buckets: list[Bucket]) -> list[Bucket] | None:
        """After a refused block: the same buckets one call at a time (the quota may have less than a
        block left), or None when they already were."""
        if all(b.units <= 1 for b in buckets):
            return None
        return [replace(b, units=min(b.units, 1)) for b in buckets]

    async def _take(self, applied: list[_Applied], call: UpstreamCall) -> None:
        now = self.clock()
        while await self._await_blocks(applied, now):
            now = self.clock()
        buckets, reserved = self._plan(applied, now)
        if not buckets:
            return
        asking = self._ask({b.key for b in buckets})
        try:
            result = await self.store.take(buckets, now)
            single = None if result.admitted else self._single(buckets)
            if single is not None:
                buckets, result = single, await self.store.take(single, now)
            self._settle(applied, result, now, call)
        except BaseException:
            self._refund(reserved)
            raise
        finally:
            self._asked(asking)
        self._credit(buckets, now)

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
            if queue.locked():
                async with asyncio.timeout(max(0.0, self.concurrency_wait)):
                    await queue.acquire()
            else:
                await queue.acquire()  # a free place: taken at once (no timer to arm)
        except TimeoutError:
            self._inflight[applied.key] = (policy.limit, self.clock())
            raise self._refusal(policy, CONCURRENCY_RETRY_AFTER, call) from None
        holder = secrets.token_hex(8)
        pause = 0.005
        try:
            plan: tuple[list[Bucket], list[_Allowance]] | None = None
            while True:
                now = self.clock()
                if plan is None:
                    while await self._await_blocks(quota, now):
                        now = self.clock()
                    plan = self._plan(quota, now)
                buckets, reserved = plan
                asking = self._ask({b.key for b in buckets})
                try:
                    slot, taken = await self.store.claim_take(
                        applied.key, policy.limit, holder, now, self.lease_ttl, buckets
                    )
                    if slot is not None and taken is not None:
                        single = None if taken.admitted else self._single(buckets)
                        if single is not None:
                            plan = (single, reserved)
                            continue  # the store gave the slot back: claim again, one call at a time
                        self._settle(quota, taken, now, call)  # a refusal: the store gave the slot back
                except BaseException:
                    self._refund(reserved)
                    raise
                finally:
                    self._asked(asking)
                if slot is not None:
                    self._credit(buckets, now)
                    return _Lease(applied.key, slot, holder)
                self._refund(reserved)
                plan = None
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
        applied = self._for_headers(tenant_id, provider, scope)
        if not applied:
            return {}
        now = self.clock()
        # A stale state that another call of this process is already refreshing is used as it is.
        stale_buckets = [
            a.bucket
            for a in applied
            if (a.policy.kind == "quota" or a.policy.upstream_signals)
            and (
                a.key not in self._states
                or (now - self._states[a.key][1] >= STATE_TTL and a.key not in self._asking)
            )
        ]
        stale_slots = [
            a.key
            for a in applied
            if a.policy.kind == "concurrency"
            and (
                a.key not in self._inflight
                or (now - self._inflight[a.key][1] >= STATE_TTL and a.key not in self._asking)
            )
        ]
        if stale_buckets or stale_slots:
            asking = self._ask({b.key for b in stale_buckets} | set(stale_slots))
            try:
                states, inflight = await self.store.read(stale_buckets, stale_slots, now)
            except Exception:
                log.warning("rate-limit state unavailable; headers omitted", exc_info=True)
                return {}
            finally:
                self._asked(asking)
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
        left = self._allowance.get(applied.key)
        if left is not None and left.window_start == window_start:
            used = max(0, used - left.units)  # counted in the store by this process, not spent yet
        return PolicyStatus(policy, max(0, policy.limit - used), seconds(window_start + policy.window - now))
