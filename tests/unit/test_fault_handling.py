"""Fault handling pieces found by tests/integration/test_faults.py, checked in isolation.

- the circuit breaker does not trip on an error rate below its threshold however much traffic it sees;
- 429s and our own bad requests do not count against a provider's health;
- the simulated provider counts an answer its client abandoned (timed out) as neither ok nor malformed.
"""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from batchroute.breaker import CircuitBreaker
from batchroute.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from batchroute.execution import _counts_against_health
from batchroute.registry import load_registry
from batchroute.simprovider import SimConfig, start_sim_server


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_ignores_runs_of_failures_when_the_error_rate_is_below_threshold() -> None:
    clock = FakeClock()
    b = CircuitBreaker(clock=clock)
    rng = random.Random(3)
    longest = run = 0
    for _ in range(5000):
        clock.now += 0.01
        if rng.random() < 0.3:
            b.record_failure("m")
            run += 1
            longest = max(longest, run)
        else:
            b.record_success("m")
            run = 0
        assert b.state("m") == "closed"
    assert longest >= b.failure_threshold  # the old consecutive rule would have tripped


def test_breaker_still_trips_on_consecutive_failures_at_low_traffic_and_on_rate_at_high() -> None:
    clock = FakeClock()
    b = CircuitBreaker(clock=clock)
    for _ in range(b.failure_threshold):
        b.record_failure("quiet")
    assert b.state("quiet") == "open"
    for _ in range(30):
        b.record_success("busy")
    for i in range(30):
        b.record_failure("busy")
        if b.state("busy") == "open":
            assert i + 1 == 30  # 30 failures against 30 successes: 50 %
            break
    assert b.state("busy") == "open"


@pytest.mark.parametrize(("err", "counts"), [
    (ProviderUnavailable("x", status=503), True),
    (ProviderTimeout("x"), True),
    (ProviderProtocolError("x", status=200), True),
    (ProviderAuthError("x", status=401), True),
    (ProviderRateLimited("x", status=429), False),
    (ProviderBadRequest("x", status=400), False),
])
def test_what_counts_against_a_providers_health(err: Exception, counts: bool) -> None:
    assert _counts_against_health(err) is counts  # type: ignore[arg-type]


def test_sim_does_not_count_answers_its_client_abandoned() -> None:
    async def main() -> dict[str, int]:
        server = await start_sim_server(load_registry(), SimConfig(time_scale=0.5))
        try:
            body = {"model": "sim-gpt-4", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
            async with aiohttp.ClientSession() as session:
                with pytest.raises(asyncio.TimeoutError):  # sim-gpt-4 takes 0.4 s + at this scale
                    async with session.post(f"{server.url}/v1/chat/completions", json=body,
                                            timeout=aiohttp.ClientTimeout(total=0.1)) as resp:
                        await resp.read()
                server.configure(time_scale=0, rate_hang=1.0, hang_s=0.3)
                with pytest.raises(asyncio.TimeoutError):
                    async with session.post(f"{server.url}/v1/chat/completions", json=body,
                                            timeout=aiohttp.ClientTimeout(total=0.1)) as resp:
                        await resp.read()
                await asyncio.sleep(0.8)  # both handlers finish after their clients left
            return dict(server.stats()["models"]["sim-gpt-4"])
        finally:
            await server.close()

    counts = asyncio.run(main())
    assert (counts["calls"], counts["ok"], counts["hangs"], counts["malformed"]) == (2, 0, 1, 0)
