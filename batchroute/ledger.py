"""Ledger writes: attempts, results and request state changes, idempotent by construction.

Each function returns an *op* (a function of a Connection) for :class:`~batchroute.writer.GroupCommitWriter`.
- An attempt row's id is generated before the call, so replaying its write never bills twice.
- In the transaction that inserts attempt rows, and only for rows actually inserted, the daily
  rollups (:mod:`batchroute.rollups`) and the requests' attempt counters are updated, so replays
  and retries never double count. Successful rows get their counterfactual ``baseline_cost_usd``
  (:mod:`batchroute.baseline`) unless the caller set it.
- ``record_attempts_bulk`` writes many attempts at once (Postgres: COPY into a temporary table, then
  one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` that also rolls up and counts).
- A result's primary key is the request id, inserted if absent: a request has at most one result
  even when its task is delivered twice.
- Terminal request states never change again (every update is guarded by ``state NOT IN terminal``).
- Reaching a terminal state settles the request's budget reservation in the same transaction.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Table, bindparam, func, select, text, update

from batchroute.baseline import fill_baseline_costs
from batchroute.budgets import settle
from batchroute.rollups import (
    add_attempts_to_rollup,
    dialect_insert,
    ensure_tag_sets,
    rollup_upsert_sql,
    tag_set_id,
    writer_shard,
)
from batchroute.tables import Attempt, Request, RequestState, Result, RoutingDecision, utcnow

Op = Callable[[Connection], Any]
# SQLite allows 32,766 bound parameters per statement; Postgres 65,535.
MAX_BIND_PARAMS = 30_000

ATTEMPTS: Table = Attempt.__table__  # type: ignore[attr-defined]
RESULTS: Table = Result.__table__  # type: ignore[attr-defined]
REQUESTS: Table = Request.__table__  # type: ignore[attr-defined]
DECISIONS: Table = RoutingDecision.__table__  # type: ignore[attr-defined]


def insert_ignore(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rows, skipping those whose key exists; returns how many were inserted.

    Multi-row ``INSERT ... VALUES (...), (...) ON CONFLICT DO NOTHING RETURNING key`` statements: the
    inserted rows are counted from RETURNING, because neither an executemany nor (with SQLAlchemy 2.1
    on psycopg) a single INSERT reports a reliable row count, and callers act on the count.
    """
    if not rows:
        return 0
    key = next(iter(table.primary_key.columns))
    per_stmt = max(1, MAX_BIND_PARAMS // max(1, len(rows[0])))
    inserted = 0
    for i in range(0, len(rows), per_stmt):
        stmt = dialect_insert(conn, table).values(list(rows[i:i + per_stmt])).on_conflict_do_nothing()
        inserted += len(conn.execute(stmt.returning(key)).all())
    return inserted


def _not_terminal() -> Any:
    return REQUESTS.c.state.not_in(RequestState.TERMINAL)


ATTEMPT_COLUMNS: tuple[str, ...] = tuple(c.name for c in ATTEMPTS.columns)
_REQUIRED = ("id", "request_id", "job_id", "model", "provider", "attempt_no", "status")
_DEFAULTS: dict[str, Any] = {
    "tenant": "default", "error_kind": None, "error": None, "http_status": None, "latency_ms": 0.0,
    "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "usage_estimated": False,
    "input_price_per_mtok_usd": 0.0, "output_price_per_mtok_usd": 0.0, "cached_price_per_mtok_usd": None,
    "cost_usd": 0.0, "domain": None, "latency_class": None, "baseline_cost_usd": None,
}
_BASE_ROW: dict[str, Any] = {c: _DEFAULTS.get(c) for c in ATTEMPT_COLUMNS}
_required_of = itemgetter(*_REQUIRED)
_values_of = itemgetter(*ATTEMPT_COLUMNS)
# Below this many rows a multi-row INSERT beats setting up a COPY.
COPY_MIN_ROWS = 1_000
_STAGE = "_attempts_stage"
# The ids of the attempts this write inserted (for a coalescing writer), or -- single row -- whether it was new.
AttemptsResult = list[str] | bool


def prepare_attempts(conn: Connection, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Complete attempt rows for insertion: defaults, tag set id, baseline cost; first of duplicate ids wins.

    Also stores the rows' tag sets (``tag_set_items``). The caller's dicts are not modified.
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    # Rows of one job share one tags dict: hash each distinct dict once (it would dominate big batches).
    tag_ids: dict[int, tuple[dict[str, str], str]] = {}
    for row in rows:
        if row["id"] in seen:
            continue
        seen.add(row["id"])
        r = {**_BASE_ROW, **row}
        if len(r) != len(_BASE_ROW):  # keys that are not columns
            r = {c: r[c] for c in ATTEMPT_COLUMNS}
        if None in _required_of(r):
            raise ValueError(f"attempt row {row.get('id')!r} lacks {[k for k in _REQUIRED if r[k] is None]}")
        tags = r["tags"] or {}
        known = tag_ids.get(id(tags))
        if known is None or known[0] is not tags:
            known = tag_ids[id(tags)] = (tags, tag_set_id(tags))
        r["tags"] = tags
        r["tag_set"] = known[1]
        if r["created_at"] is None:
            r["created_at"] = utcnow()
        out.append(r)
    fill_baseline_costs(conn, out)
    ensure_tag_sets(conn, {r["tag_set"]: r["tags"] for r in out}.values())
    return out


def _count_on_requests(conn: Connection, counts: Counter[str]) -> None:
    if counts:
        conn.execute(update(REQUESTS).where(REQUESTS.c.id == bindparam("b_id"))
                     .values(attempts=REQUESTS.c.attempts + bindparam("b_n"), updated_at=utcnow()),
                     [{"b_id": rid, "b_n": n} for rid, n in sorted(counts.items())])


def _write_values(conn: Connection, rows: list[dict[str, Any]]) -> list[str]:
    per_stmt = max(1, MAX_BIND_PARAMS // len(ATTEMPT_COLUMNS))
    inserted: list[str] = []
    for i in range(0, len(rows), per_stmt):
        stmt = dialect_insert(conn, ATTEMPTS).values(rows[i:i + per_stmt]).on_conflict_do_nothing()
        ids = list(conn.execute(stmt.returning(ATTEMPTS.c.id)).scalars())
        add_attempts_to_rollup(conn, ids)
        inserted += ids
    new = set(inserted)
    _count_on_requests(conn, Counter(r["request_id"] for r in rows if r["id"] in new))
    return inserted


# What the rollup and request-counter statements read from the inserted rows.
_RETURNED = ("id", "request_id", "created_at", "tenant", "job_id", "model", "provider", "latency_class", "domain",
             "tag_set", "status", "usage_estimated", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd",
             "baseline_cost_usd")


def _copy_sql() -> str:
    cols = ", ".join(ATTEMPT_COLUMNS)
    return (f"WITH ins AS (INSERT INTO attempts ({cols}) SELECT {cols} FROM {_STAGE} "
            f"ON CONFLICT (id) DO NOTHING RETURNING {', '.join(_RETURNED)}), "
            f"roll AS ({rollup_upsert_sql('postgresql', 'ins')}), "
            f"req AS (UPDATE requests SET attempts = requests.attempts + c.n, updated_at = :now "
            f"FROM (SELECT request_id, COUNT(*) AS n FROM ins GROUP BY request_id) AS c "
            f"WHERE requests.id = c.request_id) "
            f"SELECT id FROM ins")


def _iso_utc(ts: datetime) -> str:
    return (ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)).isoformat()


def _write_copy(conn: Connection, rows: list[dict[str, Any]]) -> list[str]:
    conn.execute(text(f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (LIKE attempts INCLUDING DEFAULTS) "
                      f"ON COMMIT DELETE ROWS"))
    raw = conn.connection.driver_connection
    tags_at, ts_at = ATTEMPT_COLUMNS.index("tags"), ATTEMPT_COLUMNS.index("created_at")
    tag_json: dict[str, str] = {}
    with raw.cursor() as cur, cur.copy(f"COPY {_STAGE} ({', '.join(ATTEMPT_COLUMNS)}) FROM STDIN") as copy:  # type: ignore[union-attr]
        for r in rows:
            values = list(_values_of(r))
            js = tag_json.get(r["tag_set"])
            if js is None:
                js = tag_json[r["tag_set"]] = json.dumps(values[tags_at], ensure_ascii=False)
            values[tags_at] = js
            # ISO text is several times cheaper for psycopg to send than a datetime object.
            values[ts_at] = _iso_utc(values[ts_at])
            copy.write_row(values)
    ids = list(conn.execute(text(_copy_sql()), {"shard": writer_shard(), "now": utcnow()}).scalars())
    # Another bulk op may follow in this transaction; the stage must be empty for it.
    conn.execute(text(f"TRUNCATE {_STAGE}"))
    return ids


def write_attempts(conn: Connection, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Insert the new attempt rows among ``rows``; roll them up and count them on their requests.

    Runs in the caller's transaction; returns the ids actually inserted (replays are skipped).
    """
    prepared = prepare_attempts(conn, rows)
    if not prepared:
        return []
    if conn.dialect.name == "postgresql" and len(prepared) >= COPY_MIN_ROWS:
        return _write_copy(conn, prepared)
    return _write_values(conn, prepared)


@dataclass
class AttemptsOp:
    """The op of :func:`record_attempt` / :func:`record_attempts_bulk`; ``rows`` lets a writer coalesce ops.

    A writer may merge queued ops into ``AttemptsOp([*a.rows, *b.rows])`` and give each caller
    ``a.result_for(merged_ids)``.
    """

    rows: list[dict[str, Any]]
    single: bool = False

    def __call__(self, conn: Connection) -> AttemptsResult:
        return self.result_for(write_attempts(conn, self.rows))

    def result_for(self, inserted_ids: Sequence[str]) -> AttemptsResult:
        """This op's own result given the ids a (possibly merged) write inserted."""
        if self.single:
            return self.rows[0]["id"] in set(inserted_ids)
        mine = {r["id"] for r in self.rows}
        return [i for i in inserted_ids if i in mine]


def record_attempt(row: dict[str, Any]) -> Callable[[Connection], Any]:
    """Insert one attempt row (once), roll it up and count it on its request. The op returns True if new."""
    return AttemptsOp([row], single=True)


def record_attempts_bulk(rows: Sequence[dict[str, Any]]) -> Callable[[Connection], Any]:
    """Insert many attempt rows (each once) with their rollups; the op returns the ids it inserted.

    ``writer.submit(record_attempts_bulk(rows))`` or, in a transaction, ``record_attempts_bulk(rows)(conn)``.
    """
    return AttemptsOp(list(rows))


def record_success(row: dict[str, Any]) -> Op:
    """Insert the request's result if it has none; mark the request succeeded. True if inserted."""

    def op(conn: Connection) -> bool:
        total = conn.execute(select(func.coalesce(func.sum(ATTEMPTS.c.cost_usd), 0.0))
                             .where(ATTEMPTS.c.request_id == row["request_id"])).scalar_one()
        inserted = insert_ignore(conn, RESULTS, [{**row, "cost_usd": float(total)}]) == 1
        settle(conn, row["request_id"])
        if inserted:
            conn.execute(update(REQUESTS)
                         .where(REQUESTS.c.id == row["request_id"], _not_terminal())
                         .values(state=RequestState.SUCCEEDED, model=row["model"],
                                 provider=row["provider"], error=None, updated_at=utcnow()))
        return inserted

    return op


def record_failure(request_id: str, error: str, state: str = RequestState.FAILED) -> Op:
    """Move a request to a terminal failure state with its reason (no-op if already terminal)."""

    def op(conn: Connection) -> int:
        res = conn.execute(update(REQUESTS).where(REQUESTS.c.id == request_id, _not_terminal())
                           .values(state=state, error=error[:4000], updated_at=utcnow()))
        settle(conn, request_id)
        return int(res.rowcount or 0)

    return op


def record_reroute(request_id: str, job_id: str, seq: int, model: str | None, provider: str | None,
                   reason: str, detail: dict[str, Any]) -> Op:
    """Store a fallback decision and point the request at its new model (state dispatched)."""

    def op(conn: Connection) -> None:
        insert_ignore(conn, DECISIONS, [{"request_id": request_id, "job_id": job_id, "seq": seq,
                                          "model": model, "provider": provider, "reason": reason,
                                          "detail": detail, "created_at": utcnow()}])
        if model is not None:
            conn.execute(update(REQUESTS).where(REQUESTS.c.id == request_id, _not_terminal())
                         .values(model=model, provider=provider, state=RequestState.DISPATCHED,
                                 updated_at=utcnow()))

    return op
