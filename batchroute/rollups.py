"""Daily cost rollups: ledger totals kept current as attempts land, and the tools to check and repair them.

``cost_rollup_daily`` holds one row per day x tenant x job x model x provider x latency class x
domain x tag set x writer shard. :mod:`batchroute.ledger` updates it in the transaction that inserts
the attempts, and only for attempt rows that were actually inserted, so a replayed write never counts
twice. The same SQL (:func:`rollup_upsert_sql`) serves the incremental update and
:func:`rebuild_rollups`, so the two cannot disagree on how an attempt is counted.

Tags are stored once per distinct tag set: ``tag_set_id(tags)`` is a hash of the canonical tag set,
carried by each attempt and rollup row; ``tag_set_items`` maps it to its key/value pairs, so tag
queries are plain joins on both Postgres and SQLite (no JSON functions).

Repair and check, from Python::

    from batchroute.rollups import ledger_vs_rollup_diff, rebuild_rollups
    assert ledger_vs_rollup_diff() == []
    rebuild_rollups()  # recompute everything from the ledger
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection, Table, bindparam, text

from batchroute.tables import CostRollupDaily, TagSetItem

ROLLUP: Table = CostRollupDaily.__table__  # type: ignore[attr-defined]
TAG_ITEMS: Table = TagSetItem.__table__  # type: ignore[attr-defined]
# Writer processes spread over this many rollup rows per key (see ``writer_shard``).
ROLLUP_SHARDS = 16

KEY_COLUMNS = ("day", "tenant", "job_id", "model", "provider", "latency_class", "domain", "tag_set")
SUM_COLUMNS = ("attempts", "requests", "failed_attempts", "estimated_attempts", "prompt_tokens",
               "completion_tokens", "cached_tokens", "cost_usd", "baseline_cost_usd")
# How one attempt row contributes to each sum (SQL over the attempts columns).
_SUM_EXPRS = {
    "attempts": "COUNT(*)",
    "requests": "SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END)",
    "failed_attempts": "SUM(CASE WHEN status = 'ok' THEN 0 ELSE 1 END)",
    "estimated_attempts": "SUM(CASE WHEN usage_estimated THEN 1 ELSE 0 END)",
    "prompt_tokens": "SUM(prompt_tokens)",
    "completion_tokens": "SUM(completion_tokens)",
    "cached_tokens": "SUM(cached_tokens)",
    "cost_usd": "SUM(cost_usd)",
    "baseline_cost_usd": "SUM(baseline_cost_usd)",
}


def tag_set_id(tags: Mapping[str, str] | None) -> str:
    """The id of a tag set: a hash of its canonical JSON, or '' for no tags. Stable forever (stored)."""
    if not tags:
        return ""
    canonical = json.dumps({str(k): str(v) for k, v in tags.items()}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def writer_shard() -> int:
    """This process's rollup shard: concurrent writer processes update different rows of a key."""
    return os.getpid() % ROLLUP_SHARDS


def dialect_insert(conn: Connection, table: Table) -> Any:
    """``insert(table)`` of the connection's dialect (for ON CONFLICT clauses)."""
    from sqlalchemy.dialects import postgresql, sqlite

    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def ensure_tag_sets(conn: Connection, tag_maps: Iterable[Mapping[str, str] | None]) -> None:
    """Store the key/value items of each distinct non-empty tag set (skipping the known ones)."""
    items: dict[tuple[str, str], str] = {}
    for tags in tag_maps:
        ts = tag_set_id(tags)
        if ts:
            for k, v in (tags or {}).items():
                items[(ts, str(k))] = str(v)
    if items:
        rows = [{"tag_set": ts, "key": k, "value": v} for (ts, k), v in sorted(items.items())]
        conn.execute(dialect_insert(conn, TAG_ITEMS).values(rows).on_conflict_do_nothing())


def day_sql(dialect: str, column: str = "created_at") -> str:
    """SQL for the UTC calendar day of a timestamp column (identifiers only, never user input)."""
    if dialect == "postgresql":
        return f"CAST(({column} AT TIME ZONE 'UTC') AS DATE)"
    return f"date({column})"  # SQLite stores UTC text


def _key_exprs(dialect: str) -> list[str]:
    return [day_sql(dialect), "tenant", "job_id", "model", "provider", "COALESCE(latency_class, '')",
            "COALESCE(domain, '')", "tag_set"]


def aggregate_sql(dialect: str, source: str, where: str = "1 = 1", shard: bool = False) -> str:
    """``SELECT key columns[, :shard], sums FROM source WHERE ... GROUP BY key`` over attempt rows."""
    keys = _key_exprs(dialect)
    cols = [f"{e} AS {n}" for e, n in zip(keys, KEY_COLUMNS, strict=True)]
    if shard:
        cols.append("CAST(:shard AS SMALLINT) AS shard" if dialect == "postgresql" else ":shard AS shard")
    cols += [f"{_SUM_EXPRS[c]} AS {c}" for c in SUM_COLUMNS]
    return (f"SELECT {', '.join(cols)} FROM {source} WHERE {where} "
            f"GROUP BY {', '.join(keys)}")


def rollup_upsert_sql(dialect: str, source: str, where: str = "1 = 1") -> str:
    """Add the attempt rows of ``source`` (filtered by ``where``) to the rollup; binds ``:shard``.

    ``INSERT ... SELECT ... GROUP BY key ON CONFLICT (key) DO UPDATE SET x = x + excluded.x``. Rows
    are sorted by key so two writers touching the same rows lock them in one order (no deadlock).
    """
    conflict = (*KEY_COLUMNS, "shard")
    sets = ", ".join(f"{c} = cost_rollup_daily.{c} + excluded.{c}" for c in SUM_COLUMNS)
    return (f"INSERT INTO cost_rollup_daily ({', '.join(KEY_COLUMNS)}, shard, {', '.join(SUM_COLUMNS)}) "
            f"{aggregate_sql(dialect, source, where, shard=True)} "
            f"ORDER BY {', '.join(str(i) for i in range(1, len(KEY_COLUMNS) + 1))} "
            f"ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {sets}")


def add_attempts_to_rollup(conn: Connection, attempt_ids: Sequence[str]) -> None:
    """Roll up the given (just inserted) attempt rows, in the caller's transaction."""
    if not attempt_ids:
        return
    stmt = text(rollup_upsert_sql(conn.dialect.name, "attempts", "id IN :ids")).bindparams(
        bindparam("ids", expanding=True))
    conn.execute(stmt, {"ids": list(attempt_ids), "shard": writer_shard()})


def _day_bounds(since: date | None, until: date | None) -> tuple[str, dict[str, Any]]:
    clauses, params = [], {}
    if since is not None:
        clauses.append("created_at >= :since_ts")
        params["since_ts"] = datetime.combine(since, time.min, UTC)
    if until is not None:
        clauses.append("created_at < :until_ts")
        params["until_ts"] = datetime.combine(until + timedelta(days=1), time.min, UTC)
    return (" AND ".join(clauses) or "1 = 1"), params


def _ts_params(conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
    # SQLite keeps timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' UTC text; compare like with like.
    if conn.dialect.name == "postgresql":
        return params
    return {k: v.strftime("%Y-%m-%d %H:%M:%S.%f") for k, v in params.items()}


def rebuild_rollups(url: str | None = None, since: date | None = None, until: date | None = None) -> int:
    """Recompute the rollup rows of ``[since, until]`` (default: all days) from the ledger.

    Repair tool: runs in one transaction that locks the rollup table against concurrent writers
    (Postgres), so attempts committed during the rebuild are neither lost nor counted twice.
    Returns the number of rollup rows written.
    """
    from batchroute.db import get_engine

    engine = get_engine(url)
    with engine.begin() as conn:
        dialect = conn.dialect.name
        if dialect == "postgresql":
            conn.execute(text("LOCK TABLE cost_rollup_daily IN EXCLUSIVE MODE"))
        where, params = _day_bounds(since, until)
        params = _ts_params(conn, params)
        day_clauses = []
        if since is not None:
            day_clauses.append(ROLLUP.c.day >= since)
        if until is not None:
            day_clauses.append(ROLLUP.c.day <= until)
        conn.execute(ROLLUP.delete().where(*day_clauses))
        tag_texts = conn.execute(text(f"SELECT DISTINCT tag_set, CAST(tags AS TEXT) FROM attempts WHERE {where}"),
                                 params).all()
        ensure_tag_sets(conn, (json.loads(t) for _, t in tag_texts if t))
        res = conn.execute(text(rollup_upsert_sql(dialect, "attempts", where)), {**params, "shard": 0})
        return int(res.rowcount or 0)


def _aggregate(conn: Connection, sql: str, params: dict[str, Any]) -> dict[tuple[Any, ...], dict[str, float]]:
    out: dict[tuple[Any, ...], dict[str, float]] = {}
    for row in conn.execute(text(sql), params).mappings():
        key = tuple(str(row[c]) if c == "day" else row[c] for c in KEY_COLUMNS)
        acc = out.setdefault(key, dict.fromkeys(SUM_COLUMNS, 0.0))
        for c in SUM_COLUMNS:
            acc[c] += float(row[c] or 0)
    return out


def ledger_vs_rollup_diff(url: str | None = None, since: date | None = None, until: date | None = None,
                          rel_tol: float = 1e-9) -> list[dict[str, Any]]:
    """Keys whose rollup totals differ from the ledger's: ``[]`` when they agree.

    Each difference is ``{"key": {...}, "column": name, "ledger": x, "rollup": y}``. Reads every
    attempt of the period: a check for tests and operators, not a dashboard query.
    """
    from batchroute.db import get_engine

    with get_engine(url).connect() as conn:
        dialect = conn.dialect.name
        where, params = _day_bounds(since, until)
        ledger = _aggregate(conn, aggregate_sql(dialect, "attempts", where), _ts_params(conn, params))
        rwhere = " AND ".join(c for c, v in (("day >= :since_day", since), ("day <= :until_day", until))
                              if v is not None) or "1 = 1"
        rollup_sql = (f"SELECT {', '.join(KEY_COLUMNS)}, "
                      f"{', '.join(f'SUM({c}) AS {c}' for c in SUM_COLUMNS)} FROM cost_rollup_daily "
                      f"WHERE {rwhere} GROUP BY {', '.join(KEY_COLUMNS)}")
        day_params: dict[str, Any] = {"since_day": since, "until_day": until}
        if dialect != "postgresql":
            day_params = {k: v.isoformat() if v else None for k, v in day_params.items()}
        rollup = _aggregate(conn, rollup_sql, day_params)
    diffs: list[dict[str, Any]] = []
    for key in sorted(set(ledger) | set(rollup), key=lambda k: tuple(str(x) for x in k)):
        a, b = ledger.get(key, {}), rollup.get(key, {})
        for c in SUM_COLUMNS:
            x, y = a.get(c, 0.0), b.get(c, 0.0)
            if abs(x - y) > rel_tol * max(abs(x), abs(y), 1e-12) and abs(x - y) > 1e-12:
                diffs.append({"key": dict(zip(KEY_COLUMNS, key, strict=True)), "column": c, "ledger": x,
                              "rollup": y})
    return diffs
