"""The whole pipeline, end to end: a 500-prompt job with exact counts and sums.

Runs twice: on the embedded default (SQLite, in-process queues) and on the real deployment
(Postgres, Redis broker, real `celery worker` processes for `analyze` and each provider queue).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import Session, col, select

from batchroute.localcluster import LocalCluster
from tests.conftest import DATA_DIR, apply_settings, truncate_pg, wait_for_job

N_PROMPTS = 500
BAD_LINES = [
    "{this is not json",                                               # malformed
    json.dumps({"id": "no-prompt"}),                                    # missing prompt
    json.dumps({"id": "slow", "prompt": "hi", "latency": "whenever"}),  # unknown latency class
    json.dumps({"id": "pinned-bad", "prompt": "hi", "model": "gpt-17"}),  # unknown model
    json.dumps({"id": "huge", "prompt": "word " * 1_000_000}),          # larger than every context window
]


def demo_rows() -> list[dict[str, str]]:
    from batchroute.demo import demo_prompts

    return demo_prompts()


def write_job(path: Path, n: int = N_PROMPTS) -> Path:
    """n valid prompts (the demo workload, cycled with a variant suffix) with the bad lines mixed in."""
    rows = demo_rows()
    lines = []
    for i in range(n):
        base = rows[i % len(rows)]
        prompt = base["prompt"] if i < len(rows) else f"{base['prompt']}\n(variant {i})"
        if i % 50 == 0:  # some lines in the OpenAI Batch format
            lines.append(json.dumps({"custom_id": f"p{i}", "method": "POST", "url": "/v1/chat/completions",
                                     "body": {"model": "auto", "messages": [{"role": "user", "content": prompt}]}}))
        else:
            lines.append(json.dumps({"id": f"p{i}", "prompt": prompt}))
        if i % 100 == 7 and BAD_LINES:
            lines.append(BAD_LINES[(i // 100) % len(BAD_LINES)])
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_job_complete(job_id: str, n: int, invalid: int) -> dict:
    from batchroute.db import get_engine
    from batchroute.jobs import iter_results, job_status
    from batchroute.tables import Attempt, JobLineError, Request, Result

    st = job_status(job_id)
    assert st["state"] == "completed", st
    assert st["requests"] == n and st["by_state"]["succeeded"] == n and st["done"] == n
    assert st["invalid_lines"] == invalid
    with Session(get_engine()) as s:
        n_results = s.exec(select(func.count()).select_from(Result).where(col(Result.job_id) == job_id)).one()
        n_distinct = s.exec(select(func.count(func.distinct(col(Result.request_id))))
                            .where(col(Result.job_id) == job_id)).one()
        attempts_cost = s.exec(select(func.sum(col(Attempt.cost_usd))).where(col(Attempt.job_id) == job_id)).one()
        results_cost = s.exec(select(func.sum(col(Result.cost_usd))).where(col(Result.job_id) == job_id)).one()
        ok_attempts = s.exec(select(func.count()).select_from(Attempt).where(
            col(Attempt.job_id) == job_id, col(Attempt.status) == "ok")).one()
        db_states = dict(s.exec(select(col(Request.state), func.count()).where(col(Request.job_id) == job_id)
                                .group_by(col(Request.state))).all())
        line_errors = s.exec(select(func.count()).select_from(JobLineError)
                             .where(col(JobLineError.job_id) == job_id)).one()
    assert n_results == n_distinct == n
    assert ok_attempts == n  # exactly one successful call per request
    assert attempts_cost > 0
    assert attempts_cost == pytest.approx(st["cost_usd"], rel=1e-9)
    assert results_cost == pytest.approx(attempts_cost, rel=1e-9)
    assert {k: v for k, v in st["by_state"].items() if v} == db_states
    assert line_errors == invalid
    lines = list(iter_results(job_id))
    assert len(lines) == n + invalid
    assert sum(1 for r in lines if r["state"] == "succeeded" and r["output"]) == n
    invalid_lines = [r for r in lines if r["state"] == "invalid"]
    assert all(r["error"]["message"].startswith("line ") for r in invalid_lines)
    return st


def expected_invalid(n: int) -> int:
    return sum(1 for i in range(n) if i % 100 == 7)


def test_pipeline_embedded_default(embedded: Path) -> None:
    from batchroute.dispatch import get_dispatcher
    from batchroute.jobs import JobOptions, submit_job

    src = write_job(embedded / "job.jsonl")
    report = submit_job(src, JobOptions(latency_class="batch", tags={"team": "legal"}))
    get_dispatcher().drain()
    assert report.requests == N_PROMPTS and report.invalid == expected_invalid(N_PROMPTS)
    reasons = " | ".join(report.errors)
    for fragment in ("not valid JSON", "field 'prompt': missing", "unknown latency class 'whenever'",
                     "unknown model 'gpt-17'", "largest eligible context window"):
        assert fragment in reasons
    st = assert_job_complete(report.job_id, N_PROMPTS, report.invalid)
    # Routing spread the work: more than one model answered.
    assert len(st["by_model"]) >= 2


@pytest.fixture
def deployment(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Postgres + Redis broker + a simulated provider + real worker processes."""
    from batchroute.registry import load_registry
    from batchroute.simprovider import SimConfig, SimServerThread

    truncate_pg(pg_url)
    sim = SimServerThread(load_registry(), SimConfig(time_scale=0.0))
    sim.start()
    env = {"BATCHROUTE_DATABASE_URL": pg_url, "BATCHROUTE_BROKER_URL": redis_url,
           "BATCHROUTE_SIM_URL": sim.url, "BATCHROUTE_RECONCILE_AFTER_S": "5",
           "BATCHROUTE_BACKOFF_BASE_S": "0.05", "BATCHROUTE_BACKOFF_CAP_S": "0.5",
           # The live profile of this deployment alone, without decay: its counts are exact.
           "BATCHROUTE_PROFILE_PREFIX": f"batchroute:test-profile:{uuid.uuid4().hex}",
           "BATCHROUTE_PROFILE_HALF_LIFE_S": "1e9"}
    apply_settings(**env)
    cluster = LocalCluster(env, DATA_DIR / "logs")
    cluster.start("analyze", "analyze", "solo", 1)
    cluster.start("providers", "provider.openai-sim,provider.anthropic-sim,provider.together-sim", "threads", 8)
    try:
        cluster.wait_ready()
        yield {**env, "tmp": str(tmp_path)}
    finally:
        cluster.stop()
        sim.stop()
        apply_settings()


@pytest.mark.integration
def test_pipeline_on_postgres_redis_and_celery_workers(deployment: dict[str, str]) -> None:
    from batchroute.jobs import JobOptions, submit_job

    src = write_job(Path(deployment["tmp"]) / "job.jsonl")
    report = submit_job(src, JobOptions(latency_class="standard", tags={"team": "search"}))
    assert report.requests == N_PROMPTS
    wait_for_job(report.job_id, timeout_s=150)
    assert_job_complete(report.job_id, N_PROMPTS, report.invalid)
    assert_profile_matches_ledger(report.job_id)


def assert_profile_matches_ledger(job_id: str, timeout_s: float = 15.0) -> None:
    """The provider workers reported every attempt to the shared (Redis) profile, per model and outcome."""
    import time

    from batchroute.db import get_engine
    from batchroute.profiler import backend_name, get_profiler
    from batchroute.registry import get_registry
    from batchroute.settings import get_settings
    from batchroute.tables import Attempt

    assert backend_name(get_settings()) == "redis"
    with Session(get_engine()) as s:
        rows = s.exec(select(col(Attempt.model), col(Attempt.status), func.count())
                      .where(col(Attempt.job_id) == job_id)
                      .group_by(col(Attempt.model), col(Attempt.status))).all()
    ledger = {(m, st): n for m, st, n in rows}
    assert set(ledger) and all(st == "ok" for _, st in ledger)  # no faults injected
    models = [m.name for m in get_registry().models]
    deadline = time.monotonic() + timeout_s  # workers write their sums every profile_flush_s
    while True:
        counts = get_profiler().counts(models)
        got = {(m, "ok"): round(c.ok, 3) for m, c in counts.items() if c.ok}
        if got == ledger or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == ledger
    for m, c in counts.items():
        assert c.latency_n == pytest.approx(c.ok, abs=1e-6)
        assert c.hist_n == pytest.approx(c.ok, abs=1e-6)  # every success in the latency histogram too
        assert c.errors == c.timeouts == c.rate_limited == 0
        if c.ok:  # the simulator runs at time scale 0: far faster than the registry expects
            assert c.observed_ms / c.expected_ms < 0.5, m
