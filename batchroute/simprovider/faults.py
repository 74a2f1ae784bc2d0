"""Per-model rate limits, fault draws and call counters of the simulated provider.

All three are plain objects owned by one server and touched only from its event loop, so they
need no locks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Fault = Literal["429", "5xx", "hang", "malformed", "reset"]
WINDOW_S = 60.0
# Refill arithmetic leaves ~1e-12 crumbs; a bucket that short of a whole unit is full enough.
_EPS = 1e-9
COUNTERS = ("calls", "ok", "status_4xx", "status_429", "status_5xx", "hangs", "malformed", "resets",
            "prompt_tokens", "completion_tokens")


@dataclass(slots=True)
class LimitState:
    """One model's limits as reported in rate-limit headers; ``exceeded`` names the bucket that
    refused the call ("requests" or "tokens", None when it was admitted)."""

    limit_requests: int
    remaining_requests: int
    reset_requests_s: float
    limit_tokens: int
    remaining_tokens: int
    reset_tokens_s: float
    exceeded: str | None = None
    retry_after_s: float = 0.0
    # True when the call alone costs more tokens than the whole tpm budget (it can never pass).
    too_large: bool = False


class Bucket:
    """A 60 s budget of ``rpm`` requests and ``tpm`` tokens, refilled continuously.

    This is how OpenAI and Anthropic meter: a burst of ``rpm`` calls passes, the next is
    refused, and capacity comes back at ``rpm / 60`` per second. Unlike a fixed window it never
    refuses a client that paces itself at the rate after an initial burst.
    """

    __slots__ = ("req", "rpm", "tok", "tpm", "ts")

    def __init__(self, rpm: int, tpm: int, now: float) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.req, self.tok, self.ts = float(rpm), float(tpm), now

    def _refill(self, now: float) -> None:
        dt = now - self.ts
        if dt > 0:
            self.req = min(float(self.rpm), self.req + dt * self.rpm / WINDOW_S)
            self.tok = min(float(self.tpm), self.tok + dt * self.tpm / WINDOW_S)
            self.ts = now

    def _state(self) -> LimitState:
        return LimitState(
            self.rpm, max(0, math.floor(self.req + _EPS)), (self.rpm - self.req) * WINDOW_S / self.rpm,
            self.tpm, max(0, math.floor(self.tok + _EPS)), (self.tpm - self.tok) * WINDOW_S / self.tpm)

    def peek(self, now: float) -> LimitState:
        """The budget left at ``now`` (monotonic seconds) without taking anything."""
        self._refill(now)
        return self._state()

    def take(self, tokens: int, now: float) -> LimitState:
        """Take one request and ``tokens`` tokens if both fit, else report which bucket refused."""
        self._refill(now)
        req_wait = max(0.0, (1.0 - self.req) * WINDOW_S / self.rpm) if self.req + _EPS < 1.0 else 0.0
        tok_wait = max(0.0, (tokens - self.tok) * WINDOW_S / self.tpm) if self.tok + _EPS < tokens else 0.0
        if req_wait == 0.0 and tok_wait == 0.0:
            self.req -= 1.0
            self.tok -= tokens
            return self._state()
        state = self._state()
        state.exceeded = "requests" if req_wait >= tok_wait else "tokens"
        state.retry_after_s = max(req_wait, tok_wait)
        if tokens > self.tpm:
            state.exceeded, state.too_large, state.retry_after_s = "tokens", True, WINDOW_S
        return state


class Limiter:
    """Every served model's :class:`Bucket`, created full on first use."""

    def __init__(self) -> None:
        self._buckets: dict[str, Bucket] = {}

    def bucket(self, model: str, rpm: int, tpm: int, now: float) -> Bucket:
        """The bucket of ``model``; a changed limit starts a fresh, full bucket."""
        b = self._buckets.get(model)
        if b is None or b.rpm != rpm or b.tpm != tpm:
            b = self._buckets[model] = Bucket(rpm, tpm, now)
        return b

    def reset(self) -> None:
        """Refill every bucket (forget all past calls)."""
        self._buckets.clear()

    def exhaust(self, now: float) -> None:
        """Empty every bucket, as if another client had just used the whole budget."""
        for b in self._buckets.values():
            b.req, b.tok, b.ts = 0.0, 0.0, now


class FaultPicker:
    """Draws at most one fault per call from a seeded ``random.Random``."""

    def __init__(self, rates: dict[Fault, float], models: Iterable[str] | None, seed: int | None) -> None:
        # Draw order is part of the contract: with a fixed seed the same call sequence fails the same way.
        self.rates: list[tuple[Fault, float]] = [(f, r) for f, r in rates.items() if r > 0]
        self.models = None if models is None else frozenset(models)
        self.rng = random.Random(seed)

    def draw(self, *names: str) -> Fault | None:
        """The fault for a call to the model known by ``names`` (name, wire name), or None."""
        if not self.rates or (self.models is not None and self.models.isdisjoint(names)):
            return None
        for fault, rate in self.rates:
            if rate >= 1.0 or self.rng.random() < rate:
                return fault
        return None

    def server_status(self, anthropic: bool) -> int:
        """The status of an injected 5xx: 500 or 503, and also 529 (overloaded) for Anthropic."""
        return self.rng.choice((500, 503, 529) if anthropic else (500, 503))


class Stats:
    """Call counters per model name (see ``COUNTERS``) plus ``invalid``: calls refused before a
    served model was identified (bad JSON, missing fields, auth, unknown model).

    ``ok`` and ``malformed`` count answers written to a client still connected: a call its client
    abandoned (timed out) while it hung or was being computed counts in ``calls`` (and ``hangs``)
    only, so every outcome the client saw is counted exactly once."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, int]] = {}
        self.invalid = 0

    def of(self, model: str) -> dict[str, int]:
        """The mutable counters of ``model``."""
        c = self.models.get(model)
        if c is None:
            c = self.models[model] = dict.fromkeys(COUNTERS, 0)
        return c

    def snapshot(self) -> dict[str, object]:
        """``{"models": {name: counters}, "totals": counters summed, "invalid": n}`` as JSON-ready data."""
        totals = dict.fromkeys(COUNTERS, 0)
        for c in self.models.values():
            for k, v in c.items():
                totals[k] += v
        return {"models": {m: dict(c) for m, c in self.models.items()}, "totals": totals, "invalid": self.invalid}

    def reset(self) -> None:
        """Zero every counter."""
        self.models.clear()
        self.invalid = 0
