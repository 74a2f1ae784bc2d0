"""Retry delays for provider calls: pure functions, no sleeping, no I/O.

A worker that got a retryable failure asks how long to wait, then schedules the retry::

    from batchroute.backoff import is_retryable_status, retry_delay_s

    if is_retryable_status(status):
        delay = retry_delay_s(attempt, base_s=0.5, cap_s=30.0, retry_after_s=exc.retry_after_s)
        raise Retry(delay)

``attempt`` counts from 0 for the first retry. Pass ``rng=random.Random(seed)`` for repeatable
delays in tests; the default uses the module-level generator.
"""

from __future__ import annotations

import random

# 2.0 ** 1100 overflows a float; any exponent past this is capped anyway for every sane base.
_MAX_EXPONENT = 62
# Spread added on top of a provider's retry-after, as a fraction of it (or of base_s when larger),
# so workers that all read the same header do not come back in the same millisecond.
_RETRY_AFTER_JITTER_FRACTION = 0.1


def _check(attempt: int, base_s: float, cap_s: float) -> None:
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if base_s <= 0 or cap_s <= 0:
        raise ValueError(f"base_s and cap_s must be > 0, got base_s={base_s}, cap_s={cap_s}")


def full_jitter_delay_s(attempt: int, base_s: float, cap_s: float,
                        rng: random.Random | None = None) -> float:
    """AWS "full jitter" backoff: ``uniform(0, min(cap_s, base_s * 2**attempt))`` seconds.

    ``attempt`` is 0 for the first retry. Raises ValueError on a negative attempt or a
    non-positive base/cap.
    """
    _check(attempt, base_s, cap_s)
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt, _MAX_EXPONENT))
    return (rng or random).uniform(0.0, ceiling)


def retry_delay_s(attempt: int, base_s: float, cap_s: float, retry_after_s: float | None,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based).

    Without ``retry_after_s`` (the provider sent no Retry-After) this is
    :func:`full_jitter_delay_s`. With it, the delay is at least ``retry_after_s`` plus up to 10 %
    of it (or of ``base_s`` when that is larger) of jitter, and never above
    ``max(cap_s, retry_after_s)``: a provider asking for longer than our cap is obeyed exactly.
    A negative ``retry_after_s`` is treated as 0.
    """
    _check(attempt, base_s, cap_s)
    if retry_after_s is None:
        return full_jitter_delay_s(attempt, base_s, cap_s, rng)
    floor = max(0.0, retry_after_s)
    spread = _RETRY_AFTER_JITTER_FRACTION * max(floor, base_s)
    return min(floor + (rng or random).uniform(0.0, spread), max(cap_s, floor))


def is_retryable_status(status: int) -> bool:
    """True when an HTTP status may succeed on retry: 408, 409, 429 and every 5xx (incl. 529).

    Every other status (2xx/3xx, and 4xx such as 400, 401, 403, 404, 413, 422) is False.
    """
    return status in (408, 409, 429) or 500 <= status <= 599
