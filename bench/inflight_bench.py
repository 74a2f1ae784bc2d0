"""In-flight benchmark: how many provider calls one provider worker process sustains at 1 s latency.

One real ``celery worker -P threads`` process (started through LocalCluster) serves one provider
queue; the simulated provider answers every call after ``latency_ms`` (base latency only, no
per-token time) with no rate limit that binds (the registry's rpm/tpm are raised out of reach).
Requests are written to Postgres already routed (``dispatched``), so the analyzer is not measured,
and sent to the provider queue in chunks; the worker claims them, calls, and writes attempts and
results through its group-commit writer, exactly as in production.

``calls_per_s`` is the sustained rate: completions between the 10th and the 90th percentile of
completion time (from the attempt rows in Postgres). With 1 s per call it is also the number of
calls in flight. The baseline, measured in the same run against the same simulator, is a bare
aiohttp client in this process with as many concurrent calls as the worker may hold
(``concurrency x chunk_size``): what the machine allows without batchroute.

    batchroute bench inflight --json
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/batchroute_bench_inflight"
DEFAULT_REDIS = "redis://127.0.0.1:6379/13"
MODEL = "sim-llama-3-8b"
TARGET_CALLS_PER_S = 200.0
OUT_OF_REACH = 1_000_000_000


def _fresh_database(url: str) -> None:
    import psycopg

    admin, name = url.rsplit("/", 1)
    with psycopg.connect(admin + "/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def write_registry(path: Path, latency_ms: float) -> Path:
    """The bundled registry with every limit out of reach and a flat ``latency_ms`` per call."""
    import yaml

    from batchroute.registry import BUNDLED_REGISTRY

    data = yaml.safe_load(Path(BUNDLED_REGISTRY).read_text())
    for p in data.get("providers", []):
        p["rpm"], p["tpm"] = OUT_OF_REACH, OUT_OF_REACH
    for m in data["models"]:
        m["rpm"], m["tpm"] = OUT_OF_REACH, OUT_OF_REACH
        m["sim"] = {**m["sim"], "base_latency_ms": latency_ms, "per_output_token_ms": 0,
                    "output_tokens_min": 20, "output_tokens_max": 60}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _seed(job_id: str, n: int, model: str) -> list[str]:
    from batchroute.db import get_engine
    from batchroute.jobs import JOBS
    from batchroute.ledger import DECISIONS, REQUESTS, insert_ignore
    from batchroute.registry import get_registry
    from batchroute.tables import utcnow

    provider = get_registry().model(model).provider
    now = utcnow()
    ids = [f"{job_id}-{i}" for i in range(1, n + 1)]
    with get_engine().begin() as conn:
        insert_ignore(conn, JOBS, [{"id": job_id, "tenant": "default", "name": "bench-inflight", "source": "bench",
                                    "latency_class": "batch", "objective": "balanced", "baseline_model": model,
                                    "tags": {"bench": "inflight"}, "state": "running", "submitted": True,
                                    "request_count": n, "total_lines": n, "invalid_lines": 0, "created_at": now}])
        rows = [{"id": rid, "job_id": job_id, "line": i, "custom_id": f"c{i}",
                 "prompt": f"Classify the sentiment of review number {i}: the service was fine.",
                 "max_tokens": 64, "latency_class": "batch", "prompt_tokens_est": 20, "state": "dispatched",
                 "attempts": 0, "domain": "classification", "complexity": "simple", "style": "concise",
                 "confidence": 0.9, "model": model, "provider": provider, "created_at": now, "updated_at": now}
                for i, rid in enumerate(ids, 1)]
        insert_ignore(conn, REQUESTS, rows)
        insert_ignore(conn, DECISIONS, [{"request_id": rid, "job_id": job_id, "seq": 0, "model": model,
                                         "provider": provider, "reason": "bench", "detail": {},
                                         "created_at": now} for rid in ids])
    return ids


async def _raw_baseline(url: str, model: str, calls: int, in_flight: int) -> float:
    """Calls per second of a bare aiohttp client holding ``in_flight`` calls open."""
    import aiohttp

    body = json.dumps({"model": model, "max_tokens": 64,
                       "messages": [{"role": "user", "content": "Classify: the service was fine."}]}).encode()
    left = calls

    async def caller(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(f"{url}/v1/chat/completions", data=body,
                                    headers={"content-type": "application/json"}) as resp:
                await resp.read()

    connector = aiohttp.TCPConnector(limit=in_flight, limit_per_host=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(caller(session) for _ in range(in_flight)))
        return calls / (time.perf_counter() - t0)


def _sustained(times: list[float]) -> float:
    """Completions per second between the 10th and 90th percentile of completion time."""
    times = sorted(times)
    lo, hi = int(len(times) * 0.1), int(len(times) * 0.9)
    span = times[hi] - times[lo]
    return (hi - lo) / span if span > 0 else float("nan")


def run(calls: int = 6000, concurrency: int = 16, chunk_size: int = 25, latency_ms: float = 1000.0,
        database_url: str = DEFAULT_PG, broker_url: str = DEFAULT_REDIS, timeout_s: float = 300.0,
        baseline: bool = True) -> dict[str, Any]:
    """Run the benchmark; returns ``calls_per_s`` (sustained) and the figures around it (module docstring)."""
    import redis
    from sqlalchemy import text

    from batchroute.db import get_engine, migrate
    from batchroute.dispatch import get_dispatcher
    from batchroute.localcluster import LocalCluster
    from batchroute.registry import get_registry, load_registry
    from batchroute.runtime import settings_override
    from batchroute.settings import get_settings
    from batchroute.simprovider import SimConfig, SimServerThread

    workdir = Path(get_settings().data_dir) / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    registry_path = write_registry(workdir / "inflight-registry.yaml", latency_ms)
    _fresh_database(database_url)
    redis.Redis.from_url(broker_url).flushdb()
    env = {"BATCHROUTE_DATABASE_URL": database_url, "BATCHROUTE_BROKER_URL": broker_url,
           "BATCHROUTE_REGISTRY": str(registry_path), "BATCHROUTE_PROVIDER_CHUNK_SIZE": str(chunk_size)}
    sim = SimServerThread(load_registry(registry_path), SimConfig(time_scale=1.0)).start()
    env["BATCHROUTE_SIM_URL"] = sim.url
    restore = ExitStack()  # closed in the finally below: settings come back as they were
    restore.enter_context(settings_override(env))
    provider = get_registry().model(MODEL).provider
    result: dict[str, Any] = {}
    try:
        migrate()
        job_id = f"job_inflight_{os.getpid()}"
        ids = _seed(job_id, calls, MODEL)
        with LocalCluster(env, workdir / "logs") as cluster:
            cluster.start("inflight", f"provider.{provider}", "threads", concurrency)
            cluster.wait_ready()
            dispatcher = get_dispatcher()
            t0 = time.perf_counter()
            for i in range(0, len(ids), chunk_size):
                dispatcher.execute(provider, ids[i:i + chunk_size])
            deadline = time.monotonic() + timeout_s
            done = 0
            while time.monotonic() < deadline:
                with get_engine().connect() as conn:
                    done = conn.execute(text("SELECT count(*) FROM results WHERE job_id=:j"),
                                        {"j": job_id}).scalar_one()
                if done >= calls:
                    break
                time.sleep(0.5)
            elapsed = time.perf_counter() - t0
            with get_engine().connect() as conn:
                rows = conn.execute(text(
                    "SELECT extract(epoch FROM created_at), latency_ms, status FROM attempts WHERE job_id=:j"),
                    {"j": job_id}).all()
        ok_times = [float(t) for t, _, status in rows if status == "ok"]
        latencies = sorted(float(lat) for _, lat, status in rows if status == "ok")
        sustained = _sustained(ok_times) if len(ok_times) >= 10 else 0.0
        first, last = (min(ok_times), max(ok_times)) if ok_times else (0.0, 0.0)
        result = {
            "calls_per_s": round(sustained, 1),
            "target_calls_per_s": TARGET_CALLS_PER_S,
            "meets_target": sustained >= TARGET_CALLS_PER_S,
            "in_flight_est": round(sustained * (latencies[len(latencies) // 2] / 1000.0), 1) if latencies else 0.0,
            "end_to_end_calls_per_s": round(len(ok_times) / elapsed, 1) if elapsed else 0.0,
            "first_to_last_result_s": round(last - first, 2),
            "calls": calls, "results": int(done), "errors": sum(1 for r in rows if r[2] != "ok"),
            "elapsed_s": round(elapsed, 2),
            "call_latency_ms_p50": round(latencies[len(latencies) // 2], 1) if latencies else None,
            "call_latency_ms_p99": round(latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
            "sim_latency_ms": latency_ms, "worker_threads": concurrency, "chunk_size": chunk_size,
            "max_in_flight": concurrency * chunk_size,
        }
        if baseline:
            raw = asyncio.run(_raw_baseline(sim.url, MODEL, min(calls, 3 * concurrency * chunk_size),
                                            concurrency * chunk_size))
            result["baseline_raw_aiohttp_calls_per_s"] = round(raw, 1)
            result["share_of_baseline"] = round(sustained / raw, 3) if raw else None
        result["machine"] = {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}
    finally:
        sim.stop()
        restore.close()
    return result


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--chunk-size", type=int, default=25)
    ap.add_argument("--latency-ms", type=float, default=1000.0)
    ap.add_argument("--database-url", default=DEFAULT_PG)
    ap.add_argument("--broker-url", default=DEFAULT_REDIS)
    args = ap.parse_args()
    print(json.dumps(run(args.calls, args.concurrency, args.chunk_size, args.latency_ms, args.database_url,
                         args.broker_url), indent=2))
