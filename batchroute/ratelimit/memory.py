"""The in-process rate limiter: the embedded default and the reference for tests.

It shares nothing between processes; use :class:`~batchroute.ratelimit.redis.RedisRateLimiter`
when several workers call the same provider. Same semantics, same pure math::

    limiter = InMemoryRateLimiter()
    res = await limiter.acquire([LimitKey("model:m", rpm=600, tpm=100_000)], tokens=800)
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

from batchroute.ratelimit.aimd import AIMD
from batchroute.ratelimit.base import (
    Clock,
    KeyState,
    KeyStatus,
    LimitKey,
    RateLimiter,
    Sleep,
    plan_acquire,
    plan_feedback,
    plan_settle,
)

_EMPTY = KeyState()


class InMemoryRateLimiter(RateLimiter):
    """Rate limits kept in this process's memory; safe to share between threads and event loops.

    ``clock`` (seconds) and ``sleep`` are injectable so tests can drive time by hand; see
    :class:`~batchroute.ratelimit.base.RateLimiter` for the other arguments.
    """

    def __init__(self, *, burst_s: float = 1.0, aimd: AIMD | None = None, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep, wait_jitter_s: float = 0.0,
                 rng: random.Random | None = None) -> None:
        super().__init__(burst_s=burst_s, aimd=aimd, clock=clock, sleep=sleep,
                         wait_jitter_s=wait_jitter_s, rng=rng)
        self._states: dict[str, KeyState] = {}
        self._lock = threading.Lock()

    async def status(self, key_name: str) -> KeyStatus:
        """The key's current rate fraction and remaining block."""
        with self._lock:
            now = self._clock()
            st = self._states.get(key_name, _EMPTY)
            return KeyStatus(key_name, self.aimd.fraction(st.aimd, now), max(0.0, st.blocked_until - now))

    async def _try(self, keys: tuple[LimitKey, ...], tokens: int) -> tuple[float, float]:
        with self._lock:
            now = self._clock()
            plan = plan_acquire(keys, [self._states.get(k.name, _EMPTY) for k in keys], tokens, now,
                                burst_s=self.burst_s, aimd=self.aimd)
            if plan.granted:
                for key, st in zip(keys, plan.states, strict=True):
                    self._states[key.name] = st
            return plan.wait_s, now

    async def _charge_tokens(self, keys: tuple[LimitKey, ...], delta: int) -> None:
        with self._lock:
            now = self._clock()
            for key in keys:
                self._states[key.name] = plan_settle(key, self._states.get(key.name, _EMPTY), delta, now,
                                                     aimd=self.aimd)

    async def _feedback(self, key_name: str, *, decrease: bool, block_s: float | None) -> None:
        with self._lock:
            now = self._clock()
            self._states[key_name] = plan_feedback(self._states.get(key_name, _EMPTY), now, aimd=self.aimd,
                                                   decrease=decrease, block_s=block_s)
