"""AIMD control of a key's rate: halve on a 429, recover linearly over time. Pure functions.

The limiter keeps one :class:`AIMDState` per key and asks :class:`AIMD` for the fraction of the
configured rpm/tpm to use now::

    aimd = AIMD(min_fraction=0.1, decrease=0.5, increase_per_s=0.02, cooldown_s=1.0)
    state = AIMDState()                      # fraction 1.0: the full configured rate
    state = aimd.on_throttle(state, now=10.0)
    aimd.fraction(state, now=10.0)           # 0.5
    aimd.fraction(state, now=20.0)           # 0.7  (0.5 + 0.02 * 10 s)

The Redis limiter runs the same formulas in Lua (see :mod:`batchroute.ratelimit.redis`); change
both together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AIMDState:
    """The fraction written at ``updated_at`` (seconds) and the time of the last decrease."""

    fraction: float = 1.0
    updated_at: float = 0.0
    decreased_at: float = -math.inf


@dataclass(frozen=True, slots=True)
class AIMD:
    """Additive-increase / multiplicative-decrease of a rate fraction in ``[min_fraction, 1]``.

    A throttle signal multiplies the fraction by ``decrease`` at most once per ``cooldown_s``
    (a burst of 429s from one overload counts once); the fraction then grows back by
    ``increase_per_s`` per second up to 1.0. Raises ValueError on out-of-range settings.
    """

    min_fraction: float = 0.1
    decrease: float = 0.5
    increase_per_s: float = 0.02
    cooldown_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.min_fraction <= 1.0:
            raise ValueError(f"min_fraction must be in (0, 1], got {self.min_fraction}")
        if not 0.0 < self.decrease < 1.0:
            raise ValueError(f"decrease must be in (0, 1), got {self.decrease}")
        if self.increase_per_s <= 0:
            raise ValueError(f"increase_per_s must be > 0, got {self.increase_per_s}")
        if self.cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {self.cooldown_s}")

    def fraction(self, state: AIMDState, now: float) -> float:
        """The fraction of the configured rate allowed at ``now``."""
        if state.fraction >= 1.0:
            return 1.0
        return min(1.0, state.fraction + self.increase_per_s * max(0.0, now - state.updated_at))

    def on_throttle(self, state: AIMDState, now: float) -> AIMDState:
        """The state after a throttle signal (a 429) at ``now``; unchanged within the cooldown."""
        if now - state.decreased_at < self.cooldown_s:
            return state
        current = self.fraction(state, now)
        return AIMDState(max(self.min_fraction, current * self.decrease), now, now)

    def recovery_s(self, state: AIMDState, now: float) -> float:
        """Seconds until the fraction is back to 1.0 (0 when it already is)."""
        return (1.0 - self.fraction(state, now)) / self.increase_per_s
