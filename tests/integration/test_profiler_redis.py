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
from typing import Any

import pytest
import redis

from batchroute.profiler import (
    TTL_HALF_LIVES,
    Counts,
    MemoryProfileStore,
    ProfilePolicy,
    Profiler,
    RedisProfileStore,
)
from batchroute.profiler.stats import BUCKET_FIELDS, FIELDS
from tests.profiler_helpers import hist

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
    store.record({"a": Counts(ok=8, errors=4, latency_n=8, observed_ms=4_000, expected_ms=2_000,
                              latency_hist=hist((100.0, 6.0), (900.0, 2.0))),
                  "b": Counts(rate_limited=2)})
    now = store.read(["a", "b", "never"])
    assert now["never"] == Counts()
    assert now["a"].ok == pytest.approx(8, rel=0.02) and now["b"].rate_limited == pytest.approx(2, rel=0.02)
    # Decay keeps every ratio: the latency ratio and error rate are exact whatever the age.
    assert now["a"].observed_ms / now["a"].expected_ms == pytest.approx(2.0, rel=1e-12)
    assert now["a"].errors / now["a"].ok == pytest.approx(0.5, rel=1e-12)
    # ...and so are the histogram's shape and its percentiles.
    assert now["a"].latency_hist[9] / now["a"].ok == pytest.approx(0.75, rel=1e-12)
    assert now["a"].latency_hist[18] / now["a"].ok == pytest.approx(0.25, rel=1e-12)
    assert now["a"].percentile_ms(0.5) == pytest.approx(Counts(latency_hist=hist((100.0, 6.0), (900.0, 2.0)))
                                                        .percentile_ms(0.5), rel=1e-9)
    client = redis.Redis.from_url(redis_url)
    try:
        ttl_ms = client.pttl(store.key("a"))
        assert 0 < ttl_ms <= TTL_HALF_LIVES * 1000
    finally:
        client.close()
    time.sleep(1.0)
    later = store.read(["a"])["a"]
    assert later.ok / now["a"].ok == pytest.approx(0.5, abs=0.08)  # one half-life later (Redis clock)
    assert later.hist_n == pytest.approx(later.ok, rel=1e-12)  # the histogram decays with the counts
    # A record decays the stored sums to now before adding.
    store.record({"a": Counts(ok=1)})
    after = store.read(["a"])["a"]
    assert after.ok == pytest.approx(later.ok + 1, rel=0.02)
    assert after.errors == pytest.approx(later.errors, rel=0.02)
    assert after.hist_n == pytest.approx(later.hist_n, rel=0.02)  # the buckets were decayed before adding


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


def test_lua_histogram_matches_the_memory_store(redis_url: str, prefix: str) -> None:
    """The same observations, flushed in the same batches, give the same histogram in Redis and in memory."""
    redis_store = RedisProfileStore(redis_url, half_life_s=1e9, prefix=prefix)
    memory_store = MemoryProfileStore(half_life_s=1e9)
    calls: list[int] = []
    script = redis_store._script

    def counted(**kw: Any) -> Any:
        calls.append(len(kw["keys"]))
        return script(**kw)

    redis_store._script = counted  # type: ignore[assignment]
    worker = Profiler(redis_store, POLICY, flush_s=0.05)
    local = Profiler(memory_store, POLICY)
    latencies = [0.4, 3.0, 10.0, 12.99, 13.0, 95.0, 240.0, 999.9, 1000.0, 4_321.0, 75_000.0, 610_409.0, 2e6]

    async def flushes() -> None:
        for rnd in range(3):  # three flushes, each one script call for both models
            for i, ms in enumerate(latencies * (rnd + 1)):
                for prof in (worker, local):
                    prof.observe("m", "ok", ms, 2 * ms)
                    if i % 5 == 0:
                        prof.observe("other", "ok", ms * 1.5, ms)
                        prof.observe("other", "timeout")
            await asyncio.sleep(0.3)

    asyncio.run(flushes())
    assert calls == [2, 2, 2]
    got = redis_store.read(["m", "other"])
    want = memory_store.read(["m", "other"])
    for model in ("m", "other"):
        g, w = got[model], want[model]
        assert g.latency_hist == pytest.approx(w.latency_hist, rel=1e-9, abs=1e-12), model
        assert g.values() == pytest.approx(w.values(), rel=1e-9, abs=1e-12), model
        for q in (0.5, 0.95, 0.99):
            assert g.percentile_ms(q) == pytest.approx(w.percentile_ms(q), rel=1e-9)
    # 13 latencies x (1 + 2 + 3) rounds, bucket by bucket.
    assert round(got["m"].hist_n, 6) == 78.0
    assert {i: round(v, 6) for i, v in enumerate(got["m"].latency_hist) if v} == {
        0: 12.0, 1: 12.0, 2: 6.0, 9: 6.0, 13: 6.0, 18: 12.0, 24: 6.0, 35: 6.0, 43: 12.0}
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:  # one hash field per bucket, beside the scalar sums
        stored = set(client.hkeys(redis_store.key("m")))
        assert stored == {"t", *FIELDS} and set(BUCKET_FIELDS) <= stored
        assert float(client.hget(redis_store.key("m"), "lat43") or 0) == pytest.approx(12.0, rel=1e-9)
    finally:
        client.close()


def test_one_process_per_period_claims_the_snapshot(redis_url: str, prefix: str) -> None:
    a = RedisProfileStore(redis_url, half_life_s=60.0, prefix=prefix)
    b = RedisProfileStore(redis_url, half_life_s=60.0, prefix=prefix)
    assert a.source == b.source == f"redis:{prefix}"
    assert a.claim_snapshot(0.5) is True
    assert b.claim_snapshot(0.5) is False and a.claim_snapshot(0.5) is False
    time.sleep(0.6)
    assert b.claim_snapshot(0.5) is True
    down = RedisProfileStore("redis://127.0.0.1:1/0", half_life_s=60.0, socket_timeout_s=0.5)
    from batchroute.errors import BrokerError

    with pytest.raises(BrokerError):
        down.claim_snapshot(1.0)


def test_lua_histogram_decays_like_the_memory_store(redis_url: str, prefix: str) -> None:
    """With decay between flushes: the memory store on Redis' clock ends with the same histogram."""
    client = redis.Redis.from_url(redis_url)

    def redis_clock() -> float:
        sec, usec = client.time()
        return float(sec) + float(usec) / 1e6

    redis_store = RedisProfileStore(redis_url, half_life_s=0.5, prefix=prefix)
    memory_store = MemoryProfileStore(half_life_s=0.5, clock=redis_clock)
    try:
        for batch in ({"m": Counts(ok=40, latency_hist=hist((100.0, 40.0)))},
                      {"m": Counts(ok=40, latency_hist=hist((1000.0, 40.0)))},
                      {"m": Counts(ok=20, latency_hist=hist((100.0, 10.0), (30_000.0, 10.0)))}):
            redis_store.record(batch)
            memory_store.record(batch)
            time.sleep(0.25)
        got, want = redis_store.read(["m"])["m"], memory_store.read(["m"])["m"]
    finally:
        client.close()
    # Both decayed the 100 ms samples by ~2 half-lives before the last flush (a few ms of skew).
    assert got.latency_hist[9] / got.ok == pytest.approx(want.latency_hist[9] / want.ok, rel=0.02)
    assert got.latency_hist == pytest.approx(want.latency_hist, rel=0.03, abs=1e-9)
    assert got.hist_n == pytest.approx(got.ok, rel=1e-12)
    assert got.percentile_ms(0.5) == pytest.approx(want.percentile_ms(0.5), rel=0.02)
