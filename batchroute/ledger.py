"""Ledger writes: attempts, results and request state changes, idempotent by construction.

Each function returns an *op* (a function of a Connection) for :class:`~batchroute.writer.GroupCommitWriter`.
- An attempt row's id is generated before the call, so replaying its write never bills twice.
- A result's primary key is the request id, inserted if absent: a request has at most one result
  even when its task is delivered twice.
- Terminal request states never change again (every update is guarded by ``state NOT IN terminal``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Table, func, select, update

from batchroute.tables import Attempt, Request, RequestState, Result, RoutingDecision, utcnow

Op = Callable[[Connection], Any]

ATTEMPTS: Table = Attempt.__table__  # type: ignore[attr-defined]
RESULTS: Table = Result.__table__  # type: ignore[attr-defined]
REQUESTS: Table = Request.__table__  # type: ignore[attr-defined]
DECISIONS: Table = RoutingDecision.__table__  # type: ignore[attr-defined]


def insert_ignore(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rows, skipping those whose key exists; returns how many were inserted."""
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    res = conn.execute(insert(table).on_conflict_do_nothing(), list(rows))
    return int(res.rowcount or 0)


def _not_terminal() -> Any:
    return REQUESTS.c.state.not_in(RequestState.TERMINAL)


def record_attempt(row: dict[str, Any]) -> Op:
    """Insert one attempt row (once) and count it on its request."""

    def op(conn: Connection) -> bool:
        inserted = insert_ignore(conn, ATTEMPTS, [row]) == 1
        if inserted:
            conn.execute(update(REQUESTS).where(REQUESTS.c.id == row["request_id"])
                         .values(attempts=REQUESTS.c.attempts + 1, updated_at=utcnow()))
        return inserted

    return op


def record_success(row: dict[str, Any]) -> Op:
    """Insert the request's result if it has none; mark the request succeeded. True if inserted."""

    def op(conn: Connection) -> bool:
        total = conn.execute(select(func.coalesce(func.sum(ATTEMPTS.c.cost_usd), 0.0))
                             .where(ATTEMPTS.c.request_id == row["request_id"])).scalar_one()
        inserted = insert_ignore(conn, RESULTS, [{**row, "cost_usd": float(total)}]) == 1
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
        return int(res.rowcount or 0)

    return op


def mark_running(request_ids: Sequence[str]) -> Op:
    """Mark dispatched requests as running (and refresh their reconciler clock)."""

    def op(conn: Connection) -> int:
        res = conn.execute(update(REQUESTS)
                           .where(REQUESTS.c.id.in_(list(request_ids)),
                                  REQUESTS.c.state.in_((RequestState.DISPATCHED, RequestState.RUNNING)))
                           .values(state=RequestState.RUNNING, updated_at=utcnow()))
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
