"""The per-process runtime: one event loop thread, one aiohttp session, one ledger writer.

Provider calls run as coroutines on a single background event loop so one worker process keeps
hundreds of calls in flight; Celery threads (or the CLI) hand coroutines to it with :meth:`Runtime.run`.
Everything is created lazily and once per process (a forked child builds its own).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from batchroute.breaker import CircuitBreaker
from batchroute.db import get_engine
from batchroute.settings import get_settings
from batchroute.writer import GroupCommitWriter

if TYPE_CHECKING:
    import aiohttp

    from batchroute.ratelimit import RateLimiter
    from batchroute.simprovider import SimServer

T = TypeVar("T")


class Runtime:
    """Process-wide async machinery. Get it with :func:`get_runtime`."""

    def __init__(self) -> None:
        self.settings = get_settings()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="batchroute-loop", daemon=True)
        self._thread.start()
        self.writer = GroupCommitWriter(get_engine())
        self.breaker = CircuitBreaker()
        self._session: aiohttp.ClientSession | None = None
        self._limiter: RateLimiter | None = None
        self._sim: SimServer | None = None
        self._lock = asyncio.Lock()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the runtime loop from any thread; returns a concurrent Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coro`` on the runtime loop and wait for it (never call from the loop thread)."""
        return self.submit(coro).result(timeout_s)

    async def session(self) -> aiohttp.ClientSession:
        """The shared aiohttp session (created on first use, on the loop)."""
        if self._session is None:
            from batchroute.providers import new_session

            self._session = new_session()
        return self._session

    async def limiter(self) -> RateLimiter:
        """Shared Redis limits when Redis is configured, else in-process limits."""
        if self._limiter is None:
            self._limiter = new_limiter(self.settings.effective_redis_url)
        return self._limiter

    async def sim_url(self) -> str:
        """The simulated provider's address: BATCHROUTE_SIM_URL, or one started in this process."""
        if self.settings.sim_url:
            return self.settings.sim_url
        async with self._lock:
            if self._sim is None:
                from batchroute.registry import get_registry
                from batchroute.simprovider import SimConfig, start_sim_server

                self._sim = await start_sim_server(
                    get_registry(), SimConfig(time_scale=self.settings.sim_time_scale))
            return self._sim.url

    def close(self) -> None:
        """Flush the writer and stop the loop (tests and clean CLI exits)."""
        async def _shutdown() -> None:
            if self._session is not None:
                await self._session.close()
            if self._sim is not None:
                await self._sim.close()

        try:
            self.run(_shutdown(), timeout_s=10)
        finally:
            self.writer.close()
            self.loop.call_soon_threadsafe(self.loop.stop)


# The provider stage paces calls strictly (a bucket of 0.1 s of the rate) instead of allowing a
# second's burst: a provider whose minute budget is already used up (another client, our own last
# run) refills only at the rate, answers any burst above it with 429s, and each 429 halves our
# rate (AIMD) for tens of seconds. Pacing loses nothing in steady state.
LIMITER_BURST_S = 0.1
# After a 429 halves the rate, win it back in ~10 s rather than the library default's ~25 s: one
# 429 at the edge of a provider's budget should not cost a batch a quarter of a minute's throughput.
LIMITER_INCREASE_PER_S = 0.05


def new_limiter(redis_url: str | None, prefix: str = "batchroute:rl") -> RateLimiter:
    """The rate limiter the provider stage uses: shared through Redis at ``redis_url``, else in-process."""
    from batchroute.ratelimit import AIMD, InMemoryRateLimiter, RedisRateLimiter

    aimd = AIMD(increase_per_s=LIMITER_INCREASE_PER_S)
    if redis_url:
        return RedisRateLimiter(redis_url, prefix=prefix, burst_s=LIMITER_BURST_S, aimd=aimd)
    return InMemoryRateLimiter(burst_s=LIMITER_BURST_S, aimd=aimd)


_runtime: Runtime | None = None
_runtime_pid: int | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """This process's runtime (built on first use; rebuilt in a forked child)."""
    global _runtime, _runtime_pid
    with _runtime_lock:
        if _runtime is None or _runtime_pid != os.getpid():
            _runtime = Runtime()
            _runtime_pid = os.getpid()
        return _runtime


def reset_runtime() -> None:
    """Close and forget this process's runtime (tests that change settings)."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None and _runtime_pid == os.getpid():
            _runtime.close()
        _runtime = None


@contextmanager
def settings_override(env: Mapping[str, str]) -> Iterator[None]:
    """Run with these ``BATCHROUTE_*`` variables set (an empty value unsets one), then restore them.

    Settings, the registry, this process's runtime and its dispatcher are rebuilt on entry and on
    exit, so the code inside sees only the overridden configuration (demo, benchmarks).
    """
    from batchroute.dispatch import reset_dispatcher
    from batchroute.registry import _cached
    from batchroute.settings import get_settings

    def rebuild() -> None:
        get_settings.cache_clear()
        _cached.cache_clear()
        reset_runtime()
        reset_dispatcher()

    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v:
            os.environ[k] = v
        else:
            os.environ.pop(k, None)
    rebuild()
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old
        rebuild()
