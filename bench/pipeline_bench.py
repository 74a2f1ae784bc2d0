"""Pipeline benchmark: a 10,000-prompt job end to end on Redis + Postgres + real worker processes.

The simulated provider answers at zero latency, so this measures batchroute itself: submit
(streaming the file into Postgres), the analyzer (embedding + kNN + routing), the queues, the
provider workers and the ledger writes, from the first line read to the last result committed.
For comparison it also measures a plain sentence-transformers ``encode`` of a sample of the same
prompts in the same run (the embedding bottleneck every analyzer pays).

    batchroute bench pipeline --prompts 10000 --json
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/batchroute_bench_pipeline"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"


def make_prompts(n: int) -> list[dict[str, str]]:
    """n distinct prompts: the bundled demo workload, cycled with a variant marker."""
    from batchroute.demo import demo_prompts

    base = demo_prompts()
    return [{"id": f"b{i}", "prompt": base[i % len(base)]["prompt"] + ("" if i < len(base) else f"\n(#{i})")}
            for i in range(n)]


def _fresh_database(url: str) -> None:
    import psycopg

    admin, name = url.rsplit("/", 1)
    with psycopg.connect(admin + "/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _unlimited_registry(path: Path) -> Path:
    """The active registry with every rpm/tpm limit lifted: the bench measures the pipeline, not the
    shared limiter's pacing to the bundled models' (realistic, low) limits."""
    import yaml

    from batchroute.registry import BUNDLED_REGISTRY, load_registry
    from batchroute.settings import get_settings

    data = yaml.safe_load(Path(get_settings().registry or BUNDLED_REGISTRY).read_text())
    data["providers"] = [{"name": p["name"]} for p in data.get("providers", [])]
    for m in data["models"]:
        m["rpm"], m["tpm"] = 10_000_000, 10_000_000_000
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_registry(path)  # fail here, not in a worker, if the copy is invalid
    return path


def _plain_encode_per_s(prompts: list[str]) -> float:
    from sentence_transformers import SentenceTransformer

    from batchroute.analyzer.backend import default_model_path

    model = SentenceTransformer(str(default_model_path()), device="cpu")
    model.encode(prompts[:32])  # warm-up
    t0 = time.perf_counter()
    model.encode(prompts, batch_size=64)
    return len(prompts) / (time.perf_counter() - t0)


def run(prompts: int = 10_000, database_url: str = DEFAULT_PG, broker_url: str = DEFAULT_REDIS,
        provider_workers: int = 1, concurrency: int = 16, embed_sample: int = 1000,
        timeout_s: float = 1800) -> dict[str, Any]:
    """Run the benchmark and return its figures (see module docstring)."""
    import redis
    from sqlalchemy import func, select
    from sqlmodel import Session, col

    from batchroute.db import get_engine, migrate
    from batchroute.jobs import JobOptions, job_status, submit_job
    from batchroute.localcluster import LocalCluster
    from batchroute.registry import get_registry, load_registry
    from batchroute.runtime import settings_override
    from batchroute.settings import get_settings
    from batchroute.simprovider import SimConfig, SimServerThread
    from batchroute.tables import Result

    _fresh_database(database_url)
    redis.Redis.from_url(broker_url).flushdb()
    rows = make_prompts(prompts)
    workdir = Path(get_settings().data_dir) / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "pipeline.jsonl"
    with src.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")

    # No rate limit should bind, on either side: this measures the pipeline, not the provider.
    registry_path = _unlimited_registry(workdir / "pipeline-registry.yaml")
    sim = SimServerThread(load_registry(registry_path), SimConfig(time_scale=0.0, rpm_override=10_000_000,
                                                                  tpm_override=10_000_000_000)).start()
    env = {"BATCHROUTE_DATABASE_URL": database_url, "BATCHROUTE_BROKER_URL": broker_url,
           "BATCHROUTE_SIM_URL": sim.url, "BATCHROUTE_REGISTRY": str(registry_path)}
    env = {k: v for k, v in env.items() if v}
    restore = ExitStack()  # closed in the finally below: settings come back as they were
    restore.enter_context(settings_override(env))
    providers = ",".join(f"provider.{p}" for p in get_registry().provider_names())
    migrate()
    try:
        with LocalCluster(env, workdir / "logs") as cluster:
            cluster.start("analyze", "analyze", "solo", 1)
            for i in range(provider_workers):
                cluster.start(f"providers{i}", providers, "threads", concurrency)
            cluster.wait_ready()
            t0 = time.perf_counter()
            report = submit_job(src, JobOptions(latency_class="batch", name="bench-pipeline"))
            submit_s = time.perf_counter() - t0
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                st = job_status(report.job_id)
                if st["state"] in ("completed", "failed"):
                    break
                time.sleep(0.5)
            with Session(get_engine()) as s:
                last = s.exec(select(func.max(Result.created_at)).where(col(Result.job_id) == report.job_id)).one()[0]  # type: ignore[call-overload]
                n_results = s.exec(select(func.count()).select_from(Result).where(  # type: ignore[call-overload]
                    col(Result.job_id) == report.job_id)).one()[0]
                n_distinct = s.exec(select(func.count(func.distinct(Result.request_id))).where(  # type: ignore[call-overload]
                    col(Result.job_id) == report.job_id)).one()[0]
            elapsed = time.perf_counter() - t0
            # End to end = first line read to the last result committed (taken from Postgres).
            if last is not None and st["state"] == "completed":
                from datetime import UTC, datetime

                end_lag = (datetime.now(UTC) - last.replace(tzinfo=UTC)).total_seconds()
                elapsed = max(elapsed - max(end_lag, 0.0), submit_s)
    finally:
        sim.stop()
        restore.close()
    embed_per_s = _plain_encode_per_s([r["prompt"] for r in rows[:embed_sample]])
    return {
        "prompts": prompts, "state": st["state"], "results": int(n_results),
        "prompts_per_s": round(prompts / elapsed, 1), "elapsed_s": round(elapsed, 2),
        "submit_s": round(submit_s, 2), "lost": prompts - int(n_distinct),
        "duplicated": int(n_results) - int(n_distinct), "attempts": st["attempts"],
        "embed_per_s": round(embed_per_s, 1), "embed_sample": min(embed_sample, prompts),
        "provider_workers": provider_workers, "concurrency": concurrency,
        "cost_usd": round(st["cost_usd"], 6),
    }
