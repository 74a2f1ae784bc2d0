"""Provider execution under faults, on real processes, with exact ledger counts.

Postgres (the ``pg_url`` database of this pytest process), a Redis broker, an ``analyze`` worker
process for the module and fresh provider worker processes per test, the simulated provider in a
thread of this process (its ``/stats`` counters are the ground truth for what was called), and the
reconciler running passes from this process like celery beat would. Each test injects one fault
mid-job and then checks, exactly: one result per request; one ok attempt per result; one attempt
row per provider call the simulator counted (and per failure kind); the job's, the results' and
the attempts' costs agree; no request went over its attempt cap.

Redis: these tests flush their database mid-job, so they use their own database number (see
``faults_redis_url``), never the one other test sessions share, and never FLUSHALL: flushing the
one database that holds batchroute's broker queues and rate-limit state is the same fault for
batchroute and leaves other users of the server alone.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from batchroute.localcluster import LocalCluster, WorkerProcess
from tests.conftest import DATA_DIR, apply_settings, truncate_pg, wait_for_job
from tests.integration.test_pipeline import expected_invalid, write_job

pytestmark = pytest.mark.integration

N = 150
PROVIDER_QUEUES = "provider.openai-sim,provider.anthropic-sim,provider.together-sim"
FAULTS_REDIS_DB = 12
# Every fault a test may set, at its "off" value (the simulator is shared by the module's tests).
NO_FAULTS: dict[str, Any] = {"rate_429": 0.0, "rate_5xx": 0.0, "rate_hang": 0.0, "rate_malformed": 0.0,
                             "rate_reset": 0.0, "down_models": set(), "fault_models": None, "seed": None,
                             "retry_after_ms": 1000, "hang_s": 600.0, "time_scale": 0.02}


@pytest.fixture(scope="module")
def faults_redis_url(redis_url: str) -> str:
    """A Redis database for this module only (it is flushed mid-test)."""
    import redis

    url = redis_url.rsplit("/", 1)[0] + f"/{FAULTS_REDIS_DB}"
    redis.Redis.from_url(url).flushdb()
    return url


@dataclass
class Stack:
    """The running deployment of this module, plus what a test started on top of it."""

    env: dict[str, str]
    cluster: LocalCluster
    sim: Any
    redis_url: str
    tmp: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def settings(self, **extra: str) -> dict[str, str]:
        """Apply the module's settings plus ``extra`` in this process; returns the env for workers."""
        env = {**self.env, **extra}
        apply_settings(**env)
        return env

    def providers(self, name: str, env: dict[str, str], concurrency: int = 8) -> WorkerProcess:
        """Start (and wait for) a provider worker process serving every provider queue."""
        w = WorkerProcess(f"{name}-{uuid.uuid4().hex[:6]}", PROVIDER_QUEUES, "threads", concurrency, env,
                          DATA_DIR / "logs")
        self.started.append(w)
        w.wait_ready()
        return w


@pytest.fixture(scope="module")
def stack(pg_url: str, faults_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Postgres + Redis + the simulated provider + a module-wide analyze worker (the slow one to start)."""
    from batchroute.registry import load_registry
    from batchroute.simprovider import SimConfig, SimServerThread

    sim = SimServerThread(load_registry(), SimConfig(**NO_FAULTS)).start()
    env = {"BATCHROUTE_DATABASE_URL": pg_url, "BATCHROUTE_BROKER_URL": faults_redis_url,
           "BATCHROUTE_SIM_URL": sim.url, "BATCHROUTE_RECONCILE_AFTER_S": "3",
           "BATCHROUTE_BACKOFF_BASE_S": "0.05", "BATCHROUTE_BACKOFF_CAP_S": "0.5"}
    cluster = LocalCluster(env, DATA_DIR / "logs")
    cluster.start("faults-analyze", "analyze", "solo", 1)
    try:
        cluster.wait_ready()
        yield Stack(env, cluster, sim, faults_redis_url, tmp_path_factory.mktemp("faults"))
    finally:
        cluster.stop()
        sim.stop()
        apply_settings()


@pytest.fixture
def deploy(stack: Stack, pg_url: str) -> Iterator[Stack]:
    """A clean slate for one test: empty tables and queues, a fault-free simulator; stops its workers after."""
    import redis

    truncate_pg(pg_url)
    redis.Redis.from_url(stack.redis_url).flushdb()
    stack.sim.configure(**NO_FAULTS)
    stack.sim.reset()
    stack.settings()
    try:
        yield stack
    finally:
        for w in stack.started:
            w.stop()
        stack.started.clear()
        stack.sim.configure(**NO_FAULTS)


class Beat:
    """Reconciler passes every ``every_s`` seconds on a thread, like celery beat; keeps the reports."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self.reports: list[Any] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-beat", daemon=True)

    def _run(self) -> None:
        from batchroute.reconciler import reconcile

        while not self._stop.wait(self.every_s):
            try:
                self.reports.append(reconcile())
            except Exception as exc:  # a pass may race a flushed broker; the next one retries
                self.errors.append(exc)

    @property
    def requeued_provider(self) -> int:
        return sum(sum(r.requeued_provider.values()) for r in self.reports)

    @property
    def requeued_analyze(self) -> int:
        return sum(r.requeued_analyze for r in self.reports)

    def __enter__(self) -> Beat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def submit(stack: Stack, n: int = N) -> str:
    from batchroute.jobs import JobOptions, submit_job

    src = write_job(stack.tmp / f"job-{uuid.uuid4().hex[:8]}.jsonl", n)
    report = submit_job(src, JobOptions(latency_class="standard", tags={"suite": "faults"}))
    assert report.requests == n and report.invalid == expected_invalid(n)
    return report.job_id


def wait_until(what: str, check: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def q(sql: str, **params: Any) -> list[Any]:
    from batchroute.db import get_engine

    with get_engine().connect() as conn:
        return list(conn.execute(text(sql), params).all())


def n_results(job_id: str) -> int:
    return int(q("SELECT count(*) FROM results WHERE job_id = :j", j=job_id)[0][0])


@dataclass
class Ledger:
    """What Postgres says about one job."""

    status: dict[str, Any]
    by_state: dict[str, int]
    results: int
    distinct_results: int
    attempts: int
    ok_attempts: int
    ok_per_request_max: int
    attempts_per_request_max: int
    attempts_counter_sum: int
    by_kind: dict[str, int]
    by_http: dict[int | None, int]
    attempts_cost: float
    results_cost: float
    failed_errors: list[str]
    fallbacks: list[tuple[str, int, str | None, str]]
    first_providers: dict[str, str | None]
    result_providers: dict[str, str]


def ledger(job_id: str) -> Ledger:
    from batchroute.jobs import job_status

    st = job_status(job_id)
    j = {"j": job_id}
    return Ledger(
        status=st,
        by_state={s: int(n) for s, n in q("SELECT state, count(*) FROM requests WHERE job_id=:j GROUP BY state", **j)},
        results=int(q("SELECT count(*) FROM results WHERE job_id=:j", **j)[0][0]),
        distinct_results=int(q("SELECT count(DISTINCT request_id) FROM results WHERE job_id=:j", **j)[0][0]),
        attempts=int(q("SELECT count(*) FROM attempts WHERE job_id=:j", **j)[0][0]),
        ok_attempts=int(q("SELECT count(*) FROM attempts WHERE job_id=:j AND status='ok'", **j)[0][0]),
        ok_per_request_max=int(q("SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM attempts "
                                 "WHERE job_id=:j AND status='ok' GROUP BY request_id) t", **j)[0][0]),
        attempts_per_request_max=int(q("SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM attempts "
                                       "WHERE job_id=:j GROUP BY request_id) t", **j)[0][0]),
        attempts_counter_sum=int(q("SELECT coalesce(sum(attempts), 0) FROM requests WHERE job_id=:j", **j)[0][0]),
        by_kind={k: int(n) for k, n in q("SELECT error_kind, count(*) FROM attempts WHERE job_id=:j "
                                         "AND status='error' GROUP BY error_kind", **j)},
        by_http={h: int(n) for h, n in q("SELECT http_status, count(*) FROM attempts WHERE job_id=:j "
                                         "AND status='error' GROUP BY http_status", **j)},
        attempts_cost=float(q("SELECT coalesce(sum(cost_usd), 0) FROM attempts WHERE job_id=:j", **j)[0][0]),
        results_cost=float(q("SELECT coalesce(sum(cost_usd), 0) FROM results WHERE job_id=:j", **j)[0][0]),
        failed_errors=[e for (e,) in q("SELECT error FROM requests WHERE job_id=:j AND state<>'succeeded'", **j)],
        fallbacks=[(r, s, p, why) for r, s, p, why in q(
            "SELECT request_id, seq, provider, reason FROM routing_decisions WHERE job_id=:j AND seq>=1", **j)],
        first_providers={r: p for r, p in q(
            "SELECT request_id, provider FROM routing_decisions WHERE job_id=:j AND seq=0", **j)},
        result_providers={r: p for r, p in q("SELECT request_id, provider FROM results WHERE job_id=:j", **j)},
    )


def assert_consistent(lg: Ledger, n: int, *, all_succeeded: bool = True) -> None:
    """The invariants every fault must leave intact."""
    st = lg.status
    assert st["state"] == "completed", st
    assert st["requests"] == n == sum(lg.by_state.values())
    assert st["done"] == n, lg.by_state  # every request is terminal
    if all_succeeded:
        assert lg.by_state == {"succeeded": n}, (lg.by_state, lg.failed_errors[:5])
    succeeded = lg.by_state.get("succeeded", 0)
    assert lg.results == lg.distinct_results == succeeded
    # A result is written with its ok attempt, in one transaction: never one without the other,
    # and a finished request is never called again.
    assert lg.ok_attempts == lg.results
    assert lg.ok_per_request_max == 1
    # The per-request counter the ledger keeps agrees with the insert-only attempt rows.
    assert lg.attempts_counter_sum == lg.attempts == st["attempts"]
    assert lg.attempts_cost > 0
    assert lg.attempts_cost == pytest.approx(st["cost_usd"], rel=1e-9)
    assert lg.results_cost == pytest.approx(lg.attempts_cost, rel=1e-9)
    for err in lg.failed_errors:
        assert err and "dead letter" in err, err


def attempt_cap() -> int:
    from batchroute.settings import get_settings

    s = get_settings()
    return s.max_attempts_per_model * s.max_models_per_request


def sim_totals(stack: Stack) -> dict[str, int]:
    return dict(stack.sim.stats()["totals"])


def assert_every_call_recorded(lg: Ledger, totals: dict[str, int]) -> None:
    """Each call the simulator served has exactly one attempt row, and the outcomes match kind by kind."""
    print(f"sim: {totals}; attempts by kind: {lg.by_kind}, by http status: {lg.by_http}")
    assert totals["calls"] == lg.attempts
    assert totals["ok"] == lg.ok_attempts
    assert totals["status_429"] == lg.by_kind.get("ProviderRateLimited", 0)
    assert totals["status_5xx"] == sum(n for h, n in lg.by_http.items() if h is not None and h >= 500)
    assert totals["malformed"] == lg.by_kind.get("ProviderProtocolError", 0)
    assert totals["hangs"] == lg.by_kind.get("ProviderTimeout", 0)
    assert totals["status_4xx"] == 0 and lg.by_kind.get("ProviderBadRequest", 0) == 0


def run_checked(deploy: Stack, name: str, env: dict[str, str]) -> tuple[str, Any, dict[str, int], dict[str, Any]]:
    """Run a job on provider workers ``name`` (reconciler beat on) and check the invariants every
    fault test shares: every request has exactly one result and the ledger holds every call the
    simulator answered. Returns (job id, ledger, simulator totals, final status)."""
    deploy.providers(name, env)
    with Beat():
        job_id = submit(deploy)
        st = wait_for_job(job_id, timeout_s=90)
    lg = ledger(job_id)
    assert_consistent(lg, N)
    totals = sim_totals(deploy)
    assert_every_call_recorded(lg, totals)
    return job_id, lg, totals, st


# -- 1. kill -9 of a provider worker -------------------------------------------------------------


def test_kill_9_provider_worker_mid_job(deploy: Stack) -> None:
    env = deploy.settings()
    deploy.sim.configure(time_scale=0.2)
    first = deploy.providers("victim", env, concurrency=4)
    with Beat() as beat:
        job_id = submit(deploy)
        wait_until("some results", lambda: n_results(job_id) >= 25)
        first.kill(signal.SIGKILL)
        assert not first.alive
        orphaned = {r for (r,) in q("SELECT id FROM requests WHERE job_id=:j AND state='running'", j=job_id)}
        done_at_kill = n_results(job_id)
        assert orphaned, "the kill should land while calls are in flight"
        assert done_at_kill < N
        deploy.providers("replacement", env, concurrency=4)
        wait_for_job(job_id, timeout_s=90)
    lg = ledger(job_id)
    assert_consistent(lg, N)
    # The reconciler found the killed worker's requests in Postgres and re-sent them.
    assert beat.requeued_provider >= len(orphaned)
    totals = sim_totals(deploy)
    # Calls in flight at the kill were answered to a dead process: served, never recorded (the
    # ledger holds what batchroute saw). Everything else matches one to one.
    assert totals["ok"] >= lg.ok_attempts
    assert totals["calls"] - lg.attempts <= len(orphaned)


# -- 2. Redis flushed mid-job --------------------------------------------------------------------


def test_redis_flushed_mid_job(deploy: Stack) -> None:
    import redis

    # Small analyze chunks and a small provider worker: messages are waiting in Redis at the flush.
    env = deploy.settings(BATCHROUTE_ANALYZE_CHUNK_SIZE="30")
    deploy.sim.configure(time_scale=0.2)
    deploy.providers("flushed", env, concurrency=2)
    client = redis.Redis.from_url(deploy.redis_url)
    with Beat() as beat:
        job_id = submit(deploy)
        wait_until("the first results", lambda: n_results(job_id) >= 5)
        queued_messages = sum(client.llen(k) for k in client.keys("provider.*") + client.keys("analyze"))
        client.flushdb()
        assert client.dbsize() == 0
        lost = q("SELECT count(*) FROM requests WHERE job_id=:j AND state IN ('queued', 'dispatched')", j=job_id)[0][0]
        assert queued_messages > 0 and lost > 0, "the flush should drop queued work"
        wait_for_job(job_id, timeout_s=90)
    lg = ledger(job_id)
    assert_consistent(lg, N)
    assert beat.requeued_provider + beat.requeued_analyze >= lost
    assert_every_call_recorded(lg, sim_totals(deploy))


# -- 3. 30 % of calls answer 5xx -----------------------------------------------------------------


def test_thirty_percent_5xx_all_succeed_through_retries(deploy: Stack) -> None:
    # 5 attempts x 3 models: a request fails only if 15 calls in a row fail (0.3^15 ~ 1e-8).
    env = deploy.settings(BATCHROUTE_MAX_ATTEMPTS_PER_MODEL="5")
    deploy.sim.configure(rate_5xx=0.3, seed=1234)
    _, lg, totals, st = run_checked(deploy, "flaky", env)
    assert totals["status_5xx"] > 0.15 * totals["calls"]
    assert lg.by_kind == {"ProviderUnavailable": totals["status_5xx"]}
    assert set(lg.by_http) <= {500, 503, 529}
    assert lg.attempts == N + totals["status_5xx"] == st["attempts"]
    assert lg.attempts_per_request_max <= attempt_cap()


# -- 4. one provider fully down ------------------------------------------------------------------


def test_provider_down_falls_back_to_another(deploy: Stack) -> None:
    from batchroute.registry import get_registry

    env = deploy.settings()
    down = "anthropic-sim"  # where the routing sends most of this workload
    models = {m.name for m in get_registry().models if m.provider == down}
    deploy.sim.configure(down_models=models)
    _, lg, totals, _ = run_checked(deploy, "down", env)
    routed_there = {r for r, p in lg.first_providers.items() if p == down}
    assert len(routed_there) > N / 4
    assert down not in set(lg.result_providers.values())
    # Every request first routed to the down provider has a seq>=1 fallback saying why.
    fallbacks: dict[str, list[tuple[int, str | None, str]]] = {}
    for rid, seq, provider, why in lg.fallbacks:
        fallbacks.setdefault(rid, []).append((seq, provider, why))
    assert routed_there <= set(fallbacks)
    for rid in routed_there:
        seqs = sorted(fallbacks[rid])
        assert seqs[0][0] == 1
        assert seqs[-1][1] != down
        why = seqs[0][2]
        assert why.startswith("fallback after sim-") and ("503" in why or "circuit breaker open" in why), why
    # Only the down provider failed, and only with 503s.
    assert lg.by_http == {503: totals["status_5xx"]}
    assert totals["status_5xx"] == sum(c["status_5xx"] for m, c in deploy.sim.stats()["models"].items()
                                       if m in models)


# -- 5. a 429 storm ------------------------------------------------------------------------------


def test_429_storm_slows_down_and_loses_nothing(deploy: Stack) -> None:
    from batchroute.ratelimit import RedisRateLimiter

    env = deploy.settings()
    storm_s = 3.0
    deploy.sim.configure(rate_429=0.9, retry_after_ms=1000, seed=42)
    deploy.providers("storm", env)
    limiter = RedisRateLimiter(deploy.redis_url)
    fractions: list[float] = []
    with Beat():
        job_id = submit(deploy)
        wait_until("the first calls", lambda: sim_totals(deploy)["calls"] > 0)
        t0 = time.monotonic()
        while time.monotonic() - t0 < storm_s:
            fractions.append(asyncio.run(limiter.status("model:sim-claude-sonnet")).fraction)
            time.sleep(0.25)
        during = sim_totals(deploy)
        deploy.sim.configure(rate_429=0.0)
        t1 = time.monotonic()
        wait_for_job(job_id, timeout_s=90)
        after_s = time.monotonic() - t1
    lg = ledger(job_id)
    assert_consistent(lg, N)
    totals = sim_totals(deploy)
    assert_every_call_recorded(lg, totals)
    assert during["status_429"] > during["ok"]
    # Throughput dropped: the shared limiter cut the model's rate for every worker (AIMD)...
    assert min(fractions) < 1.0
    # ...and fewer calls went out per second during the storm than the registry allows.
    assert during["calls"] / storm_s < 1000 / 60 + 2000 / 60
    assert lg.attempts_per_request_max <= attempt_cap()
    print(f"storm: {during}, finished {after_s:.1f}s after it; min fraction {min(fractions):.3f}")


# -- 6. malformed JSON and hung connections ------------------------------------------------------


def test_malformed_json_and_hangs_are_clear_errors_then_retried(deploy: Stack) -> None:
    env = deploy.settings(BATCHROUTE_REQUEST_TIMEOUT_S="1")
    deploy.sim.configure(rate_malformed=0.15, rate_hang=0.1, hang_s=5.0, seed=7)
    job_id, lg, totals, _ = run_checked(deploy, "broken", env)
    assert totals["malformed"] > 0 and totals["hangs"] > 0
    assert lg.by_kind == {"ProviderProtocolError": totals["malformed"], "ProviderTimeout": totals["hangs"]}
    errors = dict(q("SELECT error_kind, min(error) FROM attempts WHERE job_id=:j AND status='error' "
                    "GROUP BY error_kind", j=job_id))
    assert "response is not JSON" in errors["ProviderProtocolError"]
    assert "no answer within 1s" in errors["ProviderTimeout"]
    assert lg.attempts_per_request_max <= attempt_cap()


# -- a chunk delivered twice ---------------------------------------------------------------------


def _seed_dispatched(job_id: str, n: int, model: str = "sim-llama-3-8b") -> list[str]:
    from batchroute.db import get_engine
    from batchroute.jobs import JOBS
    from batchroute.ledger import DECISIONS, REQUESTS, insert_ignore
    from batchroute.registry import get_registry
    from batchroute.tables import utcnow

    spec = get_registry().model(model)
    now = utcnow()
    ids = [f"{job_id}-{i}" for i in range(1, n + 1)]
    with get_engine().begin() as conn:
        insert_ignore(conn, JOBS, [{"id": job_id, "tenant": "default", "name": "twice", "source": "test",
                                    "latency_class": "batch", "objective": "balanced", "baseline_model": model,
                                    "tags": {}, "state": "running", "submitted": True, "request_count": n,
                                    "total_lines": n, "invalid_lines": 0, "created_at": now}])
        insert_ignore(conn, REQUESTS, [{
            "id": rid, "job_id": job_id, "line": i, "custom_id": f"c{i}", "prompt": f"Say hello number {i}.",
            "latency_class": "batch", "prompt_tokens_est": 10, "state": "dispatched", "attempts": 0,
            "domain": "factual_qa", "complexity": "simple", "style": "concise", "confidence": 0.9,
            "model": model, "provider": spec.provider, "created_at": now, "updated_at": now}
            for i, rid in enumerate(ids, 1)])
        insert_ignore(conn, DECISIONS, [{"request_id": rid, "job_id": job_id, "seq": 0, "model": model,
                                         "provider": spec.provider, "reason": "test", "detail": {},
                                         "created_at": now} for rid in ids])
    return ids


def test_chunk_delivered_twice_runs_each_request_once(pg_url: str, stack: Stack) -> None:
    """Two deliveries of one chunk at once (broker redelivery, reconciler re-send): one call each."""
    from batchroute.db import get_engine
    from batchroute.execution import claim, record_call_success, run_chunk
    from batchroute.ledger import record_attempt
    from batchroute.runtime import get_runtime
    from batchroute.tables import Attempt

    truncate_pg(pg_url)
    stack.sim.configure(**{**NO_FAULTS, "time_scale": 0.05})
    stack.sim.reset()
    apply_settings(BATCHROUTE_DATABASE_URL=pg_url, BATCHROUTE_BROKER_URL="memory://",
                   BATCHROUTE_SIM_URL=stack.sim.url, BATCHROUTE_RECONCILE_AFTER_S="60")
    try:
        job_id = "job_twice_" + uuid.uuid4().hex[:8]
        ids = _seed_dispatched(job_id, 40)
        # One request looks abandoned (running, silent for an hour): a delivery may take it over.
        # Another is held by a live executor elsewhere (running, fresh): no delivery may touch it.
        with get_engine().begin() as conn:
            conn.execute(text("UPDATE requests SET state='running', updated_at=now() - interval '1 hour' "
                              "WHERE id=:i"), {"i": ids[0]})
            conn.execute(text("UPDATE requests SET state='running', updated_at=now() WHERE id=:i"), {"i": ids[1]})
        rt = get_runtime()

        async def twice() -> None:
            await asyncio.gather(run_chunk(ids), run_chunk(ids))

        rt.run(twice(), timeout_s=60)
        rt.run(run_chunk(ids), timeout_s=60)  # a late third delivery finds nothing to do
        lg = ledger(job_id)
        assert lg.by_state == {"succeeded": 39, "running": 1}
        assert lg.results == lg.distinct_results == lg.ok_attempts == lg.attempts == 39
        assert lg.ok_per_request_max == 1
        assert sim_totals(stack)["calls"] == 39
        assert lg.results_cost == pytest.approx(lg.attempts_cost, rel=1e-9)
        assert rt.run(rt.writer.write(claim([ids[1]], 60.0))) == []

        # Replaying an attempt's write (same attempt id) never bills twice.
        from sqlmodel import Session, col, select

        with Session(get_engine()) as s:
            row = s.exec(select(Attempt).where(col(Attempt.request_id) == ids[2])).one()
            data = row.model_dump()
        rollup_before = q("SELECT coalesce(sum(cost_usd), 0), coalesce(sum(attempts), 0) FROM cost_rollup_daily")
        assert rt.writer.submit(record_attempt(dict(data))).result(10) is False
        replay = record_call_success(dict(data), {
            "request_id": ids[2], "job_id": job_id, "custom_id": "c3", "attempt_id": data["id"],
            "model": data["model"], "provider": data["provider"], "output": "again", "finish_reason": "stop",
            "prompt_tokens": 1, "completion_tokens": 1, "latency_ms": 1.0})
        assert rt.writer.submit(replay).result(10) is False
        rollup_after = q("SELECT coalesce(sum(cost_usd), 0), coalesce(sum(attempts), 0) FROM cost_rollup_daily")
        assert rollup_after == rollup_before
        after = ledger(job_id)
        assert after.attempts == 39
        assert (after.attempts_cost, after.results_cost) == pytest.approx((lg.attempts_cost, lg.results_cost), rel=1e-9)
        assert q("SELECT output FROM results WHERE request_id=:r", r=ids[2])[0][0] != "again"
        assert int(q("SELECT attempts FROM requests WHERE id=:r", r=ids[2])[0][0]) == 1
    finally:
        apply_settings()


def test_results_cost_follows_a_late_duplicate_call(pg_url: str, stack: Stack) -> None:
    """A call that really happened twice (an executor presumed dead was not) is billed, and the
    request's result cost includes it, so results and ledger still agree."""
    from batchroute.execution import record_call_success
    from batchroute.runtime import get_runtime

    truncate_pg(pg_url)
    apply_settings(BATCHROUTE_DATABASE_URL=pg_url, BATCHROUTE_BROKER_URL="memory://",
                   BATCHROUTE_SIM_URL=stack.sim.url)
    try:
        job_id = "job_late_" + uuid.uuid4().hex[:8]
        rid = _seed_dispatched(job_id, 1)[0]
        rt = get_runtime()

        def call(cost: float, output: str) -> bool:
            aid = uuid.uuid4().hex
            row = {"id": aid, "request_id": rid, "job_id": job_id, "model": "sim-llama-3-8b",
                   "provider": "together-sim", "attempt_no": 1, "status": "ok", "prompt_tokens": 10,
                   "completion_tokens": 10, "cost_usd": cost, "tags": {}}
            res = {"request_id": rid, "job_id": job_id, "custom_id": "c1", "attempt_id": aid,
                   "model": "sim-llama-3-8b", "provider": "together-sim", "output": output,
                   "finish_reason": "stop", "prompt_tokens": 10, "completion_tokens": 10, "latency_ms": 5.0}
            return bool(rt.writer.submit(record_call_success(row, res)).result(10))

        assert call(0.25, "first") is True
        assert call(0.5, "second") is False
        assert q("SELECT output, cost_usd FROM results WHERE request_id=:r", r=rid) == [("first", 0.75)]
        assert float(q("SELECT sum(cost_usd) FROM attempts WHERE request_id=:r", r=rid)[0][0]) == 0.75
    finally:
        apply_settings()

