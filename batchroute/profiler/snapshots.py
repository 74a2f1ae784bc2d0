"""The profiler's figures kept in the database: periodic snapshots and their history.

The live profile decays in seconds; a snapshot keeps what it said at one moment, one
:class:`~batchroute.tables.ProfileSnapshot` row per model with data. Provider workers take them at
most every ``profile_snapshot_s`` (see :class:`batchroute.profiler.Profiler`); with the Redis store,
one worker of the whole deployment per period (``claim_snapshot``)::

    from batchroute.profiler.snapshots import prune_snapshots, retention_cutoff, snapshot_history, snapshot_to_db
    snapshot_to_db(get_profiler(), ["sim-gpt-4", "sim-llama-3-8b"])          # -> rows written
    snapshot_history(model="sim-gpt-4", since=parse_since("2026-11-28T09:00"))  # -> list of dicts
    prune_snapshots(retention_cutoff(datetime.now(UTC), 30))                    # -> rows deleted

Retention: right after inserting its rows, :func:`snapshot_to_db` deletes every snapshot (of any
``source``) taken more than ``profile_snapshot_retention_days`` (``BATCHROUTE_PROFILE_SNAPSHOT_RETENTION_DAYS``,
30; 0 = keep forever) before the new rows' ``taken_at``: one ``DELETE ... WHERE taken_at < cutoff``
on the ``taken_at`` index, in its own transaction after the insert has committed, so each periodic
delete touches only the few rows that aged out since the last one (the first write after an upgrade
deletes the whole backlog in one statement; run the command below first, at a quiet time, when the
table is large). A failed delete is logged and never raised (the new rows stay written); the next
snapshot tries again. ``batchroute profile --prune [--older-than-days N]`` does the same on demand
(:func:`prune_cutoff`, :func:`prune_snapshots`), e.g. once after lowering the retention.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from batchroute.errors import BatchrouteError, InputError, StorageError
from batchroute.profiler.stats import Counts, ProfilePolicy, live_model

if TYPE_CHECKING:
    from batchroute.profiler import Profiler
    from batchroute.profiler.stores import ProfileStore
    from batchroute.tables import ProfileSnapshot

log = logging.getLogger(__name__)

# A model whose decayed attempts fell below this (no attempt for ~7 half-lives) gets no row.
MIN_SNAPSHOT_ATTEMPTS = 0.01
DEFAULT_HISTORY_HOURS = 24.0
DEFAULT_HISTORY_LIMIT = 1000
# Rows per DELETE statement (and transaction) when old snapshots are pruned.
PRUNE_BATCH_ROWS = 10_000


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
                   policy: ProfilePolicy | None = None, url: str | None = None,
                   retention_days: float | None = None) -> int:
    """Read ``models``' figures now (uncached), insert one row each for those with data, prune old rows.

    ``source`` is a :class:`~batchroute.profiler.Profiler` (its store and policy) or a bare store
    (``policy``, default: the settings' thresholds). ``now`` (default: the current UTC time) is
    the rows' ``taken_at``; ``url`` the database (default: the configured one). After the insert
    has committed, snapshots taken before ``now`` minus ``retention_days`` (default: the setting
    ``profile_snapshot_retention_days``; 0 = keep forever) are deleted; a failure there is logged,
    never raised. Nothing is written or deleted when no model has data. Returns the rows written.
    Raises BrokerError when the store cannot be read, StorageError when the insert fails.
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
    taken_at = now or datetime.now(UTC)
    rows = snapshot_rows(store.read(list(models)), policy, taken_at, store.source)
    if not rows:
        return 0
    try:
        with session_scope(url) as session:
            session.add_all(rows)
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot write profile snapshots: {_db_reason(exc)}") from exc
    _prune_after_snapshot(taken_at, retention_days, url)
    return len(rows)


def _prune_after_snapshot(taken_at: datetime, retention_days: float | None, url: str | None) -> None:
    """The writer's retention step: delete what aged out; log, never raise (the snapshot is stored)."""
    try:
        if retention_days is None:
            from batchroute.settings import get_settings

            retention_days = get_settings().profile_snapshot_retention_days
        cutoff = retention_cutoff(taken_at, retention_days)
        if cutoff is None:
            return
        deleted = prune_snapshots(cutoff, url)
    except BatchrouteError as exc:
        log.warning("profiler: old snapshots not pruned: %s", exc)
        return
    except Exception:
        # Bookkeeping after the snapshot is stored: even a bug here must not fail the writer.
        log.exception("profiler: pruning old snapshots failed")
        return
    if deleted:
        log.debug("profiler: %d snapshot(s) taken before %s deleted", deleted, cutoff.isoformat())


def retention_cutoff(now: datetime, retention_days: float) -> datetime | None:
    """The cutoff of a ``retention_days`` retention at ``now``: snapshots taken before it go (pure).

    None when nothing is ever deleted: a retention of 0 (keep forever), or one reaching back beyond
    any representable time (``inf``, 1e12). Raises ValueError for a negative or NaN retention or a
    naive ``now``.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if math.isnan(retention_days) or retention_days < 0:
        raise ValueError(f"retention must be >= 0 days, got {retention_days:g}")
    if retention_days == 0:
        return None
    now = now.astimezone(UTC)
    try:
        return now - timedelta(days=retention_days)
    except OverflowError:  # before year 1 (or a timedelta beyond 999,999,999 days): nothing is that old
        return None


def prune_cutoff(older_than_days: float | None = None, now: datetime | None = None) -> datetime | None:
    """The cutoff of ``batchroute profile --prune``: ``older_than_days`` (default: the retention setting) back.

    None when nothing is to be deleted (no flag and the setting is 0: retention off). Raises
    InputError (field ``older_than_days``) unless a given value is > 0: 0 would mean "keep forever"
    in the setting but "everything" here, so it is refused rather than guessed.
    """
    now = now or datetime.now(UTC)
    if older_than_days is None:
        from batchroute.settings import get_settings

        return retention_cutoff(now, get_settings().profile_snapshot_retention_days)
    if not older_than_days > 0:  # NaN too
        raise InputError(f"--older-than-days must be a number of days > 0, got {older_than_days:g}",
                         field="older_than_days")
    return retention_cutoff(now, older_than_days)


def prune_snapshots(older_than: datetime, url: str | None = None, batch_rows: int = PRUNE_BATCH_ROWS) -> int:
    """Delete every snapshot taken before ``older_than`` (aware), of any model and source; rows deleted.

    Oldest first, at most ``batch_rows`` rows per ``DELETE ... WHERE id IN (SELECT id ... WHERE
    taken_at < :older_than ORDER BY taken_at LIMIT n)`` (the ``ix_profile_snapshots_taken`` index),
    each committed on its own: the first prune after an upgrade or a lowered retention deletes a
    large backlog without one long transaction holding its locks, and what was deleted before a
    failure stays deleted. Raises StorageError when the database fails (e.g. not migrated).
    """
    from sqlalchemy import delete, select
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import col

    from batchroute.db import session_scope
    from batchroute.tables import ProfileSnapshot

    if older_than.tzinfo is None:
        raise ValueError("older_than must be timezone-aware (UTC)")
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    oldest = (select(col(ProfileSnapshot.id)).where(col(ProfileSnapshot.taken_at) < older_than.astimezone(UTC))
              .order_by(col(ProfileSnapshot.taken_at)).limit(batch_rows))
    query = delete(ProfileSnapshot).where(col(ProfileSnapshot.id).in_(oldest.scalar_subquery()))
    total = 0
    try:
        while True:
            with session_scope(url) as session:
                deleted = int(session.exec(query).rowcount)
            total += deleted
            if deleted < batch_rows:
                return total
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot delete profile snapshots ({total} deleted before): {_db_reason(exc)} "
                           "(is the database migrated? `batchroute migrate`)") from exc


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
