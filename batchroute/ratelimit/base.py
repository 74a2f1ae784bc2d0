"""Rate-limit types, the pure GCRA math, and the :class:`RateLimiter` interface.

Every limit is a pair of buckets per :class:`LimitKey`: one for requests (``rpm``) and one for
tokens (``tpm``), each paced by GCRA (the "generic cell rate algorithm", a token bucket stored as
one timestamp, the theoretical arrival time ``tat``). A bucket holds
``capacity = max(1, rate_per_s * burst_s)`` units, so callers may burst up to ``burst_s``
seconds' worth of traffic and are then paced at the rate. A cost larger than the capacity (one
prompt bigger than a second's worth of tpm) is granted once the bucket is full and leaves the
bucket in debt, so big requests are slowed, never starved.

The functions here are pure (state in, state out, time passed in) so they are unit-tested with a
fake clock; :class:`~batchroute.ratelimit.memory.InMemoryRateLimiter` calls them directly and
:class:`~batchroute.ratelimit.redis.RedisRateLimiter` runs the same formulas in Lua.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Self

from batchroute.ratelimit.aimd import AIMD, AIMDState
from batchroute.registry import ModelSpec, ProviderSpec

# Float sums of emission intervals (0.1 + 0.1 + ...) drift by ~1e-16 s; a wait that small is a
# rounding artefact, not missing capacity.
_EPS_S = 1e-9

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class LimitKey:
    """One shared limit: ``name`` (e.g. ``"model:sim-gpt-4"``) with per-minute request and token
    limits; ``None`` means unlimited. Build them with :func:`limit_keys_for`."""

    name: str
    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("LimitKey.name must not be empty")
        for label, value in (("rpm", self.rpm), ("tpm", self.tpm)):
            if value is not None and value <= 0:
                raise ValueError(f"LimitKey {self.name!r}: {label} must be > 0 or None, got {value}")


@dataclass(slots=True)
class Reservation:
    """What :meth:`RateLimiter.acquire` granted: 1 request and ``tokens`` tokens on every key.

    ``granted_at`` is on the limiter's clock (Redis server time for the Redis limiter) and
    ``waited_s`` is how long the caller waited. Pass it to :meth:`RateLimiter.settle` once the
    real token usage is known.
    """

    keys: tuple[LimitKey, ...]
    tokens: int
    granted_at: float
    waited_s: float = 0.0
    settled: bool = False


@dataclass(frozen=True, slots=True)
class Attempt:
    """The answer of one non-blocking :meth:`RateLimiter.try_acquire`: a reservation, or the
    number of seconds to wait before capacity can be there."""

    reservation: Reservation | None
    wait_s: float

    @property
    def granted(self) -> bool:
        """True when the capacity was taken."""
        return self.reservation is not None


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """The adaptive state of a key: the fraction of its configured rate in use (AIMD) and how
    much longer it is blocked by a provider's retry-after or reset header."""

    name: str
    fraction: float
    blocked_for_s: float


# -- pure math ---------------------------------------------------------------------------------


def bucket_capacity(rate_per_s: float, burst_s: float) -> float:
    """Units a bucket holds when full: ``burst_s`` seconds of the rate, at least 1."""
    return max(1.0, rate_per_s * burst_s)


@dataclass(frozen=True, slots=True)
class GcraResult:
    """``wait_s`` is 0 when the cost fits now; ``tat`` is the bucket's state after charging it
    (store it only when every bucket of the request fits)."""

    wait_s: float
    tat: float


def gcra(tat: float | None, now: float, rate_per_s: float, cost: float, burst_s: float) -> GcraResult:
    """Try to take ``cost`` units from a GCRA bucket whose state is ``tat`` (None = never used).

    Example: 60 rpm is ``rate_per_s=1``; with ``burst_s=1`` the first call at ``now=0`` fits
    (``tat`` becomes 1.0) and a second call at ``now=0`` must wait 1.0 s.
    """
    interval = 1.0 / rate_per_s
    capacity = bucket_capacity(rate_per_s, burst_s)
    tolerance = capacity * interval
    start = now if tat is None else max(tat, now)
    allow_at = start + min(cost, capacity) * interval - tolerance
    wait = allow_at - now
    return GcraResult(wait if wait > _EPS_S else 0.0, start + cost * interval)


def gcra_adjust(tat: float | None, now: float, rate_per_s: float, delta: float) -> float | None:
    """The bucket state after charging ``delta`` more units (negative: refunding them)."""
    interval = 1.0 / rate_per_s
    if delta >= 0:
        return (now if tat is None else max(tat, now)) + delta * interval
    # A refund on a bucket that already refilled (tat in the past) has nothing to give back.
    return None if tat is None else tat + delta * interval


@dataclass(frozen=True, slots=True)
class KeyState:
    """Everything stored for one key (times in seconds on the limiter's clock)."""

    request_tat: float | None = None
    token_tat: float | None = None
    aimd: AIMDState = field(default_factory=AIMDState)
    blocked_until: float = -math.inf


@dataclass(frozen=True, slots=True)
class AcquirePlan:
    """The decision for one multi-key acquire: grant (``wait_s == 0``, store ``states``) or wait."""

    wait_s: float
    states: tuple[KeyState, ...]

    @property
    def granted(self) -> bool:
        """True when every key had the capacity."""
        return self.wait_s <= 0.0


def plan_acquire(keys: Sequence[LimitKey], states: Sequence[KeyState], tokens: int, now: float,
                 *, burst_s: float, aimd: AIMD) -> AcquirePlan:
    """Decide whether 1 request and ``tokens`` tokens fit on every key at ``now``, all or nothing.

    Returns the new states when granted, else the longest wait over all keys (blocked keys
    included) and the unchanged states.
    """
    wait = 0.0
    new_states: list[KeyState] = []
    for key, st in zip(keys, states, strict=True):
        if st.blocked_until > now:
            wait = max(wait, st.blocked_until - now)
        fraction = aimd.fraction(st.aimd, now)
        request_tat, token_tat = st.request_tat, st.token_tat
        if key.rpm is not None:
            r = gcra(request_tat, now, key.rpm / 60.0 * fraction, 1, burst_s)
            wait, request_tat = max(wait, r.wait_s), r.tat
        if key.tpm is not None and tokens > 0:
            r = gcra(token_tat, now, key.tpm / 60.0 * fraction, tokens, burst_s)
            wait, token_tat = max(wait, r.wait_s), r.tat
        new_states.append(replace(st, request_tat=request_tat, token_tat=token_tat))
    if wait > 0.0:
        return AcquirePlan(wait, tuple(states))
    return AcquirePlan(0.0, tuple(new_states))


def plan_settle(key: LimitKey, state: KeyState, delta_tokens: int, now: float, *, aimd: AIMD) -> KeyState:
    """The key's state after correcting its token bucket by ``delta_tokens`` (actual - estimate)."""
    if key.tpm is None or delta_tokens == 0:
        return state
    rate = key.tpm / 60.0 * aimd.fraction(state.aimd, now)
    return replace(state, token_tat=gcra_adjust(state.token_tat, now, rate, delta_tokens))


def plan_feedback(state: KeyState, now: float, *, aimd: AIMD, decrease: bool,
                  block_s: float | None) -> KeyState:
    """The key's state after a provider signal: an AIMD decrease and/or a block for ``block_s``."""
    new = state
    if decrease:
        new = replace(new, aimd=aimd.on_throttle(new.aimd, now))
    if block_s is not None and block_s > 0:
        new = replace(new, blocked_until=max(new.blocked_until, now + block_s))
    return new


def headers_block_s(remaining_requests: int | None, remaining_tokens: int | None,
                    reset_requests_s: float | None, reset_tokens_s: float | None) -> float | None:
    """How long rate-limit headers say to stop: the reset of every exhausted (0) budget."""
    waits = [reset for remaining, reset in ((remaining_requests, reset_requests_s),
                                            (remaining_tokens, reset_tokens_s))
             if remaining is not None and remaining <= 0 and reset is not None and reset > 0]
    return max(waits) if waits else None


def limit_keys_for(model: ModelSpec, provider: ProviderSpec) -> list[LimitKey]:
    """The keys one call to ``model`` must acquire: its provider's and its own.

    ``[LimitKey("provider:openai-sim", 3000, 2000000), LimitKey("model:sim-gpt-4", 1500, 1000000)]``.
    The provider key is included even without limits so a provider-wide 429 can block it.
    Raises ValueError when ``provider`` is not the model's provider.
    """
    if model.provider != provider.name:
        raise ValueError(f"model {model.name!r} is served by {model.provider!r}, not {provider.name!r}")
    return [LimitKey(f"provider:{provider.name}", provider.rpm, provider.tpm),
            LimitKey(f"model:{model.name}", model.rpm, model.tpm)]


# -- the interface -----------------------------------------------------------------------------


def _normalize(keys: Sequence[LimitKey]) -> tuple[LimitKey, ...]:
    seen: dict[str, LimitKey] = {}
    for k in keys:
        other = seen.setdefault(k.name, k)
        if other != k:
            raise ValueError(f"key {k.name!r} given twice with different limits: {other} vs {k}")
    return tuple(seen.values())


def _check_tokens(tokens: int) -> None:
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")


class RateLimiter(ABC):
    """Shared rpm/tpm limits per key. Use one instance per process::

        keys = limit_keys_for(model, registry.provider(model.provider))
        res = await limiter.acquire(keys, tokens=estimated_tokens, timeout_s=30)
        try:
            reply = await call_provider()
        except ProviderRateLimited as exc:
            await limiter.penalize(f"model:{model.name}", exc.retry_after_s)
            raise
        await limiter.settle(res, actual_tokens=reply.usage.total_tokens)

    Within a process, callers waiting on the same set of keys queue in FIFO order behind one
    another, so only the head of each queue polls the shared state; the others sleep on a local
    lock. ``clock`` and ``sleep`` are injectable for tests; ``wait_jitter_s`` adds up to that many
    seconds to each wait so processes that computed the same wait do not all retry at once.
    """

    def __init__(self, *, burst_s: float = 1.0, aimd: AIMD | None = None, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep, wait_jitter_s: float = 0.0,
                 rng: random.Random | None = None) -> None:
        if burst_s <= 0:
            raise ValueError(f"burst_s must be > 0, got {burst_s}")
        if wait_jitter_s < 0:
            raise ValueError(f"wait_jitter_s must be >= 0, got {wait_jitter_s}")
        self.burst_s = burst_s
        self.aimd = aimd or AIMD()
        self._clock = clock
        self._sleep = sleep
        self._wait_jitter_s = wait_jitter_s
        self._rng = rng or random.Random()
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, ...], asyncio.Lock]]
        self._gates = weakref.WeakKeyDictionary()
        self._gates_lock = threading.Lock()

    async def acquire(self, keys: Sequence[LimitKey], tokens: int, *,
                      timeout_s: float | None = None) -> Reservation:
        """Take 1 request and ``tokens`` tokens from every key, all or nothing, waiting as needed.

        Waiting is ``await asyncio.sleep`` (other coroutines keep running). With ``timeout_s``,
        raises ``asyncio.TimeoutError`` (the builtin ``TimeoutError``) as soon as the wait is
        known to end past the deadline, so the caller can route elsewhere at once; ``0`` means
        "only if there is capacity now". Raises BrokerError when the shared state is unreachable
        and ValueError on negative ``tokens``.
        """
        ks = _normalize(keys)
        _check_tokens(tokens)
        start = self._clock()
        deadline = None if timeout_s is None else start + max(0.0, timeout_s)
        gate = self._gate(tuple(sorted(k.name for k in ks)))
        if deadline is None:
            await gate.acquire()
        else:
            try:
                # A free gate is taken without suspending, so even timeout_s=0 gets its one try.
                async with asyncio.timeout(max(0.0, deadline - self._clock())):
                    await gate.acquire()
            except TimeoutError:
                raise TimeoutError(f"rate limit {[k.name for k in ks]}: still queued behind other "
                                   f"callers after timeout_s={timeout_s}") from None
        try:
            while True:
                wait_s, now = await self._try(ks, tokens)
                if wait_s <= 0:
                    return Reservation(ks, tokens, granted_at=now, waited_s=self._clock() - start)
                sleep_s = wait_s + self._rng.uniform(0.0, self._wait_jitter_s)
                if deadline is not None:
                    remaining = deadline - self._clock()
                    if wait_s > remaining:
                        raise TimeoutError(f"rate limit {[k.name for k in ks]}: capacity for "
                                           f"{tokens} tokens in {wait_s:.3f}s, past timeout_s={timeout_s}")
                    sleep_s = min(sleep_s, remaining)
                await self._sleep(sleep_s)
        finally:
            gate.release()

    async def try_acquire(self, keys: Sequence[LimitKey], tokens: int) -> Attempt:
        """One non-blocking attempt: the reservation, or how many seconds until one may fit."""
        ks = _normalize(keys)
        _check_tokens(tokens)
        wait_s, now = await self._try(ks, tokens)
        if wait_s > 0:
            return Attempt(None, wait_s)
        return Attempt(Reservation(ks, tokens, granted_at=now), 0.0)

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Correct the pre-charged token estimate with the real usage: refunds unused tokens or
        charges the excess on every key's token bucket. Calling it again is a no-op."""
        _check_tokens(actual_tokens)
        if reservation.settled:
            return
        delta = actual_tokens - reservation.tokens
        keys = tuple(k for k in reservation.keys if k.tpm is not None)
        if delta and keys:
            await self._charge_tokens(keys, delta)
        reservation.settled = True

    async def penalize(self, key_name: str, retry_after_s: float | None) -> None:
        """Feedback from a 429 on ``key_name``: cut its rate fraction (AIMD, at most once per
        cooldown) and, with ``retry_after_s``, block the key for every worker until then."""
        block = retry_after_s if retry_after_s is not None and retry_after_s > 0 else None
        await self._feedback(key_name, decrease=True, block_s=block)

    async def observe_headers(self, key_name: str, remaining_requests: int | None,
                              remaining_tokens: int | None, reset_requests_s: float | None,
                              reset_tokens_s: float | None) -> None:
        """Feed a response's rate-limit headers (``x-ratelimit-remaining-*``/``reset-*``): when a
        remaining budget is 0, block ``key_name`` until its reset. Anything else is ignored."""
        block = headers_block_s(remaining_requests, remaining_tokens, reset_requests_s, reset_tokens_s)
        if block is not None:
            await self._feedback(key_name, decrease=False, block_s=block)

    @abstractmethod
    async def status(self, key_name: str) -> KeyStatus:
        """The key's current rate fraction and remaining block, as every worker sees it."""

    async def aclose(self) -> None:
        """Release connections; the limiter must not be used afterwards."""
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # -- what a backend implements -------------------------------------------------------------

    @abstractmethod
    async def _try(self, keys: tuple[LimitKey, ...], tokens: int) -> tuple[float, float]:
        """One atomic attempt: ``(0, now)`` when granted (state updated), else ``(wait_s, now)``."""

    @abstractmethod
    async def _charge_tokens(self, keys: tuple[LimitKey, ...], delta: int) -> None:
        """Charge (delta > 0) or refund (delta < 0) tokens on every key's token bucket."""

    @abstractmethod
    async def _feedback(self, key_name: str, *, decrease: bool, block_s: float | None) -> None:
        """Apply :func:`plan_feedback` to the key atomically."""

    def _gate(self, names: tuple[str, ...]) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._gates_lock:
            per_loop = self._gates.get(loop)
            if per_loop is None:
                per_loop = self._gates[loop] = {}
            gate = per_loop.get(names)
            if gate is None:
                gate = per_loop[names] = asyncio.Lock()
            return gate
