"""Where the profiler's decayed counts live: in this process, or in Redis shared by every worker.

:class:`ProfileStore` has two methods, ``record`` (decay to now, then add) and ``read`` (decayed to
now), plus ``claim_snapshot`` (who writes the next Postgres snapshot) and ``source`` (whose figures
a snapshot holds). :class:`MemoryProfileStore` serves the embedded default; :class:`RedisProfileStore`
keeps one hash per model (the scalar sums and one field per latency bucket) updated by an atomic Lua
script. :func:`new_profile_store` picks one from settings through the :data:`STORES` name registry.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from batchroute.errors import BrokerError, ConfigError
from batchroute.profiler.stats import FIELDS, Counts, decay_factor

if TYPE_CHECKING:
    from batchroute.settings import Settings

# Decayed state older than this many half-lives is negligible (< 1e-6 of its weight): Redis keys expire.
TTL_HALF_LIVES = 20


class ProfileStore(ABC):
    """Where the decayed counts live. ``record`` adds a batch of counts; ``read`` decays them to now."""

    #: True when the state lives in this process (no I/O: record at once, no batching).
    local = False

    def __init__(self, half_life_s: float) -> None:
        if half_life_s <= 0:
            raise ConfigError(f"profile half-life must be > 0, got {half_life_s}")
        self.half_life_s = half_life_s

    @abstractmethod
    def record(self, batch: Mapping[str, Counts]) -> None:
        """Decay each model's sums to now, then add its counts from ``batch`` (atomically per model)."""

    @abstractmethod
    def read(self, models: Sequence[str]) -> dict[str, Counts]:
        """Each named model's sums decayed to now (zero counts for a model never recorded)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def claim_snapshot(self, period_s: float) -> bool:
        """True when this process should write the next snapshot of these figures (see Profiler).

        A store whose figures are this process's own always says yes; a shared store says yes to
        one process per ``period_s``. Raises BrokerError if the store cannot be asked.
        """
        return True

    @property
    def source(self) -> str:
        """Whose figures these are, as stored with each snapshot row."""
        return f"{type(self).__name__}:{socket.gethostname()}:{os.getpid()}"


class MemoryProfileStore(ProfileStore):
    """Counts in this process (the embedded default, or a deployment without Redis). Thread-safe."""

    local = True

    def __init__(self, half_life_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(half_life_s)
        self._clock = clock
        self._state: dict[str, tuple[float, Counts]] = {}
        self._lock = threading.Lock()

    def record(self, batch: Mapping[str, Counts]) -> None:
        now = self._clock()
        with self._lock:
            for model, add in batch.items():
                at, c = self._state.get(model, (now, Counts()))
                self._state[model] = (now, c.scaled(decay_factor(now - at, self.half_life_s)) + add)

    def read(self, models: Sequence[str]) -> dict[str, Counts]:
        now = self._clock()
        with self._lock:
            state = {m: self._state.get(m) for m in models}
        return {m: Counts() if s is None else s[1].scaled(decay_factor(now - s[0], self.half_life_s))
                for m, s in state.items()}

    @property
    def source(self) -> str:
        """``memory:<host>:<pid>``: the figures of this process alone."""
        return f"memory:{socket.gethostname()}:{os.getpid()}"


# KEYS: one hash per model. ARGV: half_life_s, ttl_ms, then len(FIELDS) increments per key, in
# FIELDS order (the scalar sums, then one per latency bucket). Decays each hash to Redis' own TIME
# (mirrors decay_factor) before adding, so concurrent workers never lose an update and client
# clocks never matter.
_RECORD_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local half = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local names = {NAMES}
local n = #names
for i, key in ipairs(KEYS) do
  local h = redis.call('HMGET', key, 't', unpack(names))
  local f = 1
  local last = tonumber(h[1])
  if last ~= nil and now > last then f = 0.5 ^ ((now - last) / half) end
  local out = {'t', string.format('%.6f', now)}
  for j = 1, n do
    local v = (tonumber(h[j + 1]) or 0) * f + tonumber(ARGV[2 + (i - 1) * n + j])
    out[#out + 1] = names[j]
    out[#out + 1] = string.format('%.17g', v)
  end
  redis.call('HSET', key, unpack(out))
  redis.call('PEXPIRE', key, ttl)
end
return 1
""".replace("NAMES", ", ".join(f"'{name}'" for name in FIELDS))


class RedisProfileStore(ProfileStore):
    """Counts shared through Redis by every process using the same ``redis_url`` and ``prefix``.

    One hash per model, ``{<prefix>}:model:<name>``, with the decayed sums (fields named as
    :class:`Counts`' scalars, then ``lat00`` .. ``lat43`` for the latency histogram's buckets) and
    ``t``, the Redis time they were decayed to; each write resets a TTL of ``TTL_HALF_LIVES``
    half-lives. ``{<prefix>}:snapshot`` marks a Postgres snapshot taken in the last period (see
    :meth:`claim_snapshot`). Raises BrokerError when Redis fails, ConfigError for a bad URL.
    """

    def __init__(self, redis_url: str, half_life_s: float, prefix: str = "batchroute:profile",
                 socket_timeout_s: float = 2.0) -> None:
        super().__init__(half_life_s)
        import redis

        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(f"profile prefix must be non-empty and free of braces, got {prefix!r}")
        self.prefix = prefix
        try:
            self._client = redis.Redis.from_url(redis_url, socket_timeout=socket_timeout_s,
                                                socket_connect_timeout=socket_timeout_s)
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL for the profiler: {exc}") from exc
        self._script = self._client.register_script(_RECORD_LUA)
        self._ttl_ms = math.ceil(half_life_s * TTL_HALF_LIVES * 1000)

    def key(self, model: str) -> str:
        """The Redis hash of ``model``, e.g. ``{batchroute:profile}:model:sim-gpt-4``."""
        return f"{{{self.prefix}}}:model:{model}"

    def record(self, batch: Mapping[str, Counts]) -> None:
        if not batch:
            return
        models = list(batch)
        args: list[Any] = [repr(float(self.half_life_s)), self._ttl_ms]
        for m in models:
            args += [repr(float(v)) for v in batch[m].values()]
        self._call(lambda: self._script(keys=[self.key(m) for m in models], args=args))

    def read(self, models: Sequence[str]) -> dict[str, Counts]:
        def go() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            pipe.time()
            for m in models:
                pipe.hmget(self.key(m), ["t", *FIELDS])
            return list(pipe.execute())

        res = self._call(go)
        sec, usec = res[0]
        now = float(sec) + float(usec) / 1e6
        out: dict[str, Counts] = {}
        for m, row in zip(models, res[1:], strict=True):
            if row[0] is None:
                out[m] = Counts()
                continue
            c = Counts.from_values(float(v) if v is not None else 0.0 for v in row[1:])
            out[m] = c.scaled(decay_factor(now - float(row[0]), self.half_life_s))
        return out

    def claim_snapshot(self, period_s: float) -> bool:
        """Yes to the first process asking in each ``period_s``: ``SET NX PX`` on ``{<prefix>}:snapshot``."""
        key = f"{{{self.prefix}}}:snapshot"
        token = self.source + f":{socket.gethostname()}:{os.getpid()}"
        ttl_ms = max(1, math.ceil(period_s * 1000))
        return bool(self._call(lambda: self._client.set(key, token, nx=True, px=ttl_ms)))

    @property
    def source(self) -> str:
        """``redis:<prefix>``: every worker's figures, shared."""
        return f"redis:{self.prefix}"

    def close(self) -> None:
        self._client.close()

    def _call(self, fn: Callable[[], Any]) -> Any:
        from redis.exceptions import RedisError

        try:
            return fn()
        except RedisError as exc:
            raise BrokerError(f"profiler: Redis failed: {exc}") from exc


def _redis_store(settings: Settings) -> ProfileStore:
    url = settings.effective_redis_url
    if not url:
        raise ConfigError("BATCHROUTE_PROFILE_BACKEND=redis needs BATCHROUTE_REDIS_URL or a Redis broker")
    return RedisProfileStore(url, settings.profile_half_life_s, prefix=settings.profile_prefix)


def _memory_store(settings: Settings) -> ProfileStore:
    return MemoryProfileStore(settings.profile_half_life_s)


# Backend name -> factory (``BATCHROUTE_PROFILE_BACKEND``; ``auto`` and ``off`` are resolved first).
STORES: dict[str, Callable[[Settings], ProfileStore]] = {"redis": _redis_store, "memory": _memory_store}


def backend_name(settings: Settings) -> str:
    """The backend in force: the setting, with ``auto`` resolved (``redis`` if Redis is configured)."""
    name = settings.profile_backend
    if name == "auto":
        return "redis" if settings.effective_redis_url else "memory"
    return name


def new_profile_store(settings: Settings) -> ProfileStore | None:
    """The store named by settings (None when profiling is off). Raises ConfigError if unusable."""
    name = backend_name(settings)
    if name == "off":
        return None
    return STORES[name](settings)
