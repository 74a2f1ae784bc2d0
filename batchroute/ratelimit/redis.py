"""The shared rate limiter: state in Redis, every decision one atomic Lua script.

All workers of all processes and hosts that point at the same Redis and ``prefix`` share the
limits. Each decision (acquire, settle, feedback) is a single ``EVALSHA`` that reads Redis'
own ``TIME``, so client clocks never matter and no two workers can both take the last unit::

    limiter = RedisRateLimiter("redis://127.0.0.1:6379/0")
    res = await limiter.acquire(limit_keys_for(model, provider), tokens=1200, timeout_s=60)
    ...
    await limiter.settle(res, actual_tokens=930)
    await limiter.aclose()

One hash per key, ``{<prefix>}:<key name>`` (the braces are a Redis Cluster hash tag, so all
keys of one limiter live in one slot and a multi-key script is legal there too), with fields
``rt``/``tt`` (request/token GCRA state, µs), ``f``/``fu``/``fd`` (AIMD fraction, when written,
last decrease) and ``b`` (blocked until, µs). Each write sets a TTL of ``idle_ttl_s`` beyond the
last moment the state matters, so idle keys disappear. Any Redis failure raises
:class:`~batchroute.errors.BrokerError`.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import parse_url
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from batchroute.errors import BrokerError, ConfigError
from batchroute.ratelimit.aimd import AIMD
from batchroute.ratelimit.base import Clock, KeyStatus, LimitKey, RateLimiter, Sleep

# Shared by every script. Mirrors batchroute.ratelimit.aimd.AIMD.fraction and
# batchroute.ratelimit.base.gcra, in microseconds of Redis server time.
_LUA_PRELUDE = """
local function server_now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Lua's tostring keeps 14 digits, too few for a microsecond timestamp.
local function fmt(x)
  return string.format('%.3f', x)
end

local function fraction(f, fu, now, inc_per_us)
  f = tonumber(f)
  if f == nil or f >= 1 then return 1.0 end
  local cur = f + inc_per_us * math.max(0, now - (tonumber(fu) or now))
  if cur > 1 then return 1.0 end
  return cur
end

local function gcra(tat, now, rate_per_s, cost, burst_s)
  local interval = 1000000 / rate_per_s
  local capacity = math.max(1, rate_per_s * burst_s)
  local start = now
  if tat ~= nil and tat > now then start = tat end
  local wait = start + math.min(cost, capacity) * interval - capacity * interval - now
  if wait <= 0.001 then wait = 0 end
  return wait, start + cost * interval
end

local function expire(key, now, horizon, f, inc_per_us, idle_ttl_ms)
  local keep = math.max(0, horizon - now)
  if f < 1 then keep = math.max(keep, (1 - f) / inc_per_us) end
  redis.call('PEXPIRE', key, math.ceil(idle_ttl_ms + keep / 1000))
end
"""

# KEYS: one hash per limit key. ARGV: tokens, burst_s, increase_per_s, idle_ttl_ms, then
# rpm, tpm per key (0 = unlimited). Returns {1, 0, now_us} or {0, wait_ms, now_us}.
_ACQUIRE_LUA = _LUA_PRELUDE + """
local now = server_now_us()
local tokens = tonumber(ARGV[1])
local burst_s = tonumber(ARGV[2])
local inc_per_us = tonumber(ARGV[3]) / 1000000
local idle_ttl_ms = tonumber(ARGV[4])
local wait = 0
local rows = {}
for i, key in ipairs(KEYS) do
  local h = redis.call('HMGET', key, 'rt', 'tt', 'f', 'fu', 'b')
  local rpm = tonumber(ARGV[3 + 2 * i])
  local tpm = tonumber(ARGV[4 + 2 * i])
  local f = fraction(h[3], h[4], now, inc_per_us)
  local row = {f = f, rt = tonumber(h[1]), tt = tonumber(h[2]), b = tonumber(h[5]) or 0, dirty = false}
  if row.b > now then wait = math.max(wait, row.b - now) end
  if rpm > 0 then
    local w, tat = gcra(row.rt, now, rpm * f / 60, 1, burst_s)
    wait = math.max(wait, w)
    row.rt = tat
    row.dirty = true
  end
  if tpm > 0 and tokens > 0 then
    local w, tat = gcra(row.tt, now, tpm * f / 60, tokens, burst_s)
    wait = math.max(wait, w)
    row.tt = tat
    row.dirty = true
  end
  rows[i] = row
end
if wait > 0 then
  return {0, math.ceil(wait / 1000), fmt(now)}
end
for i, key in ipairs(KEYS) do
  local row = rows[i]
  if row.dirty then
    if row.rt then redis.call('HSET', key, 'rt', fmt(row.rt)) end
    if row.tt then redis.call('HSET', key, 'tt', fmt(row.tt)) end
    expire(key, now, math.max(row.rt or 0, row.tt or 0, row.b), row.f, inc_per_us, idle_ttl_ms)
  end
end
return {1, 0, fmt(now)}
"""

# KEYS: the keys with a tpm limit. ARGV: delta tokens, increase_per_s, idle_ttl_ms, then tpm per key.
_SETTLE_LUA = _LUA_PRELUDE + """
local now = server_now_us()
local delta = tonumber(ARGV[1])
local inc_per_us = tonumber(ARGV[2]) / 1000000
local idle_ttl_ms = tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  local tpm = tonumber(ARGV[3 + i])
  local h = redis.call('HMGET', key, 'rt', 'tt', 'f', 'fu', 'b')
  local f = fraction(h[3], h[4], now, inc_per_us)
  local interval = 60000000 / (tpm * f)
  local tat = tonumber(h[2])
  if delta >= 0 then
    tat = math.max(tat or now, now) + delta * interval
  elseif tat then
    tat = tat + delta * interval
  end
  if tat then
    redis.call('HSET', key, 'tt', fmt(tat))
    expire(key, now, math.max(tat, tonumber(h[1]) or 0, tonumber(h[5]) or 0), f, inc_per_us, idle_ttl_ms)
  end
end
return 1
"""

# KEYS[1]: the key. ARGV: decrease (1/0), block_ms (0 = none), min_fraction, decrease factor,
# increase_per_s, cooldown_s, idle_ttl_ms. Returns {fraction, blocked_for_us}.
_FEEDBACK_LUA = _LUA_PRELUDE + """
local now = server_now_us()
local key = KEYS[1]
local block_us = tonumber(ARGV[2]) * 1000
local min_fraction = tonumber(ARGV[3])
local factor = tonumber(ARGV[4])
local inc_per_us = tonumber(ARGV[5]) / 1000000
local cooldown_us = tonumber(ARGV[6]) * 1000000
local idle_ttl_ms = tonumber(ARGV[7])
local h = redis.call('HMGET', key, 'rt', 'tt', 'f', 'fu', 'fd', 'b')
local f = fraction(h[3], h[4], now, inc_per_us)
if ARGV[1] == '1' then
  local fd = tonumber(h[5])
  if fd == nil or now - fd >= cooldown_us then
    f = math.max(min_fraction, f * factor)
    redis.call('HSET', key, 'f', string.format('%.17g', f), 'fu', fmt(now), 'fd', fmt(now))
  end
end
local b = tonumber(h[6]) or 0
if block_us > 0 and now + block_us > b then
  b = now + block_us
  redis.call('HSET', key, 'b', fmt(b))
end
expire(key, now, math.max(tonumber(h[1]) or 0, tonumber(h[2]) or 0, b), f, inc_per_us, idle_ttl_ms)
return {string.format('%.17g', f), fmt(math.max(0, b - now))}
"""

# KEYS[1]: the key. ARGV: increase_per_s. Returns {fraction, blocked_for_us}; writes nothing.
_STATUS_LUA = _LUA_PRELUDE + """
local now = server_now_us()
local h = redis.call('HMGET', KEYS[1], 'f', 'fu', 'b')
local f = fraction(h[1], h[2], now, tonumber(ARGV[1]) / 1000000)
local b = tonumber(h[3]) or 0
return {string.format('%.17g', f), fmt(math.max(0, b - now))}
"""


@dataclass(frozen=True, slots=True)
class _Conn:
    client: Redis
    acquire: AsyncScript
    settle: AsyncScript
    feedback: AsyncScript
    status: AsyncScript


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _num(value: Any) -> float:
    return float(value.decode() if isinstance(value, bytes) else value)


class RedisRateLimiter(RateLimiter):
    """Rate limits shared through Redis by every process using the same ``redis_url``/``prefix``.

    Create one per process and ``await limiter.aclose()`` at shutdown; it opens one connection
    pool per event loop that uses it, of at most ``max_connections`` (callers beyond wait for one).
    ``idle_ttl_s`` is how long a key's state outlives its last relevance; ``socket_timeout_s``
    bounds every Redis call. Raises ConfigError for an unusable URL or prefix; every other method
    raises BrokerError when Redis fails.
    """

    def __init__(self, redis_url: str, prefix: str = "batchroute:rl", *, burst_s: float = 1.0,
                 aimd: AIMD | None = None, idle_ttl_s: float = 300.0, socket_timeout_s: float = 5.0,
                 wait_jitter_s: float = 0.005, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep,
                 rng: random.Random | None = None, max_connections: int = 64) -> None:
        super().__init__(burst_s=burst_s, aimd=aimd, clock=clock, sleep=sleep,
                         wait_jitter_s=wait_jitter_s, rng=rng)
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(f"rate limit prefix must be non-empty and free of braces, got {prefix!r}")
        if idle_ttl_s <= 0:
            raise ConfigError(f"idle_ttl_s must be > 0, got {idle_ttl_s}")
        if max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1, got {max_connections}")
        self._max_connections = max_connections
        self.prefix = prefix
        self._url = _redact(redis_url)
        self._redis_url = redis_url
        self._socket_timeout_s = socket_timeout_s
        self._idle_ttl_ms = math.ceil(idle_ttl_s * 1000)
        self._conns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Conn] = weakref.WeakKeyDictionary()
        self._conns_lock = threading.Lock()
        try:
            parse_url(redis_url)
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {self._url}: {exc}") from exc

    def redis_key(self, key_name: str) -> str:
        """The Redis key holding ``key_name``'s state, e.g. ``{batchroute:rl}:model:sim-gpt-4``."""
        return f"{{{self.prefix}}}:{key_name}"

    async def status(self, key_name: str) -> KeyStatus:
        """The key's current rate fraction and remaining block, read from Redis."""
        fraction, blocked_us = await self._run(lambda c: c.status, [self.redis_key(key_name)],
                                               [self.aimd.increase_per_s])
        return KeyStatus(key_name, _num(fraction), _num(blocked_us) / 1e6)

    async def aclose(self) -> None:
        """Close the connection pool of the running event loop (and forget the others)."""
        with self._conns_lock:
            conn = self._conns.pop(asyncio.get_running_loop(), None)
            self._conns.clear()
        if conn is not None:
            await conn.client.aclose()

    async def _try(self, keys: tuple[LimitKey, ...], tokens: int) -> tuple[float, float]:
        args: list[float | int] = [tokens, self.burst_s, self.aimd.increase_per_s, self._idle_ttl_ms]
        for k in keys:
            args += [k.rpm or 0, k.tpm or 0]
        _granted, wait_ms, now_us = await self._run(lambda c: c.acquire,
                                                    [self.redis_key(k.name) for k in keys], args)
        return int(wait_ms) / 1000.0, _num(now_us) / 1e6

    async def _charge_tokens(self, keys: tuple[LimitKey, ...], delta: int) -> None:
        args: list[float | int] = [delta, self.aimd.increase_per_s, self._idle_ttl_ms]
        args += [k.tpm or 0 for k in keys]
        await self._run(lambda c: c.settle, [self.redis_key(k.name) for k in keys], args)

    async def _feedback(self, key_name: str, *, decrease: bool, block_s: float | None) -> None:
        a = self.aimd
        await self._run(lambda c: c.feedback, [self.redis_key(key_name)],
                        [int(decrease), (block_s or 0.0) * 1000.0, a.min_fraction, a.decrease,
                         a.increase_per_s, a.cooldown_s, self._idle_ttl_ms])

    def _conn(self) -> _Conn:
        # redis.asyncio connections belong to the loop that opened them; a worker that runs
        # asyncio.run() per task (or one loop per thread) gets one pool per loop.
        loop = asyncio.get_running_loop()
        with self._conns_lock:
            conn = self._conns.get(loop)
            if conn is None:
                # Hundreds of calls settle at once in a busy worker; a blocking pool makes them queue
                # for a connection (each script takes well under a millisecond) where redis-py's
                # default pool fails the call with "Too many connections" past 100.
                pool = BlockingConnectionPool.from_url(
                    self._redis_url, max_connections=self._max_connections, timeout=self._socket_timeout_s,
                    socket_timeout=self._socket_timeout_s, socket_connect_timeout=self._socket_timeout_s)
                client = Redis.from_pool(pool)  # the client owns (and closes) the pool
                conn = self._conns[loop] = _Conn(
                    client, client.register_script(_ACQUIRE_LUA), client.register_script(_SETTLE_LUA),
                    client.register_script(_FEEDBACK_LUA), client.register_script(_STATUS_LUA))
            return conn

    async def _run(self, pick: Callable[[_Conn], AsyncScript], keys: Sequence[str],
                   args: Sequence[float | int]) -> Any:
        script = pick(self._conn())
        try:
            return await script(keys=keys, args=[repr(a) if isinstance(a, float) else a for a in args])
        except RedisError as exc:
            raise BrokerError(f"rate limiter: Redis at {self._url} failed: {exc}") from exc
