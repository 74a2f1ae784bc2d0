"""A circuit breaker per key (a provider or a model): a pure state machine with an injectable clock.

Ask before each call, report the outcome after it::

    breaker = CircuitBreaker()
    if not breaker.allow("model:sim-gpt-4"):
        ...  # route elsewhere or retry later; the breaker is open
    try:
        result = await call()
    except ProviderError as exc:
        if exc.retryable:
            breaker.record_failure("model:sim-gpt-4")
        raise
    breaker.record_success("model:sim-gpt-4")

States: ``closed`` lets every call through. It opens when at least ``min_calls`` outcomes in the
last ``window_s`` seconds have an error rate >= ``error_rate_threshold``; while the window holds
fewer outcomes than that (low traffic, or a key just starting), after ``failure_threshold``
consecutive failures instead. ``open`` refuses calls for ``open_s`` seconds, then becomes
``half_open``, which lets ``half_open_max_calls`` probe calls through: a probe success closes
the breaker (with a clean history), a probe failure opens it again for another ``open_s``.

Only record failures that say something about the provider's health (timeouts, 5xx, connection
errors, malformed answers); a 400 caused by our own request should be recorded as neither, and so
should a 429, which the shared rate limiter answers by slowing down (a storm of them would
otherwise open every breaker and strand a batch on a transient condition). The breaker knows nothing of the
network and never sleeps. It is thread-safe: one instance may be shared by worker threads.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass
class _Key:
    state: BreakerState = "closed"
    consecutive_failures: int = 0
    # (time, failed) for outcomes recorded while closed, oldest first, pruned to window_s.
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    failures_in_window: int = 0
    opened_at: float = 0.0
    probes_in_flight: int = 0
    last_probe_at: float = 0.0


class CircuitBreaker:
    """Per-key circuit breaker; see the module docstring for the states and how to call it.

    ``clock`` returns seconds (``time.monotonic`` by default; pass a fake in tests). Raises
    ValueError on nonsensical settings.
    """

    def __init__(self, failure_threshold: int = 5, error_rate_threshold: float = 0.5,
                 window_s: float = 30.0, min_calls: int = 20, open_s: float = 15.0,
                 half_open_max_calls: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1 or min_calls < 1 or half_open_max_calls < 1:
            raise ValueError("failure_threshold, min_calls and half_open_max_calls must be >= 1")
        if not 0.0 < error_rate_threshold <= 1.0:
            raise ValueError(f"error_rate_threshold must be in (0, 1], got {error_rate_threshold}")
        if window_s <= 0 or open_s <= 0:
            raise ValueError("window_s and open_s must be > 0")
        self.failure_threshold = failure_threshold
        self.error_rate_threshold = error_rate_threshold
        self.window_s = window_s
        self.min_calls = min_calls
        self.open_s = open_s
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._keys: dict[str, _Key] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """True when a call for ``key`` may go ahead now.

        In ``half_open`` a True answer hands out one of the probe slots, so call this only when
        you will really make the call and then record its outcome.
        """
        with self._lock:
            now = self._clock()
            k = self._refresh(key, now)
            if k.state == "closed":
                return True
            if k.state == "open":
                return False
            # A probe whose outcome was never recorded (its caller crashed) must not keep the key
            # half-open forever: after another open_s its slot is handed out again.
            if k.probes_in_flight and now - k.last_probe_at >= self.open_s:
                k.probes_in_flight = 0
            if k.probes_in_flight >= self.half_open_max_calls:
                return False
            k.probes_in_flight += 1
            k.last_probe_at = now
            return True

    def record_success(self, key: str) -> None:
        """Report a successful call for ``key``; closes a half-open breaker."""
        with self._lock:
            now = self._clock()
            k = self._refresh(key, now)
            if k.state == "half_open":
                self._keys[key] = _Key()
            elif k.state == "closed":
                k.consecutive_failures = 0
                self._add_outcome(k, now, failed=False)
            # While open, a late success of a call started before the trip changes nothing.

    def record_failure(self, key: str) -> None:
        """Report a failed call for ``key``; may open the breaker (or reopen a half-open one)."""
        with self._lock:
            now = self._clock()
            k = self._refresh(key, now)
            if k.state == "half_open":
                self._open(k, now)
            elif k.state == "closed":
                k.consecutive_failures += 1
                self._add_outcome(k, now, failed=True)
                calls = len(k.outcomes)
                if calls >= self.min_calls:
                    # Enough traffic for the error rate to speak. A run of consecutive failures
                    # is no signal here: across hundreds of interleaved calls a 30 % error rate
                    # produces runs of 5 every few hundred calls.
                    trip = k.failures_in_window / calls >= self.error_rate_threshold
                else:
                    trip = k.consecutive_failures >= self.failure_threshold
                if trip:
                    self._open(k, now)

    def state(self, key: str) -> BreakerState:
        """The state of ``key`` now (``closed`` for a key never seen)."""
        with self._lock:
            return self._refresh(key, self._clock()).state

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every known key with its state and window counters, for metrics and ``/status``.

        Example: ``{"model:x": {"state": "open", "consecutive_failures": 5, "calls_in_window": 5,
        "failures_in_window": 5, "error_rate": 1.0, "retry_in_s": 12.5}}``.
        """
        with self._lock:
            now = self._clock()
            out: dict[str, dict[str, Any]] = {}
            for name in list(self._keys):
                k = self._refresh(name, now)
                calls = len(k.outcomes)
                out[name] = {
                    "state": k.state,
                    "consecutive_failures": k.consecutive_failures,
                    "calls_in_window": calls,
                    "failures_in_window": k.failures_in_window,
                    "error_rate": k.failures_in_window / calls if calls else 0.0,
                    "retry_in_s": max(0.0, k.opened_at + self.open_s - now) if k.state == "open" else 0.0,
                }
            return out

    def reset(self, key: str) -> None:
        """Forget everything about ``key`` (it is closed again), e.g. after an operator fix."""
        with self._lock:
            self._keys.pop(key, None)

    # -- internals; callers hold self._lock ---------------------------------------------------

    def _refresh(self, key: str, now: float) -> _Key:
        k = self._keys.get(key)
        if k is None:
            k = self._keys[key] = _Key()
        if k.state == "open" and now - k.opened_at >= self.open_s:
            k.state = "half_open"
            k.probes_in_flight = 0
        self._prune(k, now)
        return k

    def _prune(self, k: _Key, now: float) -> None:
        horizon = now - self.window_s
        while k.outcomes and k.outcomes[0][0] <= horizon:
            _, failed = k.outcomes.popleft()
            k.failures_in_window -= failed

    def _add_outcome(self, k: _Key, now: float, *, failed: bool) -> None:
        k.outcomes.append((now, failed))
        k.failures_in_window += failed

    def _open(self, k: _Key, now: float) -> None:
        k.state = "open"
        k.opened_at = now
        k.probes_in_flight = 0
        # The window and counters are kept for snapshot(); closing starts a fresh history.
