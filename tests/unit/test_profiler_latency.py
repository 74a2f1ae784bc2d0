"""The profiler's latency histogram and percentiles, and its periodic database snapshot (no services)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import pytest

from batchroute.errors import BrokerError, StorageError
from batchroute.profiler import (
    EMPTY_HIST,
    LATENCY_BUCKET_RATIO,
    LATENCY_BUCKETS,
    LATENCY_EDGES_MS,
    Counts,
    MemoryProfileStore,
    ProfilePolicy,
    Profiler,
    ProfileStore,
    attempt_counts,
    bucket_bounds,
    bucket_index,
    latency_percentile,
    latency_sample,
    live_model,
)
from batchroute.profiler.snapshots import history_since, parse_since, snapshot_rows, snapshot_to_db
from batchroute.profiler.stats import BUCKET_FIELDS, FIELDS, LATENCY_MAX_MS, SCALAR_FIELDS
from tests.profiler_helpers import FakeClock, hist

POLICY = ProfilePolicy(min_samples=20, min_calls=20, unhealthy_error_rate=0.5)
E = LATENCY_EDGES_MS
R = LATENCY_BUCKET_RATIO


# -- buckets ----------------------------------------------------------------------------------------


def test_bucket_layout() -> None:
    assert LATENCY_BUCKETS == 44 and len(E) == 43 and R == 1.3
    assert [round(e, 3) for e in E[:10]] == [10.0, 13.0, 16.9, 21.97, 28.561, 37.129, 48.268, 62.749, 81.573,
                                             106.045]
    assert round(E[-1], 3) == 610408.815  # ~10.2 minutes
    assert all(b / a == pytest.approx(1.3, rel=1e-12) for a, b in itertools.pairwise(E))
    assert bucket_bounds(0) == (0.0, 10.0)
    assert bucket_bounds(9) == (E[8], E[9])
    assert bucket_bounds(43) == (E[42], None)
    for bad in (-1, 44):
        with pytest.raises(ValueError, match="bucket index"):
            bucket_bounds(bad)


def test_bucket_index() -> None:
    assert [bucket_index(ms) for ms in (0.0, 5.0, 9.999, 10.0, 12.999, 13.0, 100.0, 1000.0, 5000.0)] == \
        [0, 0, 0, 1, 1, 2, 9, 18, 24]
    assert bucket_index(E[-1]) == 43 and bucket_index(3_600_000.0) == 43 and bucket_index(math.inf) == 43
    # Each edge opens its bucket; the float just below it is still in the previous one.
    for i, edge in enumerate(E):
        assert bucket_index(edge) == i + 1
        assert bucket_index(math.nextafter(edge, 0.0)) == i
        lo, hi = bucket_bounds(i + 1)
        assert lo == edge and (hi is None or lo <= (lo + hi) / 2 < hi)
    for bad in (-0.5, math.nan):
        with pytest.raises(ValueError, match="latency must be >= 0"):
            bucket_index(bad)


# -- percentiles ------------------------------------------------------------------------------------


def test_percentiles_of_one_bucket_interpolate_geometrically() -> None:
    h = hist((100.0, 100.0))  # bucket 9: [81.573, 106.045)
    assert latency_percentile(h, 0.0) == E[8]
    assert latency_percentile(h, 0.5) == E[8] * R ** 0.5
    assert round(latency_percentile(h, 0.5) or 0, 3) == 93.008  # the bucket's geometric middle: 7 % off 100
    assert round(latency_percentile(h, 0.95) or 0, 3) == 104.663
    assert latency_percentile(h, 1.0) == pytest.approx(E[9], rel=1e-12)
    # Below 10 ms: linear in [0, 10); from ~610 s on: the last edge (a lower bound).
    assert latency_percentile(hist((5.0, 20.0)), 0.5) == 5.0
    assert latency_percentile(hist((5.0, 20.0)), 0.95) == 9.5
    assert latency_percentile(hist((1_200_000.0, 10.0)), 0.5) == LATENCY_MAX_MS
    assert latency_percentile(EMPTY_HIST, 0.5) is None


def test_percentiles_of_a_mix_pick_the_right_bucket() -> None:
    h = hist((100.0, 50.0), (1000.0, 45.0), (5000.0, 5.0))
    # p50: the 50th unit of weight is the last of bucket 9 -> its top edge.
    assert latency_percentile(h, 0.5) == pytest.approx(E[9], rel=1e-12)
    assert round(latency_percentile(h, 0.5) or 0, 3) == 106.045
    # p95: the last of bucket 18 [865.0, 1124.6); p99: 4/5 of the way (geometrically) through bucket 24.
    assert latency_percentile(h, 0.95) == E[17] * R
    assert latency_percentile(h, 0.99) == E[23] * R ** 0.8
    assert [round(latency_percentile(h, q) or 0, 3) for q in (0.95, 0.99)] == [1124.554, 5150.528]


def test_percentiles_of_100_known_latencies_are_within_the_documented_error() -> None:
    latencies = [100.0 + 10 * i for i in range(100)]  # 100, 110, ..., 1090 ms
    h = hist(*((ms, 1.0) for ms in latencies))
    assert {i: w for i, w in enumerate(h) if w} == {9: 1, 10: 3, 11: 4, 12: 6, 13: 7, 14: 9, 15: 12, 16: 15, 17: 20,
                                                    18: 23}
    expected = {0.5: 588.735, 0.95: 1062.209, 0.99: 1111.799}
    for q, true in ((0.5, 590.0), (0.95, 1040.0), (0.99, 1080.0)):  # the 50th, 95th, 99th smallest
        est = latency_percentile(h, q)
        assert est is not None and round(est, 3) == expected[q]
        assert bucket_index(est) == bucket_index(true)  # same bucket as the true quantile...
        assert 1 / R <= est / true <= R  # ...hence within a factor 1.3 (documented bound)
    assert abs(latency_percentile(h, 0.5) / 590.0 - 1) < 0.003  # type: ignore[operator]


def test_percentile_rejects_bad_input() -> None:
    for q in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="quantile"):
            latency_percentile(EMPTY_HIST, q)
    with pytest.raises(ValueError, match="44 buckets"):
        latency_percentile((1.0, 2.0), 0.5)


# -- counts with a histogram ------------------------------------------------------------------------


def test_attempts_add_one_sample_to_their_bucket() -> None:
    assert attempt_counts("ok", 100.0, 200.0).latency_hist == hist((100.0, 1.0))
    assert attempt_counts("ok", 0.5, 0.0).latency_hist == hist((0.5, 1.0))  # bucket 0
    for c in (attempt_counts("ok"), attempt_counts("ok", math.nan, 1.0), attempt_counts("error"),
              attempt_counts("timeout"), attempt_counts("rate_limited")):
        assert c.latency_hist is EMPTY_HIST
    assert latency_sample(100.0) == hist((100.0, 1.0)) and sum(latency_sample(100.0)) == 1.0


def test_counts_add_scale_and_round_trip_the_histogram() -> None:
    a = Counts(ok=2, latency_hist=hist((100.0, 2.0)))
    b = Counts(ok=1, errors=1, latency_hist=hist((100.0, 1.0), (3000.0, 4.0)))
    total = a + b
    assert total == Counts(ok=3, errors=1, latency_hist=hist((100.0, 3.0), (3000.0, 4.0)))
    assert total.hist_n == 7.0
    assert total.scaled(0.5) == Counts(ok=1.5, errors=0.5, latency_hist=hist((100.0, 1.5), (3000.0, 2.0)))
    assert Counts(ok=1) + Counts(errors=1) == Counts(ok=1, errors=1)
    assert len(FIELDS) == len(SCALAR_FIELDS) + len(BUCKET_FIELDS) == 7 + 44
    assert BUCKET_FIELDS[0] == "lat00" and BUCKET_FIELDS[-1] == "lat43"
    assert Counts.from_values(total.values()) == total
    assert total.values()[:7] == (3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0) and total.values()[7 + 9] == 3.0
    with pytest.raises(ValueError, match="44 buckets"):
        Counts(latency_hist=(1.0,))
    with pytest.raises(ValueError, match="expected 51 values"):
        Counts.from_values([1.0] * 7)
    assert repr(a) == ("Counts(ok=2, errors=0.0, timeouts=0.0, rate_limited=0.0, latency_n=0.0, observed_ms=0.0, "
                       "expected_ms=0.0, latency_hist={9: 2.0})")


def test_memory_store_decays_the_histogram_with_the_counts() -> None:
    clock = FakeClock()
    store = MemoryProfileStore(half_life_s=10.0, clock=clock)
    store.record({"m": Counts(ok=80, latency_hist=hist((100.0, 40.0), (1000.0, 40.0)))})
    clock.t += 10.0
    store.record({"m": Counts(ok=20, latency_hist=hist((1000.0, 20.0)))})
    now = store.read(["m"])["m"]
    assert now == Counts(ok=60, latency_hist=hist((100.0, 20.0), (1000.0, 40.0)))
    # The newer, slower samples weigh more: the median moved into the 1000 ms bucket.
    assert now.percentile_ms(0.5) == E[17] * R ** 0.25
    clock.t += 20.0
    later = store.read(["m"])["m"]
    assert later == Counts(ok=15, latency_hist=hist((100.0, 5.0), (1000.0, 10.0)))
    assert later.percentile_ms(0.5) == pytest.approx(now.percentile_ms(0.5), rel=1e-12)  # decay keeps the shape


def test_live_percentiles_need_min_samples_and_leave_the_ratio_alone() -> None:
    few = live_model(Counts(ok=19, latency_hist=hist((100.0, 19.0))), POLICY)
    assert few.p50_ms is None and few.p95_ms is None and few.p99_ms is None and few.hist_samples == 19.0
    enough = live_model(Counts(ok=20, latency_hist=hist((100.0, 20.0))), POLICY)
    assert (enough.p50_ms, enough.p95_ms, enough.p99_ms) == (93.008, 104.663, 105.767)
    # Percentiles are reported, not routed on: no ratio samples, so the ratio stays the registry's.
    assert enough.latency_ratio == 1.0 and enough.observed_ratio is None and enough.latency_factor == 1.0
    assert enough.to_dict()["p95_ms"] == 104.663


# -- snapshot rows (pure) -----------------------------------------------------------------------------

T1 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def test_snapshot_rows_hold_exact_figures() -> None:
    counts = {
        "a": Counts(ok=30, errors=10, rate_limited=10, latency_n=30, observed_ms=60_000, expected_ms=30_000,
                    latency_hist=hist((100.0, 30.0))),
        "sick": Counts(ok=10, errors=25, timeouts=5),
        "idle": Counts(),
        "faded": Counts(ok=0.004, errors=0.004),  # below 0.01 attempts: no row
    }
    rows = snapshot_rows(counts, POLICY, T1, "memory:test")
    got = [r.model_dump(exclude={"id"}) for r in rows]
    assert got == [
        {"taken_at": T1, "model": "a", "source": "memory:test", "ok": 30.0, "errors": 10.0, "timeouts": 0.0,
         "rate_limited": 10.0, "latency_samples": 30.0, "error_rate": 0.25, "rate_429": 0.2, "latency_ratio": 2.0,
         "p50_ms": 93.008, "p95_ms": 104.663, "p99_ms": 105.767, "unhealthy": False, "reason": None},
        {"taken_at": T1, "model": "sick", "source": "memory:test", "ok": 10.0, "errors": 25.0, "timeouts": 5.0,
         "rate_limited": 0.0, "latency_samples": 0.0, "error_rate": 0.75, "rate_429": 0.0, "latency_ratio": None,
         "p50_ms": None, "p95_ms": None, "p99_ms": None, "unhealthy": True,
         "reason": "live error rate 0.75 over 40 calls"},
    ]
    with pytest.raises(ValueError, match="timezone-aware"):
        snapshot_rows(counts, POLICY, datetime(2026, 11, 28), "x")


def test_snapshot_to_an_unreachable_database_raises_storage_error() -> None:
    store = MemoryProfileStore(60.0)
    store.record({"a": Counts(ok=1)})
    with pytest.raises(StorageError):
        snapshot_to_db(store, ["a"], T1, policy=POLICY, url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    assert snapshot_to_db(store, ["never-seen"], T1, policy=POLICY, url="sqlite:////nonexistent/x.db") == 0
    assert snapshot_to_db(Profiler(None, POLICY), ["a"], T1) == 0  # profiling off: nothing to write


def test_history_window_parsing() -> None:
    assert parse_since("2026-11-28") == datetime(2026, 11, 28, tzinfo=UTC)
    assert parse_since("2026-11-28T09:30:00Z") == datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
    assert parse_since(" 2026-11-28T10:30+01:00 ") == datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
    assert history_since(hours=6, now=T1) == datetime(2026, 11, 28, 4, 0, tzinfo=UTC)
    assert history_since(now=T1) == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)  # default: 24 h
    from batchroute.errors import InputError

    for bad in ("yesterday", "2026-13-01", "28/11/2026", ""):
        with pytest.raises(InputError, match="expected ISO 8601") as info:
            parse_since(bad)
        assert info.value.field == "since"
    with pytest.raises(InputError, match="not both"):
        history_since("2026-11-28", 3)
    with pytest.raises(InputError, match="--hours must be > 0"):
        history_since(hours=0)


# -- the periodic snapshot hook ---------------------------------------------------------------------


class ClaimingStore(MemoryProfileStore):
    """An in-process store whose snapshot claim a test controls (as another process holding it would)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(1e9, clock=clock)
        self.claims = 0
        self.grant = True

    def claim_snapshot(self, period_s: float) -> bool:
        self.claims += 1
        return self.grant


def test_flush_snapshots_at_most_every_snapshot_s() -> None:
    clock = FakeClock()
    taken: list[float] = []

    def sink(prof: Profiler) -> int:
        taken.append(clock.t)
        return 1

    prof = Profiler(MemoryProfileStore(1e9, clock=clock), POLICY, clock=clock, snapshot_s=60.0, snapshot_sink=sink)
    prof.observe("a", "ok", 100.0, 100.0)
    clock.t += 59.9
    prof.observe("a", "ok", 100.0, 100.0)
    assert taken == []  # due 60 s after the profiler started
    clock.t += 0.1
    prof.observe("a", "error")
    prof.observe("a", "error")
    assert taken == [1060.0]
    clock.t += 59.0
    prof.observe("a", "error")
    clock.t += 1.0
    prof.observe("a", "error")
    assert taken == [1060.0, 1120.0]
    assert round(prof.counts(["a"])["a"].calls, 6) == 6.0  # every attempt recorded as usual
    off = Profiler(MemoryProfileStore(1e9, clock=clock), POLICY, clock=clock, snapshot_s=0.0, snapshot_sink=sink)
    clock.t += 1e6
    off.observe("a", "ok", 1.0, 1.0)
    assert taken == [1060.0, 1120.0]


def test_a_failing_snapshot_never_fails_a_call(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    calls: list[float] = []
    errors: list[Exception] = [StorageError("database error: connection refused"), BrokerError("down"),
                               RuntimeError("a bug")]

    def sink(prof: Profiler) -> int:
        calls.append(clock.t)
        raise errors[len(calls) - 1]

    prof = Profiler(MemoryProfileStore(1e9, clock=clock), POLICY, clock=clock, snapshot_s=10.0, snapshot_sink=sink)
    with caplog.at_level(logging.WARNING, logger="batchroute.profiler"):
        for _ in range(3):
            clock.t += 10.0
            prof.observe("a", "ok", 100.0, 100.0)
            prof.observe("a", "ok", 100.0, 100.0)  # not retried at once after a failure
    assert calls == [1010.0, 1020.0, 1030.0]
    assert round(prof.counts(["a"])["a"].ok, 6) == 6.0
    messages = [r.getMessage() for r in caplog.records]
    assert "profiler: snapshot not written: database error: connection refused" in messages
    assert "profiler: snapshot not written: down" in messages
    assert "profiler: snapshot failed" in messages


def test_a_period_claimed_by_another_process_is_asked_again_within_the_period() -> None:
    clock = FakeClock()
    store = ClaimingStore(clock)
    taken: list[float] = []
    prof = Profiler(store, POLICY, clock=clock, snapshot_s=60.0, snapshot_sink=lambda p: taken.append(clock.t))
    store.grant = False
    clock.t += 60.0
    prof.observe("a", "error")
    assert (store.claims, taken) == (1, [])
    clock.t += 14.0
    prof.observe("a", "error")
    assert store.claims == 1  # next ask after snapshot_s / 4
    clock.t += 1.0
    store.grant = True
    prof.observe("a", "error")
    assert (store.claims, taken) == (2, [1075.0])


def test_on_an_event_loop_the_snapshot_is_written_off_the_loop() -> None:
    threads: list[int] = []
    done = threading.Event()

    def sink(prof: Profiler) -> int:
        threads.append(threading.get_ident())
        done.set()
        return 0

    prof = Profiler(MemoryProfileStore(60.0), POLICY, snapshot_s=0.01, snapshot_sink=sink)

    async def calls() -> int:
        await asyncio.sleep(0.02)
        prof.observe("a", "ok", 100.0, 100.0)  # memory store: flushed at once, on the loop
        assert not done.is_set() or threads[0] != threading.get_ident()
        await asyncio.to_thread(done.wait, 5.0)
        return threading.get_ident()

    loop_thread = asyncio.run(calls())
    assert len(threads) == 1 and threads[0] != loop_thread


class ReadFailingStore(ProfileStore):
    local = True

    def record(self, batch: Mapping[str, Counts]) -> None:
        pass

    def read(self, models: Sequence[str]) -> dict[str, Counts]:
        raise BrokerError("profiler: Redis failed: timeout")


def test_a_store_that_cannot_be_read_skips_the_snapshot(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    prof = Profiler(ReadFailingStore(60.0), POLICY, clock=clock, snapshot_s=1.0,
                    snapshot_sink=lambda p: snapshot_to_db(p, ["a"], url="sqlite:////nonexistent/never.db"))
    clock.t += 1.0
    with caplog.at_level(logging.WARNING, logger="batchroute.profiler"):
        prof.observe("a", "ok", 1.0, 1.0)
    assert [r.getMessage() for r in caplog.records] == [
        "profiler: snapshot not written: profiler: Redis failed: timeout"]
