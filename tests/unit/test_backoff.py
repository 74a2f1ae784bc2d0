"""batchroute.backoff: jittered delays, retry-after handling, retryable statuses."""

from __future__ import annotations

import random

import pytest

from batchroute.backoff import full_jitter_delay_s, is_retryable_status, retry_delay_s


@pytest.mark.parametrize(("attempt", "ceiling"), [(0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (10_000, 30.0)])
def test_full_jitter_stays_within_min_of_cap_and_exponential(attempt: int, ceiling: float) -> None:
    rng = random.Random(7)
    delays = [full_jitter_delay_s(attempt, 0.5, 30.0, rng) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter spreads over the whole range, not just near the ceiling.
    assert min(delays) < 0.05 * ceiling
    assert max(delays) > 0.95 * ceiling


def test_full_jitter_is_uniform_draw_from_given_rng() -> None:
    assert full_jitter_delay_s(2, 0.5, 30.0, random.Random(42)) == random.Random(42).uniform(0.0, 2.0)


def test_retry_delay_without_retry_after_is_full_jitter() -> None:
    assert retry_delay_s(3, 0.5, 30.0, None, random.Random(1)) == full_jitter_delay_s(3, 0.5, 30.0, random.Random(1))


def test_retry_delay_honours_retry_after_with_a_little_jitter() -> None:
    rng = random.Random(3)
    delays = [retry_delay_s(0, 0.5, 30.0, 2.0, rng) for _ in range(1000)]
    assert all(2.0 <= d <= 2.2 for d in delays)
    assert max(delays) - min(delays) > 0.1  # jittered, not all identical


def test_retry_delay_never_exceeds_max_of_cap_and_retry_after() -> None:
    rng = random.Random(5)
    assert all(29.9 <= retry_delay_s(0, 0.5, 30.0, 29.9, rng) <= 30.0 for _ in range(500))
    # A provider asking for longer than our cap is obeyed exactly.
    assert retry_delay_s(0, 0.5, 30.0, 100.0, rng) == 100.0


def test_retry_delay_zero_or_negative_retry_after() -> None:
    rng = random.Random(9)
    assert all(0.0 <= retry_delay_s(4, 0.5, 30.0, 0.0, rng) <= 0.05 for _ in range(200))
    assert all(0.0 <= retry_delay_s(4, 0.5, 30.0, -3.0, rng) <= 0.05 for _ in range(200))


@pytest.mark.parametrize(("attempt", "base", "cap"), [(-1, 0.5, 30.0), (0, 0.0, 30.0), (0, 0.5, -1.0)])
def test_invalid_arguments_raise(attempt: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        full_jitter_delay_s(attempt, base, cap)
    with pytest.raises(ValueError):
        retry_delay_s(attempt, base, cap, 1.0)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529, 599])
def test_retryable_statuses(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [200, 204, 301, 400, 401, 403, 404, 413, 422, 499, 600])
def test_non_retryable_statuses(status: int) -> None:
    assert not is_retryable_status(status)
