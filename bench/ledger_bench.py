"""Ledger benchmark: bulk ingestion of attempts (with rollups) and the latency of cost queries.

Run from the repo root::

    .venv/bin/python bench/ledger_bench.py --rows 200000 --json
    batchroute bench ledger --rows 200000 --json

Drops and creates the Postgres database ``batchroute_bench`` (server from ``BATCHROUTE_BENCH_PG_ADMIN``,
default ``postgresql://postgres@127.0.0.1:5432/postgres``), migrates it, then loads N synthetic
attempts -- 200 jobs over 90 days (each active 1-4 days), 10 models on 4 providers, 5 tenants, 50
values of tag ``team`` -- through the project's own write path: ``record_attempts_bulk`` batches
handed to the :class:`~batchroute.writer.GroupCommitWriter`, which inserts each batch, its rollups
and request counters in one transaction.

Then it runs each query ``--runs`` times (default 20) through :func:`batchroute.costs.cost_report`:
``cost_by_job`` (rollups), ``model_by_day_last_7d`` (rollups), ``tag_by_month`` (rollups, a different
month per run), ``job_drilldown_by_model`` (the ledger, a different job per run).

JSON keys: rows, ingest_rows_per_s (rows / time from handing each batch to the writer until its
commit: prepare, COPY, insert, rollups, request counters, commit), end_to_end_rows_per_s (including
generating the synthetic rows, which is not overlapped), queries (name -> p50_ms, p95_ms, max_ms),
rollup_rows, ledger_matches_rollup, db_size_mb, batch_rows, vacuum_analyze_s (the VACUUM ANALYZE run
after loading, standing in for autovacuum), seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_DB = "batchroute_bench"
PG_ADMIN = os.environ.get("BATCHROUTE_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
N_JOBS, N_MODELS, N_TEAMS, N_DAYS, N_TENANTS = 200, 10, 50, 90, 5
START = datetime(2026, 8, 1, tzinfo=UTC)
BATCH_ROWS = 20_000
# The baseline (a GPT-4-class model): $10 / $30 per Mtok, ~370 output tokens expected.
BASELINE_IN, BASELINE_OUT, BASELINE_OUT_TOKENS = 10.0, 30.0, 370
DOMAINS = ("code", "math", "reasoning", "creative_writing", "factual_qa", "summarization", "extraction",
           "classification", "brainstorming")
LATENCY = ("realtime", "standard", "batch")


def _models() -> list[tuple[str, str, float, float]]:
    rng = random.Random(1)
    return [(f"bench-model-{k}", f"bench-provider-{k % 4}", round(rng.uniform(0.1, 10), 2),
             round(rng.uniform(0.1, 30), 2)) for k in range(N_MODELS)]


def _jobs() -> list[dict[str, Any]]:
    rng = random.Random(2)
    jobs = []
    for j in range(N_JOBS):
        start = j * N_DAYS / N_JOBS
        jobs.append({"id": f"job_bench_{j:04d}", "tenant": f"tenant-{j % N_TENANTS}",
                     "tags": {"team": f"team-{j % N_TEAMS:02d}", "env": ("prod", "dev")[j % 2]},
                     "latency": LATENCY[j % 3], "start": start, "end": min(N_DAYS, start + rng.uniform(1, 4))})
    return jobs


def synthetic_attempts(rows: int, seed: int = 42) -> Iterator[list[dict[str, Any]]]:
    """Batches of attempt rows in time order, shaped like execution.py's rows (baseline included)."""
    rng = random.Random(seed)
    models, jobs = _models(), _jobs()
    weights = [1.0 / (k + 1) for k in range(N_MODELS)]  # cheap models take most traffic
    step_s = N_DAYS * 86_400 / max(rows, 1)
    counters: dict[str, int] = {}
    batch: list[dict[str, Any]] = []
    active: list[dict[str, Any]] = []
    active_day = -1
    for i in range(rows):
        t = i * step_s
        day = int(t // 86_400)
        if day != active_day:
            active_day = day
            active = [j for j in jobs if j["start"] <= day + 0.5 < j["end"] + 0.5] or jobs[:1]
        job = active[rng.randrange(len(active))]
        name, provider, pin, pout = rng.choices(models, weights)[0]
        n = counters.get(job["id"], 0)
        counters[job["id"]] = n + 1
        ok = rng.random() >= 0.05
        prompt = rng.randrange(20, 3000)
        completion = rng.randrange(10, 800) if ok else 0
        cached = rng.randrange(0, prompt // 2) if rng.random() < 0.2 else 0
        cost = ((prompt - cached) * pin + cached * pin / 2 + completion * pout) / 1e6 if ok else 0.0
        batch.append({
            "id": f"{rng.getrandbits(128):032x}", "request_id": f"{job['id']}-{n}", "job_id": job["id"],
            "tenant": job["tenant"], "model": name, "provider": provider, "attempt_no": 1,
            "status": "ok" if ok else "error", "error_kind": None if ok else "ProviderUnavailable",
            "error": None if ok else "503 from provider", "http_status": 200 if ok else 503,
            "latency_ms": rng.uniform(100, 5000), "prompt_tokens": prompt if ok else 0,
            "completion_tokens": completion, "cached_tokens": cached if ok else 0, "usage_estimated": False,
            "input_price_per_mtok_usd": pin, "output_price_per_mtok_usd": pout, "cached_price_per_mtok_usd": pin / 2,
            "cost_usd": cost, "domain": DOMAINS[rng.randrange(len(DOMAINS))], "latency_class": job["latency"],
            "tags": job["tags"], "created_at": START + timedelta(seconds=t),
            "baseline_cost_usd": (prompt * BASELINE_IN + BASELINE_OUT_TOKENS * BASELINE_OUT) / 1e6 if ok else 0.0,
        })
        if len(batch) >= BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def fresh_database() -> str:
    """Drop and create the bench database, migrate it; returns its SQLAlchemy URL."""
    import psycopg

    from batchroute.db import migrate

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + BENCH_DB
    migrate(url)
    return url


def _ingest(url: str, rows: int) -> dict[str, float]:
    from batchroute.db import get_engine
    from batchroute.ledger import record_attempts_bulk
    from batchroute.writer import GroupCommitWriter

    writer = GroupCommitWriter(get_engine(url), max_batch=1)
    in_writes = 0.0
    inserted = 0
    started = time.perf_counter()
    # One batch at a time, so the write path is timed without the generator competing for the GIL.
    for batch in synthetic_attempts(rows):
        t0 = time.perf_counter()
        inserted += len(writer.submit(record_attempts_bulk(batch)).result())
        in_writes += time.perf_counter() - t0
    wall = time.perf_counter() - started
    writer.close()
    if inserted != rows:
        raise RuntimeError(f"inserted {inserted} of {rows} rows")
    return {"wall_s": wall, "write_s": in_writes}


def _time_query(fn: Any, runs: int) -> dict[str, float]:
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, max(0, round(0.95 * len(times)) - 1))]
    return {"p50_ms": round(statistics.median(times), 2), "p95_ms": round(p95, 2), "max_ms": round(times[-1], 2)}


def bench_ledger(rows: int, json_out: bool, runs: int = 20) -> dict[str, Any]:
    """Load ``rows`` synthetic attempts into a fresh ``batchroute_bench`` database and time the cost queries.

    Prints the result (JSON with ``json_out``, else one line per figure) and returns it.
    """
    from sqlalchemy import text

    from batchroute.costs import cost_report
    from batchroute.db import get_engine

    t_start = time.perf_counter()
    url = fresh_database()
    load = _ingest(url, rows)
    eng = get_engine(url)
    # What autovacuum does to an insert-only table (migration 0002 sets it to run every 2% new rows):
    # planner statistics and the visibility map that index-only drill-downs rely on.
    t0 = time.perf_counter()
    with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("attempts", "cost_rollup_daily", "tag_set_items"):
            conn.execute(text(f"VACUUM (ANALYZE) {table}"))
    vacuum_s = time.perf_counter() - t0
    last_day = (START + timedelta(seconds=(rows - 1) * N_DAYS * 86_400 / max(rows, 1))).date()
    jobs = [j["id"] for j in _jobs()]
    months = [date(2026, 8, 1), date(2026, 9, 1), date(2026, 10, 1)]
    month_end = {date(2026, 8, 1): date(2026, 8, 31), date(2026, 9, 1): date(2026, 9, 30),
                 date(2026, 10, 1): date(2026, 10, 31)}
    queries = {
        "cost_by_job": _time_query(lambda i: cost_report(["job"], url=url), runs),
        "model_by_day_last_7d": _time_query(lambda i: cost_report(
            ["model", "day"], since=last_day - timedelta(days=6), until=last_day, url=url), runs),
        "tag_by_month": _time_query(lambda i: cost_report(
            ["tag:team"], since=months[i % 3], until=month_end[months[i % 3]], url=url), runs),
        "job_drilldown_by_model": _time_query(lambda i: cost_report(
            ["model"], job=jobs[(i * 37) % len(jobs)], url=url), runs),
    }
    with eng.connect() as conn:
        ledger = conn.execute(text("SELECT COUNT(*), SUM(cost_usd) FROM attempts")).one()
        rollup = conn.execute(text("SELECT SUM(attempts), SUM(cost_usd), COUNT(*) FROM cost_rollup_daily")).one()
        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
    result = {
        "rows": rows,
        "ingest_rows_per_s": round(rows / load["write_s"]),
        "end_to_end_rows_per_s": round(rows / load["wall_s"]),
        "ingest_s": round(load["write_s"], 2),
        "batch_rows": BATCH_ROWS,
        "vacuum_analyze_s": round(vacuum_s, 1),
        "queries": queries,
        "rollup_rows": int(rollup[2]),
        "ledger_matches_rollup": int(ledger[0]) == int(rollup[0] or 0)
        and abs(float(ledger[1] or 0) - float(rollup[1] or 0)) <= 1e-6 * max(1.0, float(ledger[1] or 0)),
        "db_size_mb": round(size / 2**20),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if json_out:
        print(json.dumps(result, indent=2))
    else:
        print(f"rows {rows}: ingest {result['ingest_rows_per_s']} rows/s "
              f"(with generation {result['end_to_end_rows_per_s']} rows/s), {result['rollup_rows']} rollup rows, "
              f"db {result['db_size_mb']} MB")
        for name, q in queries.items():
            print(f"  {name}: p50 {q['p50_ms']} ms, p95 {q['p95_ms']} ms, max {q['max_ms']} ms")
    return result


def main() -> None:
    """Command-line entry point (see the module doc)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    bench_ledger(args.rows, args.json, args.runs)


if __name__ == "__main__":
    main()
