"""The profiler's pure math: decayed per-model counts and what routing makes of them (no I/O).

:class:`Counts` holds one model's exponentially decayed sums; :func:`decay_factor` ages them;
:func:`attempt_counts` is what one attempt adds; :func:`live_model` turns counts into the terms
routing uses (:class:`LiveModel`) under a :class:`ProfilePolicy`'s thresholds.

Latency percentiles come from a decayed histogram of observed latency over successful attempts
(``Counts.latency_hist``), in fixed log-spaced buckets: bucket 0 is [0, 10 ms), bucket ``i`` in
1..42 is [10 ms · 1.3^(i-1), 10 ms · 1.3^i), and bucket 43 is everything from 10 ms · 1.3^42 ≈ 610 s
on (:data:`LATENCY_EDGES_MS`, :func:`bucket_index`, :func:`bucket_bounds`). It decays like every
other sum, so a percentile weighs each sample by its decayed weight (recent calls count most).
:func:`latency_percentile` finds the
bucket holding the quantile and interpolates inside it (geometrically in a log bucket, linearly in
[0, 10 ms)). The error is bounded by the bucket: between 10 ms and 610 s the estimate and the true
(weighted) quantile lie in the same bucket, so their ratio is within [1/1.3, 1.3]
(:data:`LATENCY_BUCKET_RATIO`): a relative error of at most 30 %. Interpolation usually does
better; e.g. when all the weight sits in one bucket the median is the bucket's geometric middle,
within a factor √1.3 ≈ 1.14 of every latency in it. Below 10 ms the error is absolute (under
10 ms); from 610 s on the estimate is 610 s, a lower bound.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Iterable, Sequence
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

# The latency histogram's fixed buckets (see the module docstring for the error bound).
LATENCY_MIN_MS = 10.0
LATENCY_BUCKET_RATIO = 1.3
LATENCY_LOG_BUCKETS = 42
#: The bucket edges in ms: 10, 13, 16.9, ..., 10 · 1.3^42 ≈ 610,409 (43 edges between 44 buckets).
LATENCY_EDGES_MS: tuple[float, ...] = tuple(LATENCY_MIN_MS * LATENCY_BUCKET_RATIO ** i
                                            for i in range(LATENCY_LOG_BUCKETS + 1))
LATENCY_MAX_MS = LATENCY_EDGES_MS[-1]
LATENCY_BUCKETS = LATENCY_LOG_BUCKETS + 2  # + [0, 10 ms) and [610 s, inf)
EMPTY_HIST: tuple[float, ...] = (0.0,) * LATENCY_BUCKETS
PERCENTILES: tuple[float, ...] = (0.5, 0.95, 0.99)  # what LiveModel reports (p50_ms, p95_ms, p99_ms)


def bucket_index(latency_ms: float) -> int:
    """The histogram bucket of ``latency_ms``: 0 below 10 ms, 43 from ~610 s on. ValueError if < 0 or NaN."""
    if not latency_ms >= 0:
        raise ValueError(f"latency must be >= 0 ms, got {latency_ms!r}")
    return bisect.bisect_right(LATENCY_EDGES_MS, latency_ms)


def bucket_bounds(index: int) -> tuple[float, float | None]:
    """Bucket ``index``'s [low, high) in ms (high None for the last, open-ended bucket)."""
    if not 0 <= index < LATENCY_BUCKETS:
        raise ValueError(f"bucket index must be in [0, {LATENCY_BUCKETS}), got {index}")
    low = 0.0 if index == 0 else LATENCY_EDGES_MS[index - 1]
    return low, LATENCY_EDGES_MS[index] if index <= LATENCY_LOG_BUCKETS else None


def latency_percentile(hist: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0 <= q <= 1) of the latencies weighted in ``hist``; None if it is empty.

    The quantile's bucket is the first whose cumulative weight reaches ``q`` × the total; inside it
    the estimate moves from the bucket's low edge (no weight used yet) to its high edge (all of it)
    in proportion to the weight it needs: geometrically in a log bucket, linearly in [0, 10 ms).
    The open-ended last bucket answers its low edge (~610 s).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q!r}")
    if len(hist) != LATENCY_BUCKETS:
        raise ValueError(f"a latency histogram has {LATENCY_BUCKETS} buckets, got {len(hist)}")
    total = 0.0
    for w in hist:  # summed in order, exactly as the walk below accumulates it
        if w > 0:
            total += w
    if total <= 0:
        return None
    target = q * total
    seen = 0.0
    index = -1
    for index, w in enumerate(hist):
        if w <= 0:
            continue
        if seen + w >= target:
            return _within_bucket(index, (target - seen) / w)
        seen += w
    return _within_bucket(index, 1.0)  # unreachable but for rounding: the top of the last weighted bucket


def _within_bucket(index: int, fraction: float) -> float:
    fraction = min(1.0, max(0.0, fraction))
    if index == 0:
        return LATENCY_MIN_MS * fraction
    if index > LATENCY_LOG_BUCKETS:
        return LATENCY_MAX_MS
    return LATENCY_EDGES_MS[index - 1] * LATENCY_BUCKET_RATIO ** fraction


# One sample in each bucket, built once: every successful attempt adds one of these.
_ONE_SAMPLE: tuple[tuple[float, ...], ...] = tuple(
    tuple(1.0 if j == i else 0.0 for j in range(LATENCY_BUCKETS)) for i in range(LATENCY_BUCKETS))


def latency_sample(latency_ms: float) -> tuple[float, ...]:
    """The histogram of one sample at ``latency_ms`` (weight 1 in its bucket)."""
    return _ONE_SAMPLE[bucket_index(latency_ms)]


@dataclass(frozen=True, slots=True, repr=False)
class Counts:
    """Decayed sums for one model. Latency sums and the histogram cover successful attempts only.

    ``latency_n``, ``observed_ms`` and ``expected_ms`` (the latency ratio) count successes timed
    against a registry expectation; ``latency_hist`` (the percentiles) counts every success with an
    observed latency, one weight per bucket of :data:`LATENCY_EDGES_MS`.
    """

    ok: float = 0.0
    errors: float = 0.0          # 5xx, connection errors, malformed answers, auth failures
    timeouts: float = 0.0
    rate_limited: float = 0.0    # 429s: the provider is healthy but busy; not an error here
    latency_n: float = 0.0
    observed_ms: float = 0.0
    expected_ms: float = 0.0
    latency_hist: tuple[float, ...] = EMPTY_HIST

    def __post_init__(self) -> None:
        if len(self.latency_hist) != LATENCY_BUCKETS:
            raise ValueError(f"latency_hist needs {LATENCY_BUCKETS} buckets, got {len(self.latency_hist)}")

    def __repr__(self) -> str:
        scalars = ", ".join(f"{name}={getattr(self, name)!r}" for name in SCALAR_FIELDS)
        buckets = {i: w for i, w in enumerate(self.latency_hist) if w}  # non-empty buckets only
        return f"Counts({scalars}, latency_hist={buckets})"

    def __add__(self, other: Counts) -> Counts:
        a, b = self.latency_hist, other.latency_hist
        hist = a if b is EMPTY_HIST else b if a is EMPTY_HIST else tuple(map(operator.add, a, b))
        return Counts(self.ok + other.ok, self.errors + other.errors, self.timeouts + other.timeouts,
                      self.rate_limited + other.rate_limited, self.latency_n + other.latency_n,
                      self.observed_ms + other.observed_ms, self.expected_ms + other.expected_ms, hist)

    def scaled(self, factor: float) -> Counts:
        """Every sum multiplied by ``factor`` (decay)."""
        hist = self.latency_hist
        return Counts(self.ok * factor, self.errors * factor, self.timeouts * factor, self.rate_limited * factor,
                      self.latency_n * factor, self.observed_ms * factor, self.expected_ms * factor,
                      hist if hist is EMPTY_HIST else tuple(v * factor for v in hist))

    def values(self) -> tuple[float, ...]:
        """The sums in :data:`FIELDS` order (the order Redis stores them in): scalars, then buckets."""
        return (*_scalars(self), *self.latency_hist)

    @classmethod
    def from_values(cls, values: Iterable[float]) -> Counts:
        """The inverse of :meth:`values`."""
        v = tuple(values)
        if len(v) != len(FIELDS):
            raise ValueError(f"expected {len(FIELDS)} values, got {len(v)}")
        ok, errors, timeouts, rate_limited, latency_n, observed_ms, expected_ms, *hist = v
        return cls(ok, errors, timeouts, rate_limited, latency_n, observed_ms, expected_ms, tuple(hist))

    @property
    def hist_n(self) -> float:
        """The histogram's total (decayed) weight: successes with an observed latency."""
        return math.fsum(self.latency_hist)

    def percentile_ms(self, q: float) -> float | None:
        """The ``q``-quantile of observed latency (see :func:`latency_percentile`), None without samples."""
        return latency_percentile(self.latency_hist, q)

    @property
    def calls(self) -> float:
        """Attempts the provider served (ok or failed), 429s excluded: the error rate's denominator."""
        return self.ok + self.errors + self.timeouts

    @property
    def attempts(self) -> float:
        """Every attempt counted, 429s included."""
        return self.calls + self.rate_limited


#: The scalar sums of :class:`Counts`, in field order.
SCALAR_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Counts) if f.name != "latency_hist")
#: Redis hash fields of the histogram buckets: ``lat00`` .. ``lat43``.
BUCKET_FIELDS: tuple[str, ...] = tuple(f"lat{i:02d}" for i in range(LATENCY_BUCKETS))
#: Every stored sum, in :meth:`Counts.values` order (one Redis hash field each).
FIELDS: tuple[str, ...] = SCALAR_FIELDS + BUCKET_FIELDS
_scalars = operator.attrgetter(*SCALAR_FIELDS)  # every attempt adds Counts: keep it cheap


def decay_factor(elapsed_s: float, half_life_s: float) -> float:
    """Weight left on a sample ``elapsed_s`` old: ``0.5 ** (elapsed / half_life)`` (1 for elapsed <= 0)."""
    if elapsed_s <= 0:
        return 1.0
    return 0.5 ** (elapsed_s / half_life_s)


def attempt_counts(outcome: Outcome, observed_ms: float = 0.0, expected_ms: float = 0.0) -> Counts:
    """The counts one attempt adds.

    For a success: a latency-ratio sample when ``expected_ms`` is positive, and a histogram sample
    when ``observed_ms`` is (0, the default, means "not timed").
    """
    if outcome == "ok":
        timed = expected_ms > 0 and observed_ms >= 0
        return Counts(ok=1.0, latency_n=1.0 if timed else 0.0, observed_ms=observed_ms if timed else 0.0,
                      expected_ms=expected_ms if timed else 0.0,
                      latency_hist=latency_sample(observed_ms) if observed_ms > 0 else EMPTY_HIST)
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
    # Observed latency percentiles (ms) of recent successes; None below min_samples. Shown, not routed on.
    hist_samples: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None

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
        # Rounded first as error_rate is: decayed sums carry float noise (0.6250000001 -> "0.63").
        unhealthy = f"live error rate {round(err, 6):.2f} over {c.calls:.0f} calls"
    hist_n = c.hist_n
    p50, p95, p99 = (_rounded(c.percentile_ms(q)) if hist_n >= policy.min_samples else None for q in PERCENTILES)
    return LiveModel(latency_ratio=round(ratio, 6), error_rate=round(err, 6),
                     latency_samples=round(c.latency_n, 3), calls=round(c.calls, 3),
                     observed_ratio=None if raw_ratio is None else round(raw_ratio, 6),
                     observed_error_rate=None if raw_err is None else round(raw_err, 6),
                     rate_limited_rate=round(c.rate_limited / c.attempts, 6) if c.attempts > 0 else None,
                     unhealthy=unhealthy,
                     applied=c.latency_n >= policy.min_samples or c.calls >= policy.min_calls,
                     hist_samples=round(hist_n, 3), p50_ms=p50, p95_ms=p95, p99_ms=p99)


def _rounded(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 3)
