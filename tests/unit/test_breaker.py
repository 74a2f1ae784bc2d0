"""batchroute.breaker: state transitions of the per-key circuit breaker, driven by a fake clock."""

from __future__ import annotations

import threading

import pytest

from batchroute.breaker import CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, **kw: float) -> CircuitBreaker:
    return CircuitBreaker(clock=clock, **kw)  # type: ignore[arg-type]


def test_opens_after_consecutive_failures(clock: FakeClock) -> None:
    b = make(clock)
    for _ in range(4):
        b.record_failure("m")
    assert b.state("m") == "closed" and b.allow("m")
    b.record_failure("m")
    assert b.state("m") == "open"
    assert not b.allow("m")


def test_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    b = make(clock)
    for _ in range(4):
        b.record_failure("m")
    b.record_success("m")
    for _ in range(4):
        b.record_failure("m")
    assert b.state("m") == "closed"


def test_open_becomes_half_open_after_open_s_and_a_probe_success_closes(clock: FakeClock) -> None:
    b = make(clock, open_s=15.0)
    for _ in range(5):
        b.record_failure("m")
    clock.now += 14.9
    assert b.state("m") == "open" and not b.allow("m")
    clock.now += 0.1
    assert b.state("m") == "half_open"
    assert b.allow("m")          # the one probe
    assert not b.allow("m")      # no second probe while the first is in flight
    b.record_success("m")
    assert b.state("m") == "closed"
    assert b.snapshot()["m"]["consecutive_failures"] == 0
    assert b.snapshot()["m"]["calls_in_window"] == 0
    # A fresh history: it takes the full threshold again to trip.
    for _ in range(4):
        b.record_failure("m")
    assert b.state("m") == "closed"


def test_half_open_failure_reopens_for_another_open_s(clock: FakeClock) -> None:
    b = make(clock, open_s=10.0)
    for _ in range(5):
        b.record_failure("m")
    clock.now += 10.0
    assert b.allow("m")
    b.record_failure("m")
    assert b.state("m") == "open"
    clock.now += 9.0
    assert not b.allow("m")
    clock.now += 1.0
    assert b.state("m") == "half_open"


def test_half_open_max_calls_limits_probes(clock: FakeClock) -> None:
    b = make(clock, open_s=1.0, half_open_max_calls=2)
    for _ in range(5):
        b.record_failure("m")
    clock.now += 1.0
    assert [b.allow("m") for _ in range(3)] == [True, True, False]


def test_a_probe_whose_outcome_is_never_recorded_is_handed_out_again(clock: FakeClock) -> None:
    b = make(clock, open_s=5.0)
    for _ in range(5):
        b.record_failure("m")
    clock.now += 5.0
    assert b.allow("m")
    clock.now += 4.0
    assert not b.allow("m")
    clock.now += 1.0
    assert b.allow("m")


def test_opens_on_error_rate_over_the_window(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=100, error_rate_threshold=0.5, min_calls=20, window_s=30.0)
    for _ in range(9):
        b.record_success("m")
        b.record_failure("m")
    b.record_success("m")           # 19 calls, 9 failures
    assert b.state("m") == "closed"
    b.record_failure("m")           # 20 calls, 10 failures: 50 %
    assert b.state("m") == "open"


def test_error_rate_needs_min_calls(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=100, min_calls=20)
    for _ in range(4):
        b.record_failure("m")
        b.record_success("m")
    assert b.state("m") == "closed"


def test_old_outcomes_leave_the_window(clock: FakeClock) -> None:
    b = make(clock, failure_threshold=100, min_calls=20, window_s=30.0)
    for _ in range(9):
        b.record_failure("m")
        b.record_success("m")      # 18 calls, 50 % errors, at t0
    clock.now += 30.0
    b.record_failure("m")
    b.record_failure("m")           # only these 2 are within the window
    assert b.state("m") == "closed"
    snap = b.snapshot()["m"]
    assert snap["calls_in_window"] == 2 and snap["failures_in_window"] == 2


def test_keys_are_independent(clock: FakeClock) -> None:
    b = make(clock)
    for _ in range(5):
        b.record_failure("model:a")
    assert b.state("model:a") == "open"
    assert b.state("model:b") == "closed" and b.allow("model:b")


def test_late_success_while_open_changes_nothing(clock: FakeClock) -> None:
    b = make(clock)
    for _ in range(5):
        b.record_failure("m")
    b.record_success("m")
    assert b.state("m") == "open"


def test_snapshot_and_reset(clock: FakeClock) -> None:
    b = make(clock, open_s=15.0)
    for _ in range(5):
        b.record_failure("m")
    clock.now += 5.0
    assert b.snapshot() == {"m": {"state": "open", "consecutive_failures": 5, "calls_in_window": 5,
                                  "failures_in_window": 5, "error_rate": 1.0, "retry_in_s": 10.0}}
    b.reset("m")
    assert b.state("m") == "closed"


@pytest.mark.parametrize("kw", [{"failure_threshold": 0}, {"error_rate_threshold": 0.0},
                                {"error_rate_threshold": 1.5}, {"window_s": 0.0}, {"open_s": -1.0},
                                {"min_calls": 0}, {"half_open_max_calls": 0}])
def test_invalid_settings_raise(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kw)  # type: ignore[arg-type]


def test_thread_safe_counting() -> None:
    b = CircuitBreaker(failure_threshold=10**9, min_calls=10**9, window_s=3600.0)
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for _ in range(2000):
            b.record_success("m")
            b.record_failure("m")
            b.allow("m")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = b.snapshot()["m"]
    assert snap["state"] == "closed"
    assert snap["calls_in_window"] == 8 * 4000 and snap["failures_in_window"] == 8 * 2000
