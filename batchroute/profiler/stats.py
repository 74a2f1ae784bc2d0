"""The profiler's pure math: decayed per-model counts and what routing makes of them (no I/O).

:class:`Counts` holds one model's exponentially decayed sums; :func:`decay_factor` ages them;
:func:`attempt_counts` is what one attempt adds; :func:`live_model` turns counts into the terms
routing uses (:class:`LiveModel`) under a :class:`ProfilePolicy`'s thresholds.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from batchroute.errors import ProviderAuthError, ProviderError, ProviderRateLimited, ProviderTimeout

if TYPE_CHECKING:
    from batchroute.settings import Settings

Outcome = Literal["ok", "error", "timeout", "rate_limited"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "error", "timeout", "rate_limited")
# The live ratio is clamped: a misconfigured profile (or a simulator at time scale 0) must not
# make a model look free or unusable on latency alone; health is the error rate's job.
MIN_LATENCY_RATIO = 0.1
MAX_LATENCY_RATIO = 10.0
# The error-rate penalty 1 / (1 - rate) is capped at this rate (a 10x latency factor).
MAX_PENALISED_ERROR_RATE = 0.9


@dataclass(frozen=True, slots=True)
class Counts:
    """Decayed sums for one model. Latency sums cover successful attempts only."""

    ok: float = 0.0
    errors: float = 0.0          # 5xx, connection errors, malformed answers, auth failures
    timeouts: float = 0.0
    rate_limited: float = 0.0    # 429s: the provider is healthy but busy; not an error here
    latency_n: float = 0.0
    observed_ms: float = 0.0
    expected_ms: float = 0.0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*map(operator.add, _values(self), _values(other)))

    def scaled(self, factor: float) -> Counts:
        """Every sum multiplied by ``factor`` (decay)."""
        return Counts(*(v * factor for v in _values(self)))

    def values(self) -> tuple[float, ...]:
        """The sums in field order (the order Redis stores them in)."""
        return _values(self)  # type: ignore[no-any-return]

    @property
    def calls(self) -> float:
        """Attempts the provider served (ok or failed), 429s excluded: the error rate's denominator."""
        return self.ok + self.errors + self.timeouts

    @property
    def attempts(self) -> float:
        """Every attempt counted, 429s included."""
        return self.calls + self.rate_limited


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Counts))
_values = operator.attrgetter(*FIELDS)  # every attempt adds Counts: keep it cheap


def decay_factor(elapsed_s: float, half_life_s: float) -> float:
    """Weight left on a sample ``elapsed_s`` old: ``0.5 ** (elapsed / half_life)`` (1 for elapsed <= 0)."""
    if elapsed_s <= 0:
        return 1.0
    return 0.5 ** (elapsed_s / half_life_s)


def attempt_counts(outcome: Outcome, observed_ms: float = 0.0, expected_ms: float = 0.0) -> Counts:
    """The counts one attempt adds; latency only for a success with a positive expectation."""
    if outcome == "ok":
        timed = expected_ms > 0 and observed_ms >= 0
        return Counts(ok=1.0, latency_n=1.0 if timed else 0.0, observed_ms=observed_ms if timed else 0.0,
                      expected_ms=expected_ms if timed else 0.0)
    if outcome == "error":
        return Counts(errors=1.0)
    if outcome == "timeout":
        return Counts(timeouts=1.0)
    if outcome == "rate_limited":
        return Counts(rate_limited=1.0)
    raise ValueError(f"unknown outcome {outcome!r}; expected one of {OUTCOMES}")


def outcome_of(err: ProviderError | None) -> Outcome | None:
    """How an attempt counts: None for a bad request (our fault, says nothing of the model)."""
    if err is None:
        return "ok"
    if isinstance(err, ProviderRateLimited):
        return "rate_limited"
    if isinstance(err, ProviderTimeout):
        return "timeout"
    if isinstance(err, ProviderAuthError) or err.retryable:
        return "error"
    return None


@dataclass(frozen=True)
class ProfilePolicy:
    """When live figures are trusted and when a model counts as unhealthy."""

    min_samples: int = 20            # successful timed attempts before the latency ratio is used
    min_calls: int = 20              # served attempts before the error rate is used
    unhealthy_error_rate: float = 0.5

    @classmethod
    def from_settings(cls, settings: Settings) -> ProfilePolicy:
        """The thresholds named by ``BATCHROUTE_PROFILE_*`` / ``BATCHROUTE_UNHEALTHY_ERROR_RATE``."""
        return cls(settings.profile_min_samples, settings.profile_min_calls, settings.unhealthy_error_rate)


@dataclass(frozen=True)
class LiveModel:
    """What routing uses of one model's live figures (and the raw figures, for ``explain``)."""

    latency_ratio: float = 1.0               # applied: observed/expected, clamped; 1 below min_samples
    error_rate: float = 0.0                  # applied: 0 below min_calls
    latency_samples: float = 0.0
    calls: float = 0.0
    observed_ratio: float | None = None      # raw, whatever the sample count (None: no samples)
    observed_error_rate: float | None = None
    rate_limited_rate: float | None = None   # 429s / attempts (shown, not used: the rate limiter paces)
    unhealthy: str | None = None             # why the router should avoid the model, if it should
    applied: bool = False                    # enough recent data for the ratio or the error rate to count

    @property
    def latency_factor(self) -> float:
        """Multiplier on the registry's expected latency: the live ratio, then ``1 / (1 - error rate)``.

        A failed attempt costs about an attempt's time before the retry, so a model failing a
        fraction ``e`` of its calls takes ``1 / (1 - e)`` attempts per answer on average.
        """
        return self.latency_ratio / (1.0 - min(self.error_rate, MAX_PENALISED_ERROR_RATE))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``batchroute profile --json``)."""
        return {**asdict(self), "latency_factor": self.latency_factor}


def live_model(c: Counts, policy: ProfilePolicy) -> LiveModel:
    """Routing's view of a model's decayed counts under ``policy`` (see :class:`LiveModel`)."""
    raw_ratio = c.observed_ms / c.expected_ms if c.latency_n > 0 and c.expected_ms > 0 else None
    raw_err = (c.errors + c.timeouts) / c.calls if c.calls > 0 else None
    ratio = 1.0
    if raw_ratio is not None and c.latency_n >= policy.min_samples:
        ratio = min(MAX_LATENCY_RATIO, max(MIN_LATENCY_RATIO, raw_ratio))
    err = raw_err if raw_err is not None and c.calls >= policy.min_calls else 0.0
    unhealthy = None
    if c.calls >= policy.min_calls and err >= policy.unhealthy_error_rate:
        unhealthy = f"live error rate {err:.2f} over {c.calls:.0f} calls"
    return LiveModel(latency_ratio=round(ratio, 6), error_rate=round(err, 6),
                     latency_samples=round(c.latency_n, 3), calls=round(c.calls, 3),
                     observed_ratio=None if raw_ratio is None else round(raw_ratio, 6),
                     observed_error_rate=None if raw_err is None else round(raw_err, 6),
                     rate_limited_rate=round(c.rate_limited / c.attempts, 6) if c.attempts > 0 else None,
                     unhealthy=unhealthy,
                     applied=c.latency_n >= policy.min_samples or c.calls >= policy.min_calls)
