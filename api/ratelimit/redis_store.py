"""Budgets in Redis (``LEDGERBRIDGE_REDIS_URL``): one Lua script per decision, so check and count are atomic
across every replica (reliability-notes.md §6.2).

* a quota bucket is a hash ``{ws, used, blocked}`` expiring with its window (or its block);
* a concurrency partition is a sorted set of lease holders scored by lease expiry: expired leases are
  dropped before counting, so a crashed holder's slot frees itself.

Redis being down fails closed: the call errors (no upstream call is made) rather than let the upstream
be overrun; response headers are then omitted rather than invented.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from api.ratelimit.store import Bucket, BucketState, TakeResult, claim_then_take

PREFIX = "lb:rl:"

# KEYS: bucket keys. ARGV: now, then per key: window_start, quota (-1: none), ttl seconds, units.
# All-or-nothing: the first pass only checks; the second counts. Returns a flat list
# {admitted, key index, used, window_start, blocked} for every key (admitted) or every refusing key.
TAKE = """
local now = tonumber(ARGV[1])
local refused = {}
for i, key in ipairs(KEYS) do
  local ws = tonumber(ARGV[2 + (i - 1) * 4])
  local quota = tonumber(ARGV[3 + (i - 1) * 4])
  local units = tonumber(ARGV[5 + (i - 1) * 4])
  local h = redis.call('HMGET', key, 'ws', 'used', 'blocked')
  local sws = tonumber(h[1]) or 0
  local used = tonumber(h[2]) or 0
  local blocked = tonumber(h[3]) or 0
  local exhausted = quota >= 0 and sws >= ws and used + units > quota
  if blocked > now or exhausted or quota == 0 then
    table.insert(refused, i)
    table.insert(refused, used)
    table.insert(refused, tostring(sws))
    table.insert(refused, tostring(blocked))
  end
end
if #refused > 0 then
  table.insert(refused, 1, 0)
  return refused
end
local out = {1}
for i, key in ipairs(KEYS) do
  local ws = tonumber(ARGV[2 + (i - 1) * 4])
  local ttl = tonumber(ARGV[4 + (i - 1) * 4])
  local units = tonumber(ARGV[5 + (i - 1) * 4])
  local h = redis.call('HMGET', key, 'ws', 'used', 'blocked')
  local sws = tonumber(h[1]) or 0
  local used = tonumber(h[2]) or 0
  if sws >= ws then
    used = redis.call('HINCRBY', key, 'used', units)
  else
    redis.call('HSET', key, 'ws', ws, 'used', units)
    used = units
    sws = ws
  end
  local blocked = tonumber(h[3]) or 0
  local keep = math.max(ttl, math.ceil(blocked - now) + 1)
  redis.call('EXPIRE', key, keep)
  table.insert(out, i)
  table.insert(out, used)
  table.insert(out, tostring(sws))
  table.insert(out, tostring(blocked))
end
return out
"""

# KEYS[1]: lease set. ARGV: now, cap, holder, expiry, ttl.
CLAIM = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS[1]: bucket. ARGV: window_start, units. Uncounts units of that window only (never below 0).
GIVE_BACK = """
local h = redis.call('HMGET', KEYS[1], 'ws', 'used')
if tonumber(h[1]) == tonumber(ARGV[1]) and (tonumber(h[2]) or 0) >= tonumber(ARGV[2]) then
  redis.call('HINCRBY', KEYS[1], 'used', -tonumber(ARGV[2]))
end
return 1
"""

# KEYS[1]: bucket. ARGV: until, window_start, ttl.
BLOCK = """
local blocked = tonumber(redis.call('HGET', KEYS[1], 'blocked')) or 0
if tonumber(ARGV[1]) > blocked then
  redis.call('HSET', KEYS[1], 'blocked', ARGV[1])
  if not redis.call('HGET', KEYS[1], 'ws') then
    redis.call('HSET', KEYS[1], 'ws', ARGV[2], 'used', 0)
  end
end
local ttl = redis.call('TTL', KEYS[1])
if ttl < tonumber(ARGV[3]) then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
"""


def _state(used: Any, ws: Any, blocked: Any) -> BucketState:
    blocked_at = float(blocked)
    return BucketState(int(used), float(ws), blocked_at if blocked_at > 0 else None)


class RedisStore:
    local_slots = False

    def __init__(self, url: str, *, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self.redis: aioredis.Redis[bytes] = aioredis.Redis.from_url(url)
        self._take = self.redis.register_script(TAKE)
        self._claim = self.redis.register_script(CLAIM)
        self._block = self.redis.register_script(BLOCK)
        self._give_back = self.redis.register_script(GIVE_BACK)

    async def start(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()  # type: ignore[attr-defined]  # redis>=5; the stubs predate it

    async def take(self, buckets: Sequence[Bucket], now: float) -> TakeResult:
        keys = [self.prefix + b.key for b in buckets]
        args: list[Any] = [now]
        for b in buckets:
            args += [b.window_start(now), -1 if b.quota is None else b.quota, b.window + 1, b.units]
        out = await self._take(keys=keys, args=args)
        admitted = int(out[0]) == 1
        states = {
            buckets[int(out[i]) - 1].key: _state(out[i + 1], out[i + 2], out[i + 3])
            for i in range(1, len(out), 4)
        }
        return TakeResult(admitted, states)

    async def claim(self, key: str, cap: int, holder: str, now: float, ttl: float) -> int | None:
        if cap <= 0:
            return None
        ok = await self._claim(
            keys=[self.prefix + key], args=[now, cap, holder, now + ttl, math.ceil(ttl) + 1]
        )
        return 0 if int(ok) == 1 else None

    async def claim_take(
        self, key: str, cap: int, holder: str, now: float, ttl: float, buckets: Sequence[Bucket]
    ) -> tuple[int | None, TakeResult | None]:
        return await claim_then_take(self, key, cap, holder, now, ttl, buckets)

    async def release(self, key: str, slot: int, holder: str) -> None:
        await self.redis.zrem(self.prefix + key, holder)

    async def give_back(self, key: str, window_start: float, units: int) -> None:
        await self._give_back(keys=[self.prefix + key], args=[window_start, units])

    async def block(self, bucket: Bucket, until: float, now: float) -> None:
        ttl = max(bucket.window, math.ceil(until - now)) + 1
        await self._block(keys=[self.prefix + bucket.key], args=[until, bucket.window_start(now), ttl])

    async def read(
        self, buckets: Sequence[Bucket], slots: Sequence[str], now: float
    ) -> tuple[dict[str, BucketState], dict[str, int]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for b in buckets:
                pipe.hmget(self.prefix + b.key, "ws", "used", "blocked")
            for key in slots:
                pipe.zcount(self.prefix + key, f"({now}", "+inf")
            out = await pipe.execute()
        states: dict[str, BucketState] = {}
        for b, (ws, used, blocked) in zip(buckets, out[: len(buckets)], strict=True):
            if ws is not None:
                states[b.key] = _state(used or 0, ws, blocked or 0)
        inflight = {key: int(n) for key, n in zip(slots, out[len(buckets) :], strict=True)}
        return states, inflight

    async def purge(self) -> None:
        async for key in self.redis.scan_iter(match=self.prefix + "*"):
            await self.redis.delete(key)
