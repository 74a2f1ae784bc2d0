"""The Redis profile store against a real Redis (the session's test database, see tests/conftest.py).

Skipped when Redis is unreachable, unless CI=true, where that is a failure. Every test uses its own
key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from batchroute.profiler import TTL_HALF_LIVES, Counts, ProfilePolicy, Profiler, RedisProfileStore

pytestmark = pytest.mark.integration

POLICY = ProfilePolicy(min_samples=20, min_calls=20, unhealthy_error_rate=0.5)


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    p = f"batchroute:test-profile:{uuid.uuid4().hex}"
    yield p
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{{{p}}}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def test_record_read_decay_and_ttl(redis_url: str, prefix: str) -> None:
    store = RedisProfileStore(redis_url, half_life_s=1.0, prefix=prefix)
    store.record({"a": Counts(ok=8, errors=4, latency_n=8, observed_ms=4_000, expected_ms=2_000),
                  "b": Counts(rate_limited=2)})
    now = store.read(["a", "b", "never"])
    assert now["never"] == Counts()
    assert now["a"].ok == pytest.approx(8, rel=0.02) and now["b"].rate_limited == pytest.approx(2, rel=0.02)
    # Decay keeps every ratio: the latency ratio and error rate are exact whatever the age.
    assert now["a"].observed_ms / now["a"].expected_ms == pytest.approx(2.0, rel=1e-12)
    assert now["a"].errors / now["a"].ok == pytest.approx(0.5, rel=1e-12)
    client = redis.Redis.from_url(redis_url)
    try:
        ttl_ms = client.pttl(store.key("a"))
        assert 0 < ttl_ms <= TTL_HALF_LIVES * 1000
    finally:
        client.close()
    time.sleep(1.0)
    later = store.read(["a"])["a"]
    assert later.ok / now["a"].ok == pytest.approx(0.5, abs=0.08)  # one half-life later (Redis clock)
    # A record decays the stored sums to now before adding.
    store.record({"a": Counts(ok=1)})
    after = store.read(["a"])["a"]
    assert after.ok == pytest.approx(later.ok + 1, rel=0.02)
    assert after.errors == pytest.approx(later.errors, rel=0.02)


def test_concurrent_writers_lose_nothing(redis_url: str, prefix: str) -> None:
    # A half-life of ~30 years: no decay to speak of, so the sums must be exact.
    writers, each = 6, 150
    barrier = threading.Barrier(writers)

    def write() -> None:
        store = RedisProfileStore(redis_url, half_life_s=1e9, prefix=prefix)
        barrier.wait()
        for i in range(each):
            store.record({"a": Counts(ok=1, latency_n=1, observed_ms=2.0, expected_ms=1.0),
                          "b": Counts(errors=1) if i % 2 else Counts(timeouts=1)})
        store.close()

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = RedisProfileStore(redis_url, half_life_s=1e9, prefix=prefix).read(["a", "b"])
    n = writers * each
    assert got["a"].ok == pytest.approx(n, abs=1e-3) and got["a"].observed_ms == pytest.approx(2 * n, abs=1e-3)
    assert got["b"].errors + got["b"].timeouts == pytest.approx(n, abs=1e-3)


def test_one_workers_attempts_reach_another_processes_routing(redis_url: str, prefix: str) -> None:
    """A provider worker's observations, flushed from its loop, mark a model unhealthy for an analyzer."""
    worker = Profiler(RedisProfileStore(redis_url, half_life_s=1e9, prefix=prefix), POLICY, flush_s=0.05)
    analyzer = Profiler(RedisProfileStore(redis_url, half_life_s=1e9, prefix=prefix), POLICY, cache_s=60.0)
    assert analyzer.snapshot(["sick", "slow"])["sick"].unhealthy is None

    async def calls() -> None:
        for i in range(40):
            worker.observe("sick", "error" if i % 4 else "ok", 100.0, 100.0)
            worker.observe("slow", "ok", 500.0, 100.0)
        worker.observe("slow", "rate_limited")
        await asyncio.sleep(0.5)

    asyncio.run(calls())
    # Cached for cache_s: the analyzer sees the change once its snapshot is refreshed.
    assert analyzer.snapshot(["sick", "slow"])["sick"].unhealthy is None
    analyzer.invalidate()
    live = analyzer.snapshot(["sick", "slow"])
    assert live["sick"].unhealthy == "live error rate 0.75 over 40 calls"
    assert live["slow"].latency_ratio == 5.0 and live["slow"].unhealthy is None
    assert live["slow"].rate_limited_rate == round(1 / 41, 6)


def test_redis_down_never_fails_routing_or_calls() -> None:
    # Nothing listens on port 1: every read and write fails fast.
    prof = Profiler(RedisProfileStore("redis://127.0.0.1:1/0", half_life_s=60.0, socket_timeout_s=0.5), POLICY)
    assert prof.snapshot(["a"]) == {}
    prof.observe("a", "ok", 1.0, 1.0)  # outside a loop: written at once, the failure logged and dropped
    from batchroute.errors import BrokerError

    with pytest.raises(BrokerError, match="profiler: Redis failed"):
        prof.counts(["a"])
