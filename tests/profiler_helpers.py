"""Shared by the profiler tests: a settable clock and latency histograms built from samples."""

from __future__ import annotations

from batchroute.profiler import EMPTY_HIST, bucket_index


class FakeClock:
    """A monotonic clock the test moves by hand (``clock.t += 10``)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def hist(*samples: tuple[float, float]) -> tuple[float, ...]:
    """A latency histogram of (latency_ms, weight) pairs."""
    out = list(EMPTY_HIST)
    for ms, w in samples:
        out[bucket_index(ms)] += w
    return tuple(out)
