"""batchroute.execution.CallWriter and record_calls on the embedded SQLite ledger.

Concurrent calls are written in batches; each call gets its own answer; a bad row fails alone;
an ok attempt and its result land together; claims never hand one request to two deliveries.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, Literal, overload

import pytest
from sqlalchemy import text

N = 60


def _seed(n: int) -> tuple[str, list[str]]:
    from batchroute.db import get_engine
    from batchroute.jobs import JOBS
    from batchroute.ledger import REQUESTS, insert_ignore
    from batchroute.tables import utcnow

    job_id = "job_cw_" + uuid.uuid4().hex[:8]
    now = utcnow()
    ids = [f"{job_id}-{i}" for i in range(1, n + 1)]
    with get_engine().begin() as conn:
        insert_ignore(conn, JOBS, [{"id": job_id, "tenant": "default", "name": "cw", "source": "test",
                                    "latency_class": "batch", "objective": "balanced", "tags": {},
                                    "state": "running", "submitted": True, "created_at": now}])
        insert_ignore(conn, REQUESTS, [{"id": rid, "job_id": job_id, "line": i, "custom_id": f"c{i}",
                                        "prompt": "hi", "latency_class": "batch", "state": "dispatched",
                                        "attempts": 0, "model": "sim-llama-3-8b", "provider": "together-sim",
                                        "created_at": now, "updated_at": now} for i, rid in enumerate(ids, 1)])
    return job_id, ids


@overload
def _rows(job_id: str, rid: str, ok: Literal[True], cost: float = ...) -> tuple[dict[str, Any], dict[str, Any]]: ...
@overload
def _rows(job_id: str, rid: str, ok: bool, cost: float = ...) -> tuple[dict[str, Any], dict[str, Any] | None]: ...
def _rows(job_id: str, rid: str, ok: bool, cost: float = 0.001) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """An attempt row and, for a successful call (ok=True), its result row."""
    aid = uuid.uuid4().hex
    attempt = {"id": aid, "request_id": rid, "job_id": job_id, "model": "sim-llama-3-8b", "provider": "together-sim",
               "attempt_no": 1, "status": "ok" if ok else "error", "prompt_tokens": 5 if ok else 0,
               "completion_tokens": 7 if ok else 0, "cost_usd": cost if ok else 0.0, "tags": {}}
    result = {"request_id": rid, "job_id": job_id, "custom_id": "c", "attempt_id": aid, "model": "sim-llama-3-8b",
              "provider": "together-sim", "output": "out", "finish_reason": "stop", "prompt_tokens": 5,
              "completion_tokens": 7, "latency_ms": 3.0} if ok else None
    return attempt, result


def q(sql: str, **params: Any) -> list[Any]:
    from batchroute.db import get_engine

    with get_engine().connect() as conn:
        return list(conn.execute(text(sql), params).all())


def test_concurrent_calls_are_batched_and_each_gets_its_answer(embedded: Path) -> None:
    from batchroute.execution import call_writer
    from batchroute.runtime import get_runtime

    job_id, ids = _seed(N)
    rt = get_runtime()
    ops: list[int] = []
    real_write = rt.writer.write

    async def counting_write(op: Any) -> Any:
        ops.append(1)
        return await real_write(op)

    rt.writer.write = counting_write  # type: ignore[method-assign]
    calls = [_rows(job_id, rid, ok=i % 3 != 0) for i, rid in enumerate(ids)]
    calls.append(_rows(job_id, ids[1], ok=True))  # a second success of one request: its result exists

    async def main() -> list[bool]:
        cw = call_writer(rt)
        return list(await asyncio.gather(*(cw.write(a, r) for a, r in calls)))

    answers = rt.run(main(), timeout_s=30)
    assert len(ops) < len(calls) / 5  # batched
    assert answers[:-1] == [True] * N and answers[-1] is False
    n_ok = sum(1 for i in range(N) if i % 3 != 0)
    assert q("SELECT count(*) FROM results")[0][0] == n_ok
    assert q("SELECT count(*) FROM attempts")[0][0] == N + 1
    assert dict(q("SELECT state, count(*) FROM requests GROUP BY state")) == {"succeeded": n_ok, "dispatched": N - n_ok}
    # The request that succeeded twice: one result, priced at both calls.
    assert q("SELECT output, cost_usd FROM results WHERE request_id=:r", r=ids[1]) == [("out", pytest.approx(0.002))]
    assert q("SELECT attempts FROM requests WHERE id=:r", r=ids[1])[0][0] == 2


def test_a_bad_row_fails_alone(embedded: Path) -> None:
    from batchroute.execution import call_writer
    from batchroute.runtime import get_runtime

    job_id, ids = _seed(10)
    rt = get_runtime()
    calls = [_rows(job_id, rid, ok=True) for rid in ids]
    bad, _ = calls[4]
    del bad["model"]  # a required field

    async def main() -> list[Any]:
        cw = call_writer(rt)
        return list(await asyncio.gather(*(cw.write(a, r) for a, r in calls), return_exceptions=True))

    answers = rt.run(main(), timeout_s=30)
    assert isinstance(answers[4], ValueError)
    assert answers[:4] + answers[5:] == [True] * 9
    assert q("SELECT count(*) FROM results")[0][0] == 9


def test_claims_hand_each_request_to_one_delivery(embedded: Path) -> None:
    from batchroute.execution import claim
    from batchroute.runtime import get_runtime

    _, ids = _seed(5)
    rt = get_runtime()
    first = rt.writer.submit(claim(ids[:3], 600)).result(10)
    second = rt.writer.submit(claim(ids, 600)).result(10)
    assert sorted(first) == sorted(ids[:3]) and sorted(second) == sorted(ids[3:])
    assert rt.writer.submit(claim(ids, 600)).result(10) == []
    # Silent for longer than the staleness: another delivery may take them over.
    assert sorted(rt.writer.submit(claim(ids, 0)).result(10)) == sorted(ids)


def test_a_claimed_request_that_already_has_its_result_is_closed(embedded: Path) -> None:
    from batchroute.execution import record_call_success, run_chunk
    from batchroute.runtime import get_runtime

    job_id, ids = _seed(1)
    rt = get_runtime()
    attempt, result = _rows(job_id, ids[0], ok=True)
    assert rt.writer.submit(record_call_success(attempt, result)).result(10) is True
    # A result without the state change (written by an older version, or by hand), re-sent.
    rt.writer.submit(lambda conn: conn.execute(text("UPDATE requests SET state='dispatched'"))).result(10)
    rt.run(run_chunk(ids), timeout_s=30)
    assert q("SELECT state FROM requests")[0][0] == "succeeded"
    assert q("SELECT count(*) FROM attempts")[0][0] == 1


def test_group_commit_writer_survives_a_cancelled_future() -> None:
    import threading

    from sqlalchemy import create_engine, text

    from batchroute.writer import GroupCommitWriter

    engine = create_engine("sqlite://")
    writer = GroupCommitWriter(engine, max_batch=1)
    gate = threading.Event()
    first = writer.submit(lambda conn: gate.wait(5))  # holds the writer thread
    cancelled = writer.submit(lambda conn: conn.execute(text("SELECT 1")).scalar())
    assert cancelled.cancel()  # the caller gave up (a cancelled asyncio task)
    gate.set()
    last = writer.submit(lambda conn: conn.execute(text("SELECT 41 + 1")).scalar())
    try:
        assert first.result(5) is True
        assert last.result(5) == 42  # the thread lived through the cancelled one
    finally:
        writer.close()
