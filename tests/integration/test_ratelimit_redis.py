"""RedisRateLimiter against a real Redis (127.0.0.1:6379 or BATCHROUTE_TEST_REDIS_URL).

Skipped when Redis is unreachable, unless CI=true, where that is a failure. Every test uses its
own key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

import pytest
import redis
from redis.exceptions import RedisError

from batchroute.ratelimit import AIMD, LimitKey, RedisRateLimiter

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("BATCHROUTE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Slow recovery so a fraction read a second later still shows the decrease exactly.
SLOW_AIMD = AIMD(increase_per_s=1e-6)


@pytest.fixture(scope="module")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} is unreachable in CI: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    p = f"batchroute:test:{uuid.uuid4().hex}"
    yield p
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{{{p}}}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- child processes (module level so spawn can import them) -------------------------------------


def _hammer(url: str, prefix: str, key: LimitKey, coroutines: int, duration_s: float,
            barrier: Barrier, out: Queue[list[float]]) -> None:
    async def main() -> list[float]:
        limiter = RedisRateLimiter(url, prefix)
        await limiter.status(key.name)                 # connect before the race starts
        barrier.wait()
        end = time.monotonic() + duration_s
        grants: list[float] = []

        async def caller() -> None:
            while (left := end - time.monotonic()) > 0:
                try:
                    res = await limiter.acquire([key], 1, timeout_s=left)
                except TimeoutError:
                    return
                grants.append(res.granted_at)

        await asyncio.gather(*(caller() for _ in range(coroutines)))
        await limiter.aclose()
        return grants

    out.put(asyncio.run(main()))


def _observe_penalty(url: str, prefix: str, key: LimitKey, out: Queue[tuple[float, float]]) -> None:
    async def main() -> tuple[float, float]:
        limiter = RedisRateLimiter(url, prefix, aimd=SLOW_AIMD)
        fraction = (await limiter.status(key.name)).fraction
        first = await limiter.try_acquire([key], 0)
        assert first.granted
        wait = (await limiter.try_acquire([key], 0)).wait_s
        await limiter.aclose()
        return fraction, wait

    out.put(asyncio.run(main()))


# -- tests ---------------------------------------------------------------------------------------


def test_four_processes_share_600_rpm(redis_url: str, prefix: str) -> None:
    key = LimitKey("model:shared", rpm=600)
    rate, burst, duration, procs = 10.0, 10.0, 4.0, 4
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    out: Queue[list[float]] = ctx.Queue()
    workers = [ctx.Process(target=_hammer, args=(redis_url, prefix, key, 50, duration, barrier, out))
               for _ in range(procs)]
    for w in workers:
        w.start()
    try:
        per_process = [out.get(timeout=30) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=10)
    grants = sorted(t for g in per_process for t in g)
    expected = rate * duration
    assert expected * 0.9 <= len(grants) <= expected + burst + 1, (len(grants), [len(g) for g in per_process])
    # GCRA's guarantee on every interval [g_i, g_j]: at most capacity + rate * length grants.
    for i in range(len(grants)):
        for j in range(i, len(grants)):
            assert j - i + 1 <= burst + rate * (grants[j] - grants[i]) + 1e-3, (i, j)
    assert sum(1 for g in per_process if g) >= 3     # every process got served, not just one


def test_burst_then_exact_pacing(prefix: str, redis_url: str) -> None:
    key = LimitKey("model:pace", rpm=600)

    async def go() -> None:
        limiter = RedisRateLimiter(redis_url, prefix)
        granted = [(await limiter.try_acquire([key], 0)).granted for _ in range(11)]
        assert granted == [True] * 10 + [False]
        wait = (await limiter.try_acquire([key], 0)).wait_s
        assert 0.08 <= wait <= 0.101
        await limiter.aclose()

    run(go())


def test_multi_key_all_or_nothing(prefix: str, redis_url: str) -> None:
    a, b = LimitKey("provider:a", rpm=60), LimitKey("model:b", tpm=600)

    async def go() -> None:
        limiter = RedisRateLimiter(redis_url, prefix)
        assert (await limiter.try_acquire([a], 0)).granted
        for keys in ([a, b], [b, a]):
            denied = await limiter.try_acquire(keys, 5)
            assert not denied.granted and 0.9 <= denied.wait_s <= 1.0
        assert (await limiter.try_acquire([b], 10)).granted      # b untouched by the denials
        assert not (await limiter.try_acquire([b], 5)).granted
        await limiter.aclose()

    run(go())


def test_settle_refunds_and_charges(prefix: str, redis_url: str) -> None:
    key = LimitKey("model:tok", tpm=600)                          # 10 tokens/s, capacity 10

    async def go() -> None:
        limiter = RedisRateLimiter(redis_url, prefix)
        res = await limiter.acquire([key], 10)
        assert not (await limiter.try_acquire([key], 8)).granted
        await limiter.settle(res, 2)
        await limiter.settle(res, 2)                              # idempotent
        assert (await limiter.try_acquire([key], 8)).granted
        res2 = await limiter.acquire([key], 0, timeout_s=1)
        await limiter.settle(res2, 20)                            # 20 unreserved tokens: debt
        wait = (await limiter.try_acquire([key], 1)).wait_s
        assert 2.0 <= wait <= 2.2
        await limiter.aclose()

    run(go())


def test_penalize_halves_rate_seen_by_another_process(prefix: str, redis_url: str) -> None:
    key = LimitKey("model:penalized", rpm=60)

    async def penalize() -> None:
        limiter = RedisRateLimiter(redis_url, prefix, aimd=SLOW_AIMD)
        await limiter.penalize(key.name, None)
        await limiter.penalize(key.name, None)                    # within cooldown: once
        await limiter.aclose()

    run(penalize())
    ctx = mp.get_context("spawn")
    out: Queue[tuple[float, float]] = ctx.Queue()
    child = ctx.Process(target=_observe_penalty, args=(redis_url, prefix, key, out))
    child.start()
    try:
        fraction, wait = out.get(timeout=20)
    finally:
        child.join(timeout=10)
    assert fraction == pytest.approx(0.5, abs=1e-3)
    assert 1.9 <= wait <= 2.0                                     # 30 rpm now: 2 s apart


def test_blocked_until_is_honoured(prefix: str, redis_url: str) -> None:
    key = LimitKey("provider:blocked", rpm=6000)
    other = LimitKey("model:headers", rpm=6000)

    async def go() -> None:
        limiter = RedisRateLimiter(redis_url, prefix)
        await limiter.penalize(key.name, 0.4)
        st = await limiter.status(key.name)
        assert 0.35 <= st.blocked_for_s <= 0.4 and st.fraction == pytest.approx(0.5, abs=0.01)
        start = time.monotonic()
        res = await limiter.acquire([key, other], 1)
        assert time.monotonic() - start >= 0.35 and res.waited_s >= 0.35

        await limiter.observe_headers(other.name, 0, 1000, 0.3, 10.0)
        attempt = await limiter.try_acquire([other], 1)
        assert not attempt.granted and 0.25 <= attempt.wait_s <= 0.3
        start = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await limiter.acquire([other], 1, timeout_s=0.1)
        assert time.monotonic() - start < 0.05                    # failed fast, no pointless wait
        await limiter.aclose()

    run(go())


def test_state_expires_when_idle(prefix: str, redis_url: str) -> None:
    key = LimitKey("model:ttl", rpm=60, tpm=600)

    async def go() -> None:
        limiter = RedisRateLimiter(redis_url, prefix, idle_ttl_s=5.0)
        await limiter.acquire([key], 10)
        client = redis.asyncio.Redis.from_url(redis_url)
        pttl = await client.pttl(limiter.redis_key(key.name))
        assert 5000 < pttl <= 6100                                # idle TTL + 1 s of pending state
        await limiter.penalize(key.name, None)
        pttl = await client.pttl(limiter.redis_key(key.name))
        assert pttl >= 5000 + 25_000 - 200                        # kept until the rate has recovered
        await client.aclose()
        await limiter.aclose()

    run(go())
