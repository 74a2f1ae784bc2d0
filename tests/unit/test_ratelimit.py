"""batchroute.ratelimit: the pure GCRA/AIMD math and the in-memory limiter, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from batchroute.errors import BrokerError, ConfigError
from batchroute.ratelimit import (
    AIMD,
    AIMDState,
    InMemoryRateLimiter,
    KeyState,
    LimitKey,
    RedisRateLimiter,
    bucket_capacity,
    gcra,
    gcra_adjust,
    headers_block_s,
    limit_keys_for,
    plan_acquire,
    plan_feedback,
    plan_settle,
)
from batchroute.registry import load_registry

approx = pytest.approx


class FakeTime:
    """A clock plus a sleep that advances it, so waits are exact and instant."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def ft() -> FakeTime:
    return FakeTime()


@pytest.fixture
def limiter(ft: FakeTime) -> InMemoryRateLimiter:
    return InMemoryRateLimiter(clock=ft, sleep=ft.sleep)


# -- pure GCRA -----------------------------------------------------------------------------------


def test_capacity_is_burst_seconds_of_rate_at_least_one() -> None:
    assert bucket_capacity(10.0, 1.0) == 10.0
    assert bucket_capacity(10.0, 2.5) == 25.0
    assert bucket_capacity(0.5, 1.0) == 1.0


def test_gcra_one_per_second() -> None:
    first = gcra(None, 0.0, 1.0, 1, 1.0)
    assert (first.wait_s, first.tat) == (0.0, 1.0)
    second = gcra(first.tat, 0.0, 1.0, 1, 1.0)
    assert second.wait_s == 1.0
    assert gcra(first.tat, 0.4, 1.0, 1, 1.0).wait_s == approx(0.6)
    assert gcra(first.tat, 1.0, 1.0, 1, 1.0).wait_s == 0.0


def test_gcra_burst_then_pacing() -> None:
    tat = None
    for _ in range(10):                       # 600 rpm, 1 s burst: 10 at once
        r = gcra(tat, 0.0, 10.0, 1, 1.0)
        assert r.wait_s == 0.0
        tat = r.tat
    assert gcra(tat, 0.0, 10.0, 1, 1.0).wait_s == approx(0.1)
    assert gcra(tat, 0.05, 10.0, 1, 1.0).wait_s == approx(0.05)


def test_gcra_idle_time_refills_only_up_to_capacity() -> None:
    r = gcra(0.0, 100.0, 10.0, 10, 1.0)       # long idle: a full bucket, no more
    assert r.wait_s == 0.0
    assert gcra(r.tat, 100.0, 10.0, 1, 1.0).wait_s == approx(0.1)


def test_gcra_token_cost_and_oversized_cost() -> None:
    # 6000 tpm = 100 tokens/s, capacity 100.
    assert gcra(None, 0.0, 100.0, 100, 1.0).wait_s == 0.0
    r = gcra(None, 0.0, 100.0, 60, 1.0)
    assert gcra(r.tat, 0.0, 100.0, 50, 1.0).wait_s == approx(0.1)   # 40 left, 10 missing
    # A cost above capacity fits only on a full bucket and leaves it in debt.
    big = gcra(None, 0.0, 100.0, 500, 1.0)
    assert big.wait_s == 0.0 and big.tat == approx(5.0)
    assert gcra(big.tat, 0.0, 100.0, 1, 1.0).wait_s == approx(4.01)
    assert gcra(r.tat, 0.0, 100.0, 500, 1.0).wait_s == approx(0.6)  # waits for a full bucket


def test_gcra_adjust_refund_and_charge() -> None:
    tat = gcra(None, 0.0, 100.0, 100, 1.0).tat                       # 1.0
    assert gcra_adjust(tat, 0.0, 100.0, -80) == approx(0.2)
    assert gcra_adjust(tat, 0.0, 100.0, 50) == approx(1.5)
    assert gcra_adjust(0.5, 3.0, 100.0, 50) == approx(3.5)            # charge starts from now
    assert gcra_adjust(None, 0.0, 100.0, -10) is None                 # nothing to refund


# -- AIMD ----------------------------------------------------------------------------------------


def test_aimd_decrease_cooldown_floor_and_recovery() -> None:
    aimd = AIMD(min_fraction=0.1, decrease=0.5, increase_per_s=0.02, cooldown_s=1.0)
    s = AIMDState()
    assert aimd.fraction(s, 0.0) == 1.0
    s = aimd.on_throttle(s, 10.0)
    assert aimd.fraction(s, 10.0) == 0.5
    assert aimd.on_throttle(s, 10.5) is s                              # same burst of 429s
    assert aimd.fraction(s, 10.5) == approx(0.51)
    s = aimd.on_throttle(s, 11.0)                                      # (0.5 + 0.02) * 0.5
    assert aimd.fraction(s, 11.0) == approx(0.26)
    fractions = []
    for t in (12.0, 13.0, 14.0, 15.0):
        s = aimd.on_throttle(s, t)
        fractions.append(aimd.fraction(s, t))
    assert fractions == approx([0.14, 0.1, 0.1, 0.1])                  # floored at min_fraction
    assert aimd.fraction(s, 25.0) == approx(0.3)
    assert aimd.recovery_s(s, 15.0) == approx(45.0)
    assert aimd.fraction(s, 60.0) == 1.0
    assert aimd.recovery_s(s, 60.0) == 0.0


@pytest.mark.parametrize("kw", [{"min_fraction": 0.0}, {"decrease": 1.0}, {"decrease": 0.0},
                                {"increase_per_s": 0.0}, {"cooldown_s": -1.0}])
def test_aimd_rejects_bad_settings(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AIMD(**kw)


# -- multi-key planning --------------------------------------------------------------------------

AIMD_DEFAULT = AIMD()


def test_plan_acquire_is_all_or_nothing() -> None:
    a, b = LimitKey("a", rpm=60), LimitKey("b", tpm=600)
    empty = [KeyState(), KeyState()]
    plan = plan_acquire([a, b], empty, 5, 0.0, burst_s=1.0, aimd=AIMD_DEFAULT)
    assert plan.granted
    assert plan.states[0].request_tat == 1.0 and plan.states[1].token_tat == approx(0.5)
    denied = plan_acquire([a, b], plan.states, 5, 0.0, burst_s=1.0, aimd=AIMD_DEFAULT)
    assert not denied.granted and denied.wait_s == approx(1.0)        # the longest wait wins
    assert denied.states == plan.states                                # nothing charged


def test_plan_acquire_uses_aimd_fraction_and_blocks() -> None:
    key = LimitKey("k", rpm=600)
    halved = plan_feedback(KeyState(), 0.0, aimd=AIMD_DEFAULT, decrease=True, block_s=None)
    st = halved
    for _ in range(5):                                  # 300 rpm effective: capacity 5
        plan = plan_acquire([key], [st], 0, 0.0, burst_s=1.0, aimd=AIMD_DEFAULT)
        assert plan.granted
        st = plan.states[0]
    assert plan_acquire([key], [st], 0, 0.0, burst_s=1.0, aimd=AIMD_DEFAULT).wait_s == approx(0.2)
    blocked = plan_feedback(KeyState(), 0.0, aimd=AIMD_DEFAULT, decrease=False, block_s=3.0)
    assert plan_acquire([key], [blocked], 0, 1.0, burst_s=1.0, aimd=AIMD_DEFAULT).wait_s == approx(2.0)
    unlimited = plan_acquire([LimitKey("free")], [blocked], 0, 1.0, burst_s=1.0, aimd=AIMD_DEFAULT)
    assert unlimited.wait_s == approx(2.0)              # a block applies to unlimited keys too


def test_plan_feedback_block_only_extends() -> None:
    st = plan_feedback(KeyState(), 0.0, aimd=AIMD_DEFAULT, decrease=False, block_s=5.0)
    st = plan_feedback(st, 1.0, aimd=AIMD_DEFAULT, decrease=False, block_s=1.0)
    assert st.blocked_until == 5.0


def test_plan_settle_ignores_keys_without_tpm() -> None:
    st = KeyState(request_tat=3.0)
    assert plan_settle(LimitKey("r", rpm=60), st, 100, 0.0, aimd=AIMD_DEFAULT) is st


def test_headers_block_s() -> None:
    assert headers_block_s(0, 100, 1.5, 6.0) == 1.5
    assert headers_block_s(3, 0, 1.5, 6.0) == 6.0
    assert headers_block_s(0, 0, 1.5, 6.0) == 6.0
    assert headers_block_s(5, 100, 1.5, 6.0) is None
    assert headers_block_s(0, None, None, None) is None


def test_limit_key_validation_and_keys_for_registry() -> None:
    with pytest.raises(ValueError):
        LimitKey("x", rpm=0)
    with pytest.raises(ValueError):
        LimitKey("")
    reg = load_registry()
    model = reg.model("sim-gpt-4")
    keys = limit_keys_for(model, reg.provider(model.provider))
    assert keys == [LimitKey("provider:openai-sim", 3000, 2_000_000), LimitKey("model:sim-gpt-4", 1500, 1_000_000)]
    other = next(p for p in reg.provider_names() if p != model.provider)
    with pytest.raises(ValueError):
        limit_keys_for(model, reg.provider(other))


# -- the in-memory limiter -----------------------------------------------------------------------


def test_acquire_paces_with_exact_waits(ft: FakeTime, limiter: InMemoryRateLimiter) -> None:
    key = LimitKey("model:m", rpm=60)

    async def go() -> list[float]:
        return [(await limiter.acquire([key], 0)).granted_at for _ in range(4)]

    assert asyncio.run(go()) == approx([0.0, 1.0, 2.0, 3.0])
    assert ft.sleeps == approx([1.0, 1.0, 1.0])


def test_concurrent_callers_are_served_fifo(ft: FakeTime, limiter: InMemoryRateLimiter) -> None:
    key = LimitKey("model:m", rpm=600)
    order: list[tuple[int, float]] = []

    async def one(i: int) -> None:
        res = await limiter.acquire([key], 0)
        order.append((i, res.granted_at))

    async def go() -> None:
        await asyncio.gather(*(one(i) for i in range(15)))

    asyncio.run(go())
    assert [i for i, _ in order] == list(range(15))
    assert [t for _, t in order] == approx([0.0] * 10 + [0.1, 0.2, 0.3, 0.4, 0.5])


def test_timeout_fails_fast_when_the_wait_is_too_long(ft: FakeTime, limiter: InMemoryRateLimiter) -> None:
    key = LimitKey("model:m", rpm=60)

    async def go() -> None:
        await limiter.acquire([key], 0)
        with pytest.raises(asyncio.TimeoutError):
            await limiter.acquire([key], 0, timeout_s=0.5)
        assert ft.now == 0.0                        # gave up without sleeping
        with pytest.raises(TimeoutError):
            await limiter.acquire([key], 0, timeout_s=0)
        res = await limiter.acquire([key], 0, timeout_s=1.0)
        assert res.granted_at == 1.0 and res.waited_s == 1.0

    asyncio.run(go())


def test_try_acquire_reports_wait(ft: FakeTime, limiter: InMemoryRateLimiter) -> None:
    key = LimitKey("k", tpm=6000)

    async def go() -> None:
        assert (await limiter.try_acquire([key], 100)).granted
        attempt = await limiter.try_acquire([key], 50)
        assert not attempt.granted and attempt.wait_s == approx(0.5)

    asyncio.run(go())


def test_multi_key_all_or_nothing(ft: FakeTime, limiter: InMemoryRateLimiter) -> None:
    a, b = LimitKey("a", rpm=60), LimitKey("b", tpm=600)

    async def go() -> None:
        assert (await limiter.try_acquire([a], 0)).granted
        denied = await limiter.try_acquire([a, b], 5)
        assert not denied.granted and denied.wait_s == approx(1.0)
        assert (await limiter.try_acquire([b], 10)).granted     # b was not charged by the denial

    asyncio.run(go())


def test_settle_refunds_charges_and_is_idempotent(ft: FakeTime, limiter: InMemoryRateLimiter) -> None:
    key = LimitKey("k", rpm=6000, tpm=600)        # 10 tokens/s, capacity 10

    async def go() -> None:
        res = await limiter.acquire([key], 10)
        assert not (await limiter.try_acquire([key], 8)).granted
        await limiter.settle(res, 2)                               # 8 unused tokens come back
        assert res.settled
        await limiter.settle(res, 2)                               # no double refund
        assert (await limiter.try_acquire([key], 8)).granted
        res2 = await limiter.acquire([key], 0)
        await limiter.settle(res2, 5)                               # used 5 it did not reserve
        assert (await limiter.try_acquire([key], 1)).wait_s == approx(0.6)

    asyncio.run(go())


def test_penalize_halves_rate_once_per_cooldown_and_blocks(ft: FakeTime, limiter: InMemoryRateLimiter) -> None:
    key = LimitKey("model:m", rpm=60)

    async def go() -> None:
        await limiter.penalize("model:m", None)
        await limiter.penalize("model:m", None)                    # same burst: counted once
        assert (await limiter.status("model:m")).fraction == 0.5
        await limiter.acquire([key], 0)
        assert (await limiter.try_acquire([key], 0)).wait_s == approx(2.0)
        ft.now = 10.0
        await limiter.penalize("model:m", 3.0)
        st = await limiter.status("model:m")
        assert st.fraction == approx((0.5 + 0.02 * 10) * 0.5) and st.blocked_for_s == 3.0
        res = await limiter.acquire([key], 0)
        assert res.granted_at == 13.0 and res.waited_s == 3.0

    asyncio.run(go())


def test_observe_headers_blocks_only_on_exhausted_budgets(ft: FakeTime, limiter: InMemoryRateLimiter) -> None:
    async def go() -> None:
        await limiter.observe_headers("p", 10, 5000, 1.0, 2.0)
        assert (await limiter.status("p")).blocked_for_s == 0.0
        await limiter.observe_headers("p", 10, 0, 1.0, 2.0)
        st = await limiter.status("p")
        assert st.blocked_for_s == 2.0 and st.fraction == 1.0      # a block, not a rate cut
        assert (await limiter.try_acquire([LimitKey("p", rpm=10_000)], 1)).wait_s == 2.0

    asyncio.run(go())


def test_argument_errors(limiter: InMemoryRateLimiter) -> None:
    async def go() -> None:
        with pytest.raises(ValueError):
            await limiter.acquire([LimitKey("k", rpm=60)], -1)
        with pytest.raises(ValueError):
            await limiter.acquire([LimitKey("k", rpm=60), LimitKey("k", rpm=120)], 1)
        res = await limiter.acquire([LimitKey("k", rpm=60), LimitKey("k", rpm=60)], 1)
        assert len(res.keys) == 1

    asyncio.run(go())
    with pytest.raises(ValueError):
        InMemoryRateLimiter(burst_s=0)


def test_cancelled_waiter_releases_its_place() -> None:
    limiter = InMemoryRateLimiter()
    key = LimitKey("k", rpm=60)

    async def go() -> None:
        await limiter.acquire([key], 0)
        waiter = asyncio.create_task(limiter.acquire([key], 0))   # would wait 1 s
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        # The queue is free again: a caller with a short timeout gets a prompt answer.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(limiter.acquire([key], 0, timeout_s=0.05), 0.5)

    asyncio.run(go())


def test_real_clock_does_not_block_other_coroutines() -> None:
    limiter = InMemoryRateLimiter()
    key = LimitKey("k", rpm=600)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async def go() -> float:
        t = asyncio.create_task(ticker())
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*(limiter.acquire([key], 0) for _ in range(13)))
        t.cancel()
        return loop.time() - start

    elapsed = asyncio.run(go())
    assert elapsed == approx(0.3, abs=0.1)
    assert ticks >= 15


# -- Redis limiter without a server --------------------------------------------------------------


def test_redis_errors_map_to_broker_error() -> None:
    limiter = RedisRateLimiter("redis://:secret@127.0.0.1:1/0", socket_timeout_s=0.5)

    async def go() -> None:
        with pytest.raises(BrokerError) as info:
            await limiter.acquire([LimitKey("k", rpm=60)], 1)
        assert "secret" not in str(info.value) and info.value.__cause__ is not None
        await limiter.aclose()

    asyncio.run(go())


def test_redis_config_errors() -> None:
    with pytest.raises(ConfigError):
        RedisRateLimiter("http://nope")
    with pytest.raises(ConfigError):
        RedisRateLimiter("redis://127.0.0.1:6379", prefix="{bad}")
    assert RedisRateLimiter("redis://h:6379", prefix="p").redis_key("model:x") == "{p}:model:x"


def test_timeout_applies_while_queued_behind_other_callers() -> None:
    limiter = InMemoryRateLimiter()
    key = LimitKey("k", rpm=60)

    async def go() -> None:
        await limiter.acquire([key], 0)
        head = asyncio.create_task(limiter.acquire([key], 0))     # sleeps ~1 s holding the queue
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            await limiter.acquire([key], 0, timeout_s=0.05)
        with pytest.raises(TimeoutError):
            await limiter.acquire([key], 0, timeout_s=0)
        assert loop.time() - start < 0.5
        head.cancel()
        with pytest.raises(asyncio.CancelledError):
            await head

    asyncio.run(go())
