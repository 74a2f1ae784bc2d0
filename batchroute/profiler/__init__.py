"""The profiler: live per-model latency and error rates, recorded by the provider stage, read by routing.

The provider stage reports every attempt; the analyze stage reads a snapshot (cached for
``profile_cache_s`` per process, never a read per prompt) and hands it to the router::

    from batchroute.profiler import get_profiler
    prof = get_profiler()
    prof.observe("sim-gpt-4", "ok", observed_ms=840.0, expected_ms=1000.0)   # provider stage
    live = prof.snapshot(["sim-gpt-4", "sim-llama-3-8b"])                      # analyze stage
    live["sim-gpt-4"].latency_ratio, live["sim-gpt-4"].unhealthy, live["sim-gpt-4"].p95_ms

What is kept per model, as exponentially decayed sums (half-life ``profile_half_life_s``): attempts
by outcome (ok, error, timeout, 429) and, over successful attempts, the observed latency and the
latency the registry expected for that very call (:func:`batchroute.pricing.expected_latency_ms`,
the same figure the router uses), and a histogram of observed latency in 44 fixed log-spaced buckets
(10 ms to ~610 s, ratio 1.3), decayed the same way, from which :class:`LiveModel` reports p50, p95 and
p99 latency (None below ``profile_min_samples``; within a factor 1.3 of the true decayed quantile,
see :mod:`~batchroute.profiler.stats`). The percentiles are for people and history; routing uses
the ratio, not them. Routing multiplies the registry's expectation for a prompt by
the live ratio ``observed / expected``: the prompt's length and style stay factored out, and a
model without recent data keeps ratio 1, so models with and without live data are compared in
the same unit (what the registry says, corrected by what was seen). See :func:`live_model` for the
thresholds and :func:`batchroute.routing.decide` for how the terms enter the score.

Backends (``BATCHROUTE_PROFILE_BACKEND``): ``redis`` shares the figures between every worker of
every host (one hash per model, updated by an atomic Lua script); ``memory`` keeps them in this
process (the embedded default, where both stages share the process); ``off`` records nothing;
``auto`` picks ``redis`` when a Redis URL is configured. A backend failure never fails routing
or a call: the snapshot keeps its last figures and the attempt's sample is dropped, with a warning.

History: a process that records attempts (the provider stage) also stores the figures in the
database, one ``profile_snapshots`` row per model with data, at most every ``profile_snapshot_s``
(``BATCHROUTE_PROFILE_SNAPSHOT_S``, 60; 0 = never), checked when it flushes and written off the
event loop. With the Redis store one process of the whole deployment writes each period (a
``SET NX`` claim), so rows are the shared figures; with the in-process store each process writes
its own (``source`` tells them apart). A database or Redis failure there is logged and skipped,
never raised into a call. Each write also deletes rows older than
``profile_snapshot_retention_days`` (30; 0 = keep). ``batchroute profile --history`` reads them
back; ``batchroute profile --prune`` deletes old ones on demand.

Modules: :mod:`~batchroute.profiler.stats` (the pure math: counts, decay, the latency histogram and
its percentiles, routing's view), :mod:`~batchroute.profiler.stores` (the in-process and Redis
stores) and :mod:`~batchroute.profiler.snapshots` (database snapshots and their history); this
module holds the per-process :class:`Profiler` and :func:`get_profiler`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from batchroute.errors import BatchrouteError
from batchroute.profiler.stats import (
    EMPTY_HIST,
    LATENCY_BUCKET_RATIO,
    LATENCY_BUCKETS,
    LATENCY_EDGES_MS,
    MAX_LATENCY_RATIO,
    MAX_PENALISED_ERROR_RATE,
    MIN_LATENCY_RATIO,
    OUTCOMES,
    PERCENTILES,
    Counts,
    LiveModel,
    Outcome,
    ProfilePolicy,
    attempt_counts,
    bucket_bounds,
    bucket_index,
    decay_factor,
    latency_percentile,
    latency_sample,
    live_model,
    outcome_of,
)
from batchroute.profiler.stores import (
    STORES,
    TTL_HALF_LIVES,
    MemoryProfileStore,
    ProfileStore,
    RedisProfileStore,
    backend_name,
    new_profile_store,
)

log = logging.getLogger(__name__)


class Profiler:
    """Records attempts (provider stage) and serves a cached snapshot (analyze stage). Thread-safe.

    With a remote store, observations are summed in this process and written at most every
    ``flush_s`` (one script call for all models), so the hot path never waits on Redis.
    ``store=None`` profiles nothing (``snapshot`` is empty).

    With ``snapshot_s > 0`` and a ``snapshot_sink``, a flush at least ``snapshot_s`` after the last
    snapshot (or after creation) calls ``snapshot_sink(self)`` (``get_profiler``'s writes every
    registry model to the database), off the event loop if one runs in the flushing thread, when
    ``store.claim_snapshot`` agrees; when another process holds the period's claim, it asks again
    after ``snapshot_s / 4``. Whatever the sink raises is logged, never raised.
    """

    def __init__(self, store: ProfileStore | None, policy: ProfilePolicy | None = None, *, cache_s: float = 2.0,
                 flush_s: float = 1.0, clock: Callable[[], float] = time.monotonic, snapshot_s: float = 0.0,
                 snapshot_sink: Callable[[Profiler], object] | None = None) -> None:
        self.store = store
        self.policy = policy or ProfilePolicy()
        self.cache_s = cache_s
        self.flush_s = flush_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, Counts] = {}
        self._flush_due: float | None = None  # when the scheduled flush should run (None: none scheduled)
        self._cached: dict[str, LiveModel] = {}
        self._cached_key: tuple[str, ...] = ()
        self._cached_at: float | None = None
        self.snapshot_s = snapshot_s
        self._snapshot_sink = snapshot_sink
        # When the next snapshot is due (None: snapshots off); _snapshotting: one is being written.
        self._snapshot_due = clock() + snapshot_s if snapshot_sink is not None and snapshot_s > 0 else None
        self._snapshotting = False

    def observe(self, model: str, outcome: Outcome, observed_ms: float = 0.0, expected_ms: float = 0.0) -> None:
        """Count one attempt of ``model`` (``observed_ms``/``expected_ms`` for a success). Never raises."""
        if self.store is None:
            return
        add = attempt_counts(outcome, observed_ms, expected_ms)
        now = self._clock()
        with self._lock:
            self._pending[model] = self._pending.get(model, Counts()) + add
            # A flush whose loop stopped before it ran (a closed runtime) is scheduled again.
            if self._flush_due is not None and now < self._flush_due + max(1.0, 2 * self.flush_s):
                return
            self._flush_due = now + self.flush_s
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self.store.local or self.flush_s <= 0 or loop is None:
            self.flush()
            return
        # Written from a thread after flush_s: the loop carrying the calls never waits on Redis.
        loop.call_later(self.flush_s, lambda: loop.run_in_executor(None, self.flush))

    def flush(self) -> None:
        """Write what was observed since the last flush, then a database snapshot if one is due.

        Never raises (a failed batch is dropped, a failed snapshot skipped, with a warning).
        """
        with self._lock:
            batch, self._pending = self._pending, {}
            self._flush_due = None
        if not batch or self.store is None:
            return
        try:
            self.store.record(batch)
        except BatchrouteError as exc:
            log.warning("profiler: %d model sample(s) dropped: %s", len(batch), exc)
        self._snapshot_if_due()

    def _snapshot_if_due(self) -> None:
        due = self._snapshot_due
        if due is None:
            return
        now = self._clock()  # checked without the lock first: a memory store flushes on every attempt
        if now < due:
            return
        with self._lock:
            if self._snapshotting or self._snapshot_due is None or now < self._snapshot_due:
                return
            self._snapshotting = True
            self._snapshot_due = now + self.snapshot_s
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._write_snapshot()
            return
        try:  # the loop carrying the calls never waits on the database
            loop.run_in_executor(None, self._write_snapshot)
        except RuntimeError as exc:  # the loop's executor is shutting down
            log.warning("profiler: snapshot not written: %s", exc)
            with self._lock:
                self._snapshotting = False

    def _write_snapshot(self) -> None:
        try:
            if self.store is None or self._snapshot_sink is None:
                return
            if not self.store.claim_snapshot(self.snapshot_s):
                # Another process writes this period's snapshot; ask again within the period.
                with self._lock:
                    self._snapshot_due = self._clock() + self.snapshot_s / 4
                return
            self._snapshot_sink(self)
        except BatchrouteError as exc:
            log.warning("profiler: snapshot not written: %s", exc)
        except Exception:
            # A snapshot is bookkeeping beside the calls: even a bug in it must not fail one.
            log.exception("profiler: snapshot failed")
        finally:
            with self._lock:
                self._snapshotting = False

    def counts(self, models: Sequence[str]) -> dict[str, Counts]:
        """The store's decayed counts now, uncached (raises BrokerError if the store fails)."""
        if self.store is None:
            return {m: Counts() for m in models}
        return self.store.read(list(models))

    def snapshot(self, models: Iterable[str]) -> dict[str, LiveModel]:
        """Routing's live view of ``models``, re-read at most every ``cache_s``. Never raises.

        When the store cannot be read, the last snapshot is kept (empty at first) and the read
        is tried again after ``cache_s``.
        """
        key = tuple(models)
        now = self._clock()
        with self._lock:
            if (self._cached_at is not None and key == self._cached_key
                    and now - self._cached_at < self.cache_s):
                return self._cached
        if self.store is None:
            return {}
        try:
            live = {m: live_model(c, self.policy) for m, c in self.store.read(list(key)).items()}
        except BatchrouteError as exc:
            log.warning("profiler: live figures unavailable, routing on the last ones: %s", exc)
            with self._lock:
                self._cached_at = now
                self._cached_key = key
                return self._cached
        with self._lock:
            self._cached, self._cached_key, self._cached_at = live, key, now
        return live

    def invalidate(self) -> None:
        """Forget the cached snapshot (the next ``snapshot`` reads the store)."""
        with self._lock:
            self._cached_at = None

    def close(self) -> None:
        """Flush and release the store."""
        self.flush()
        if self.store is not None:
            self.store.close()


_profiler: Profiler | None = None
_profiler_key: tuple[int, object] | None = None
_profiler_lock = threading.Lock()


def get_profiler() -> Profiler:
    """This process's profiler, built from settings on first use.

    Rebuilt in a forked child and whenever the settings object changes (tests and
    ``settings_override`` rebuild settings), so in-process figures never leak between configurations.
    """
    global _profiler, _profiler_key
    from batchroute.settings import get_settings

    settings = get_settings()
    key = (os.getpid(), settings)
    with _profiler_lock:
        if _profiler is None or _profiler_key is None or _profiler_key[0] != key[0] or _profiler_key[1] is not settings:
            _profiler = Profiler(new_profile_store(settings), ProfilePolicy.from_settings(settings),
                                 cache_s=settings.profile_cache_s, flush_s=settings.profile_flush_s,
                                 snapshot_s=settings.profile_snapshot_s, snapshot_sink=snapshot_registry_models)
            _profiler_key = key
        return _profiler


def snapshot_registry_models(profiler: Profiler) -> int:
    """``get_profiler``'s snapshot sink: every registry model's figures into the configured database."""
    from batchroute.profiler.snapshots import snapshot_to_db
    from batchroute.registry import get_registry

    return snapshot_to_db(profiler, [m.name for m in get_registry().models])


__all__ = [
    "EMPTY_HIST",
    "LATENCY_BUCKETS",
    "LATENCY_BUCKET_RATIO",
    "LATENCY_EDGES_MS",
    "MAX_LATENCY_RATIO",
    "MAX_PENALISED_ERROR_RATE",
    "MIN_LATENCY_RATIO",
    "OUTCOMES",
    "PERCENTILES",
    "STORES",
    "TTL_HALF_LIVES",
    "Counts",
    "LiveModel",
    "MemoryProfileStore",
    "Outcome",
    "ProfilePolicy",
    "ProfileStore",
    "Profiler",
    "RedisProfileStore",
    "attempt_counts",
    "backend_name",
    "bucket_bounds",
    "bucket_index",
    "decay_factor",
    "get_profiler",
    "latency_percentile",
    "latency_sample",
    "live_model",
    "new_profile_store",
    "outcome_of",
    "snapshot_registry_models",
]
