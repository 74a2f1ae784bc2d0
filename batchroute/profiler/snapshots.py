"""The profiler's figures kept in the database: periodic snapshots and their history.

The live profile decays in seconds; a snapshot keeps what it said at one moment, one
:class:`~batchroute.tables.ProfileSnapshot` row per model with data. Provider workers take them at
most every ``profile_snapshot_s`` (see :class:`batchroute.profiler.Profiler`); with the Redis store,
one worker of the whole deployment per period (``claim_snapshot``)::

    from batchroute.profiler.snapshots import snapshot_to_db, snapshot_history
    snapshot_to_db(get_profiler(), ["sim-gpt-4", "sim-llama-3-8b"])          # -> rows written
    snapshot_history(model="sim-gpt-4", since=parse_since("2026-11-28T09:00"))  # -> list of dicts
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from batchroute.errors import InputError, StorageError
from batchroute.profiler.stats import Counts, ProfilePolicy, live_model

if TYPE_CHECKING:
    from batchroute.profiler import Profiler
    from batchroute.profiler.stores import ProfileStore
    from batchroute.tables import ProfileSnapshot

# A model whose decayed attempts fell below this (no attempt for ~7 half-lives) gets no row.
MIN_SNAPSHOT_ATTEMPTS = 0.01
DEFAULT_HISTORY_HOURS = 24.0
DEFAULT_HISTORY_LIMIT = 1000


def snapshot_rows(counts: Mapping[str, Counts], policy: ProfilePolicy, taken_at: datetime,
                  source: str = "") -> list[ProfileSnapshot]:
    """One row per model of ``counts`` with data (pure: nothing is written).

    Rates and the latency ratio are the observed ones, whatever the sample count (None without
    any sample); the percentiles, ``unhealthy`` and ``reason`` are what routing sees under ``policy``.
    """
    from batchroute.tables import ProfileSnapshot

    if taken_at.tzinfo is None:
        raise ValueError("taken_at must be timezone-aware (UTC)")
    rows = []
    for model, c in counts.items():
        if c.attempts < MIN_SNAPSHOT_ATTEMPTS:
            continue
        live = live_model(c, policy)
        rows.append(ProfileSnapshot(
            taken_at=taken_at.astimezone(UTC), model=model, source=source, ok=round(c.ok, 6),
            errors=round(c.errors, 6), timeouts=round(c.timeouts, 6), rate_limited=round(c.rate_limited, 6),
            latency_samples=round(c.hist_n, 6), error_rate=live.observed_error_rate,
            rate_429=live.rate_limited_rate, latency_ratio=live.observed_ratio, p50_ms=live.p50_ms,
            p95_ms=live.p95_ms, p99_ms=live.p99_ms, unhealthy=live.unhealthy is not None, reason=live.unhealthy))
    return rows


def snapshot_to_db(source: Profiler | ProfileStore, models: Sequence[str], now: datetime | None = None, *,
                   policy: ProfilePolicy | None = None, url: str | None = None) -> int:
    """Read ``models``' figures now (uncached) and insert one row each for those with data.

    ``source`` is a :class:`~batchroute.profiler.Profiler` (its store and policy) or a bare store
    (``policy``, default: the settings' thresholds). ``now`` (default: the current UTC time) is
    the rows' ``taken_at``; ``url`` the database (default: the configured one). Returns the rows
    written. Raises BrokerError when the store cannot be read, StorageError when the database fails.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from batchroute.db import session_scope
    from batchroute.profiler import Profiler

    if isinstance(source, Profiler):
        store, policy = source.store, policy or source.policy
    else:
        store = source
    if store is None:
        return 0
    if policy is None:
        from batchroute.settings import get_settings

        policy = ProfilePolicy.from_settings(get_settings())
    rows = snapshot_rows(store.read(list(models)), policy, now or datetime.now(UTC), store.source)
    if not rows:
        return 0
    try:
        with session_scope(url) as session:
            session.add_all(rows)
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot write profile snapshots: {_db_reason(exc)}") from exc
    return len(rows)


def parse_since(value: str) -> datetime:
    """An ISO 8601 time or date (``2026-11-28``, ``2026-11-28T09:30``, ``...+01:00``) as aware UTC.

    A time without an offset is UTC. Raises InputError (field ``since``) for anything else.
    """
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InputError(f"bad time {value!r}: expected ISO 8601, e.g. 2026-11-28 or 2026-11-28T09:30:00Z "
                         "(UTC unless an offset is given)", field="since") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def history_since(since: str | None = None, hours: float | None = None, now: datetime | None = None) -> datetime:
    """The start of a history window: ``since`` (ISO), or ``hours`` back (default 24). InputError if bad."""
    if since is not None and hours is not None:
        raise InputError("give --since or --hours, not both", field="since")
    if since is not None:
        return parse_since(since)
    hours = DEFAULT_HISTORY_HOURS if hours is None else hours
    if not hours > 0:
        raise InputError(f"--hours must be > 0, got {hours:g}", field="hours")
    return (now or datetime.now(UTC)) - timedelta(hours=hours)


def snapshot_history(model: str | None = None, since: datetime | None = None,
                     limit: int = DEFAULT_HISTORY_LIMIT, url: str | None = None) -> list[dict[str, Any]]:
    """Stored snapshots, oldest first: ``model``'s only if given, from ``since`` on, the newest ``limit``.

    Raises StorageError when the database cannot be read (e.g. not migrated: ``batchroute migrate``).
    """
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import col, select

    from batchroute.db import session_scope
    from batchroute.tables import ProfileSnapshot

    if limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}", field="limit")
    query = select(ProfileSnapshot)
    if model is not None:
        query = query.where(ProfileSnapshot.model == model)
    if since is not None:
        query = query.where(col(ProfileSnapshot.taken_at) >= since)
    query = query.order_by(col(ProfileSnapshot.taken_at).desc(), col(ProfileSnapshot.id).desc()).limit(limit)
    try:
        with session_scope(url) as session:
            rows = list(session.exec(query).all())
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot read profile snapshots: {_db_reason(exc)} "
                           "(is the database migrated? `batchroute migrate`)") from exc
    return [snapshot_dict(r) for r in reversed(rows)]


def snapshot_dict(row: ProfileSnapshot) -> dict[str, Any]:
    """A snapshot row as JSON-ready data (``taken_at`` in ISO 8601, UTC)."""
    data = {name: getattr(row, name) for name in type(row).model_fields}  # column order
    data["taken_at"] = row.taken_at.astimezone(UTC).isoformat()
    return data


def _db_reason(exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).strip().splitlines()[0]
