"""The cost ledger on real databases: rollups vs ledger, price snapshots, savings, budgets, reports.

Runs on Postgres (the session database of ``pg_url``, emptied before each test) and on a fresh
SQLite file, except where a test says otherwise.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, inspect, select, text
from sqlmodel import Session

from tests.conftest import apply_settings, empty_db

JOB_DEFS = [("job_a", "acme", {"team": "legal", "env": "prod"}), ("job_b", "acme", {"team": "ml"}),
            ("job_c", "globex", {})]
MODELS = [("sim-gpt-4", "openai-sim"), ("sim-claude-sonnet", "anthropic-sim"), ("sim-llama-3-8b", "together-sim")]
# Instants on both sides of UTC midnight, so day bucketing is exercised.
INSTANTS = [datetime(2026, 11, 1, 0, 0, 1, tzinfo=UTC), datetime(2026, 11, 1, 23, 59, 59, tzinfo=UTC),
            datetime(2026, 11, 2, 12, 0, tzinfo=UTC), datetime(2026, 11, 5, 23, 59, 59, 999000, tzinfo=UTC)]
SUMS = ("attempts", "requests", "failed_attempts", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd",
        "baseline_cost_usd")


@pytest.fixture(params=["postgres", "sqlite"])
def ledger_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database with settings pointing at it; yields its SQLAlchemy URL."""
    yield empty_db(request, tmp_path, request.param, BATCHROUTE_ANALYZE_CHUNK_SIZE="2")
    apply_settings()


def engine() -> Any:
    from batchroute.db import get_engine

    return get_engine()


def add_job(job_id: str, tenant: str = "acme", tags: dict[str, str] | None = None, budget: float | None = None,
            baseline: str | None = None, state: str = "running", requests: Sequence[tuple[int, str | None, int | None]]
            = ()) -> None:
    """A job row and its requests: (line, style, max_tokens), all queued."""
    from batchroute.ledger import REQUESTS, insert_ignore
    from batchroute.tables import Job, utcnow

    now = utcnow()
    with engine().begin() as conn:
        insert_ignore(conn, Job.__table__, [{  # type: ignore[attr-defined]
            "id": job_id, "tenant": tenant, "tags": tags or {}, "budget_usd": budget, "baseline_model": baseline,
            "state": state, "latency_class": "standard", "objective": "balanced", "total_lines": len(requests),
            "invalid_lines": 0, "request_count": len(requests), "submitted": True, "created_at": now}])
        insert_ignore(conn, REQUESTS, [{
            "id": f"{job_id}-{line}", "job_id": job_id, "line": line, "custom_id": f"c{line}", "prompt": "p",
            "latency_class": "standard", "prompt_tokens_est": 100, "state": "queued", "attempts": 0,
            "style": style, "max_tokens": max_tokens, "created_at": now, "updated_at": now}
            for line, style, max_tokens in requests])


def attempt(i: int, job: tuple[str, str, dict[str, str]], model: tuple[str, str], request_id: str, *,
            status: str = "ok", prompt: int = 100, completion: int = 50, cached: int = 0, cost: float = 0.001,
            baseline: float | None = 0.0, created_at: datetime | None = None, domain: str | None = "code",
            latency: str | None = "batch", estimated: bool = False) -> dict[str, Any]:
    """An attempt row like execution.py writes (plus an explicit baseline unless ``baseline`` is None)."""
    row = {"id": f"att-{i:06d}", "request_id": request_id, "job_id": job[0], "tenant": job[1], "model": model[0],
           "provider": model[1], "attempt_no": 1, "status": status, "error_kind": None if status == "ok" else "X",
           "error": None, "http_status": 200, "latency_ms": 12.5, "prompt_tokens": prompt,
           "completion_tokens": completion, "cached_tokens": cached, "usage_estimated": estimated,
           "input_price_per_mtok_usd": 1.0, "output_price_per_mtok_usd": 2.0, "cached_price_per_mtok_usd": None,
           "cost_usd": cost, "domain": domain, "latency_class": latency, "tags": dict(job[2]),
           "created_at": created_at or datetime(2026, 11, 3, tzinfo=UTC)}
    if baseline is not None:
        row["baseline_cost_usd"] = baseline
    return row


def dataset(n: int, seed: int = 7, offset: int = 0) -> list[dict[str, Any]]:
    """n attempts over 3 jobs, 3 models, 2 tenants, 3 days, mixed domains/latency/tags, ~1 in 5 failed."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        i = k + offset
        job = JOB_DEFS[i % 3]
        ok = i % 5 != 0
        rows.append(attempt(
            i, job, MODELS[rng.randrange(3)], f"{job[0]}-{i // 6}", status="ok" if ok else "error",
            prompt=rng.randrange(10, 2000), completion=rng.randrange(0, 800) if ok else 0,
            cached=rng.randrange(0, 10), cost=round(rng.uniform(0, 0.02), 9) if ok else 0.0,
            baseline=round(rng.uniform(0.01, 0.05), 9) if ok else 0.0,
            created_at=INSTANTS[rng.randrange(4)] + timedelta(microseconds=i),
            domain=rng.choice([None, "code", "math"]), latency=rng.choice([None, "batch", "realtime"]),
            estimated=rng.random() < 0.1))
    return rows


def expected(rows: Sequence[dict[str, Any]], by: Sequence[str]) -> dict[tuple[Any, ...], dict[str, float]]:
    """Totals per group computed in Python from attempt rows (first row of each id wins)."""
    seen: set[str] = set()
    out: dict[tuple[Any, ...], dict[str, float]] = defaultdict(lambda: dict.fromkeys(SUMS, 0.0))
    names = {"job": "job_id", "model": "model", "provider": "provider", "tenant": "tenant",
             "latency": "latency_class", "domain": "domain"}
    for r in rows:
        if r["id"] in seen:
            continue
        seen.add(r["id"])
        key = []
        for b in by:
            if b == "day":
                key.append(r["created_at"].astimezone(UTC).date().isoformat())
            elif b.startswith("tag:"):
                key.append(r["tags"].get(b[4:]))
            else:
                key.append(r[names[b]])
        acc = out[tuple(key)]
        ok = r["status"] == "ok"
        acc["attempts"] += 1
        acc["requests"] += ok
        acc["failed_attempts"] += not ok
        for c in ("prompt_tokens", "completion_tokens", "cached_tokens"):
            acc[c] += r[c]
        acc["cost_usd"] += r["cost_usd"]
        acc["baseline_cost_usd"] += r.get("baseline_cost_usd") or 0.0
    return dict(out)


def assert_report(report: list[dict[str, Any]], want: dict[tuple[Any, ...], dict[str, float]],
                  by: Sequence[str]) -> None:
    got = {tuple(r[b] for b in by): r for r in report}
    assert set(got) == set(want), (by, sorted(map(str, got)), sorted(map(str, want)))
    for key, w in want.items():
        g = got[key]
        for c in SUMS:
            if c in ("cost_usd", "baseline_cost_usd"):
                assert g[c] == pytest.approx(w[c], rel=1e-9, abs=1e-12), (by, key, c)
            else:
                assert g[c] == w[c], (by, key, c)
        assert g["savings_usd"] == pytest.approx(w["baseline_cost_usd"] - w["cost_usd"], rel=1e-9, abs=1e-12)


def write_rows(rows: Sequence[dict[str, Any]], bulk: bool) -> None:
    from batchroute.ledger import record_attempt, record_attempts_bulk

    with engine().begin() as conn:
        if bulk:
            record_attempts_bulk(rows)(conn)
        else:
            for r in rows:
                record_attempt(r)(conn)


def ledger_totals() -> dict[str, float]:
    from batchroute.ledger import ATTEMPTS

    with engine().connect() as conn:
        row = conn.execute(select(func.count(), func.sum(ATTEMPTS.c.cost_usd), func.sum(ATTEMPTS.c.prompt_tokens),
                                  func.sum(ATTEMPTS.c.baseline_cost_usd))).one()
    return {"attempts": row[0], "cost_usd": float(row[1] or 0), "prompt_tokens": int(row[2] or 0),
            "baseline_cost_usd": float(row[3] or 0)}


def rollup_totals() -> dict[str, float]:
    from batchroute.rollups import ROLLUP

    with engine().connect() as conn:
        row = conn.execute(select(func.sum(ROLLUP.c.attempts), func.sum(ROLLUP.c.cost_usd),
                                  func.sum(ROLLUP.c.prompt_tokens), func.sum(ROLLUP.c.baseline_cost_usd))).one()
    return {"attempts": int(row[0] or 0), "cost_usd": float(row[1] or 0), "prompt_tokens": int(row[2] or 0),
            "baseline_cost_usd": float(row[3] or 0)}


def test_rollups_equal_ledger_with_replayed_writes(ledger_db: str) -> None:
    from batchroute.ledger import REQUESTS, record_attempt
    from batchroute.rollups import ledger_vs_rollup_diff, rebuild_rollups
    from batchroute.writer import GroupCommitWriter

    rows = dataset(240)
    for job_id, tenant, tags in JOB_DEFS:
        add_job(job_id, tenant, tags, requests=[(line, "concise", None) for line in range(40)])
    # Single writes through the group-commit writer, each replayed once (as a redelivered task would).
    writer = GroupCommitWriter(engine(), max_batch=25)
    futures = [writer.submit(record_attempt(r)) for r in rows[:80] for _ in range(2)]
    results = [f.result(timeout=60) for f in futures]
    writer.close()
    assert sum(results) == 80  # each row inserted by exactly one of its two writes
    # Bulk writes: duplicates inside one batch and across batches.
    write_rows(rows[60:160] + rows[100:120], bulk=True)
    write_rows(rows[150:240], bulk=True)
    write_rows(rows[200:240], bulk=False)
    assert ledger_totals()["attempts"] == 240
    lt, rt = ledger_totals(), rollup_totals()
    assert rt["attempts"] == lt["attempts"] and rt["prompt_tokens"] == lt["prompt_tokens"]
    assert rt["cost_usd"] == pytest.approx(lt["cost_usd"], rel=1e-12)
    assert rt["baseline_cost_usd"] == pytest.approx(lt["baseline_cost_usd"], rel=1e-12)
    assert ledger_vs_rollup_diff() == []
    # Every attempt is counted exactly once on its request.
    per_request: dict[str, int] = defaultdict(int)
    for r in rows:
        per_request[r["request_id"]] += 1
    with engine().connect() as conn:
        counted = dict(conn.execute(select(REQUESTS.c.id, REQUESTS.c.attempts).where(REQUESTS.c.attempts > 0)).all())
    assert counted == per_request
    # Repair recomputes the same totals.
    rebuild_rollups(since=date(2026, 11, 2))
    assert ledger_vs_rollup_diff() == []
    rebuild_rollups()
    assert ledger_vs_rollup_diff() == []
    assert rollup_totals()["attempts"] == 240


def test_bulk_copy_path_is_idempotent(ledger_db: str) -> None:
    """Batches above COPY_MIN_ROWS take the COPY path on Postgres (multi-row INSERT on SQLite)."""
    from batchroute.ledger import COPY_MIN_ROWS, record_attempts_bulk
    from batchroute.rollups import ledger_vs_rollup_diff

    rows = dataset(COPY_MIN_ROWS + 300, seed=11)
    with engine().begin() as conn:
        first = record_attempts_bulk(rows[:COPY_MIN_ROWS + 100])(conn)
        # A second bulk op in the same transaction (a coalescing writer) with overlap.
        second = record_attempts_bulk(rows[COPY_MIN_ROWS - 900:])(conn)
    assert len(first) == COPY_MIN_ROWS + 100 and len(second) == 200
    write_rows(rows, bulk=True)  # a full replay inserts nothing
    assert ledger_totals()["attempts"] == len(rows)
    assert ledger_vs_rollup_diff() == []
    assert_report(__import__("batchroute.costs", fromlist=["cost_report"]).cost_report(["job", "day"]),
                  expected(rows, ["job", "day"]), ["job", "day"])


@pytest.mark.parametrize("by", [["job"], ["model"], ["provider"], ["tenant"], ["day"], ["latency"], ["domain"],
                                ["tag:team"], ["tag:env"], ["model", "day"], ["tenant", "tag:team", "tag:env"], []])
def test_cost_report_by_each_dimension(ledger_db: str, by: list[str]) -> None:
    from batchroute.costs import cost_report

    rows = dataset(150, seed=3)
    write_rows(rows, bulk=True)
    assert_report(cost_report(by), expected(rows, by), by)
    # One job's drill-down reads the ledger; it must agree with the same slice of the data.
    job_rows = [r for r in rows if r["job_id"] == "job_a"]
    assert_report(cost_report(by, job="job_a"), expected(job_rows, by), by)
    # Filters: inclusive UTC day range and tenant, on both paths.
    sliced = [r for r in rows if date(2026, 11, 1) <= r["created_at"].date() <= date(2026, 11, 2)
              and r["tenant"] == "acme"]
    assert_report(cost_report(by, since="2026-11-01", until="2026-11-02", tenant="acme"), expected(sliced, by), by)
    sliced_job = [r for r in sliced if r["job_id"] == "job_b"]
    assert_report(cost_report(by, job="job_b", since="2026-11-01", until="2026-11-02", tenant="acme"),
                  expected(sliced_job, by), by)


def test_cost_report_rejects_bad_input(ledger_db: str) -> None:
    from batchroute.costs import cost_report
    from batchroute.errors import InputError

    with pytest.raises(InputError, match="allowed"):
        cost_report(["model", "cost; DROP TABLE attempts"])
    with pytest.raises(InputError, match="YYYY-MM-DD"):
        cost_report(["model"], since="2026/11/01")
    with pytest.raises(InputError, match="after"):
        cost_report(["model"], since="2026-11-05", until="2026-11-01")
    assert cost_report(["model"]) == [] and cost_report([]) == []
    # A hostile tag *value* is data, not SQL.
    write_rows([attempt(1, ("job_x", "t", {"team": "x'); DROP TABLE attempts; --"}), MODELS[0], "job_x-1")], bulk=False)
    assert cost_report(["tag:team"])[0]["tag:team"] == "x'); DROP TABLE attempts; --"


def test_savings_are_baseline_minus_actual(ledger_db: str) -> None:
    from batchroute.costs import cost_report
    from batchroute.pricing import PriceSnapshot, expected_output_tokens
    from batchroute.registry import get_registry

    reg = get_registry()
    add_job("job_s", tags={"team": "legal"}, baseline="sim-claude-sonnet",
            requests=[(1, "concise", None), (2, "verbose", 50), (3, None, None)])
    add_job("job_d", requests=[(1, "verbose", None)])  # no baseline named: the registry's strongest
    cheap = ("sim-llama-3-8b", "together-sim")
    jobs = {"job_s": ("job_s", "acme", {"team": "legal"}), "job_d": ("job_d", "acme", {})}
    rows = [attempt(1, jobs["job_s"], cheap, "job_s-1", prompt=1000, completion=70, cost=0.00011, baseline=None),
            attempt(2, jobs["job_s"], cheap, "job_s-2", status="error", prompt=0, completion=0, cost=0.0,
                    baseline=None),
            attempt(3, jobs["job_s"], cheap, "job_s-2", prompt=400, completion=40, cost=0.00005, baseline=None),
            attempt(4, jobs["job_s"], cheap, "job_s-3", prompt=250, completion=300, cost=0.00006, baseline=None),
            attempt(5, jobs["job_d"], cheap, "job_d-1", prompt=3000, completion=500, cost=0.00035, baseline=None)]
    write_rows(rows[:2], bulk=False)
    write_rows(rows[2:], bulk=True)

    def base(model: str, prompt: int, style: str | None, max_tokens: int | None) -> float:
        m = reg.model(model)
        return PriceSnapshot.of(m).cost_usd(prompt, expected_output_tokens(m, style, max_tokens))

    want_s = (base("sim-claude-sonnet", 1000, "concise", None) + base("sim-claude-sonnet", 400, "verbose", 50)
              + base("sim-claude-sonnet", 250, None, None))
    want_d = base(reg.strongest().name, 3000, "verbose", None)
    by_job = {r["job"]: r for r in cost_report(["job"])}
    assert by_job["job_s"]["baseline_cost_usd"] == pytest.approx(want_s, rel=1e-12)
    assert by_job["job_d"]["baseline_cost_usd"] == pytest.approx(want_d, rel=1e-12)
    for job_id, actual in (("job_s", 0.00011 + 0.00005 + 0.00006), ("job_d", 0.00035)):
        row = by_job[job_id]
        assert row["cost_usd"] == pytest.approx(actual, rel=1e-12)
        assert row["savings_usd"] == pytest.approx(row["baseline_cost_usd"] - actual, rel=1e-12)
        assert row["savings_pct"] == pytest.approx(100 * (row["baseline_cost_usd"] - actual)
                                                   / row["baseline_cost_usd"], abs=1e-3)
    with engine().connect() as conn:
        failed = conn.execute(text("SELECT baseline_cost_usd FROM attempts WHERE status = 'error'")).scalar_one()
    assert failed == 0.0  # the baseline counts once per successful request, never on failures
    # The views agree with the report.
    with engine().connect() as conn:
        v = dict(conn.execute(text("SELECT job_id, savings_usd FROM v_cost_by_job")).all())
        tag = conn.execute(text("SELECT SUM(cost_usd), SUM(baseline_cost_usd) FROM v_cost_by_tag "
                                "WHERE tag_key = 'team' AND tag_value = 'legal'")).one()
    assert v["job_s"] == pytest.approx(by_job["job_s"]["savings_usd"], rel=1e-9)
    assert float(tag[0]) == pytest.approx(by_job["job_s"]["cost_usd"], rel=1e-9)
    assert float(tag[1]) == pytest.approx(want_s, rel=1e-9)


def test_price_change_bills_each_job_at_its_own_price(ledger_db: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from batchroute.costs import cost_report
    from batchroute.pricing import PriceSnapshot
    from batchroute.registry import BUNDLED_REGISTRY, _cached, get_registry
    from batchroute.settings import get_settings

    model_name = "sim-gpt-3.5-turbo"

    def bill(job: tuple[str, str, dict[str, str]], i: int) -> tuple[float, float]:
        m = get_registry().model(model_name)
        prices = PriceSnapshot.of(m)  # what execution.py stores: the price in force at the call
        row = attempt(i, job, (m.name, m.provider), f"{job[0]}-1", prompt=10_000, completion=2_000,
                      cost=prices.cost_usd(10_000, 2_000), baseline=None)
        row.update(input_price_per_mtok_usd=prices.input_per_mtok_usd,
                   output_price_per_mtok_usd=prices.output_per_mtok_usd)
        write_rows([row], bulk=False)
        return row["cost_usd"], row["input_price_per_mtok_usd"]

    job_a: tuple[str, str, dict[str, str]] = ("job_old", "acme", {})
    job_b: tuple[str, str, dict[str, str]] = ("job_new", "acme", {})
    add_job(job_a[0], requests=[(1, "verbose", None)])
    add_job(job_b[0], requests=[(1, "verbose", None)])
    cost_a, price_a = bill(job_a, 1)
    before = {r["job"]: r for r in cost_report(["job"])}
    # The provider raises prices: a new registry with every price tripled.
    data = yaml.safe_load(BUNDLED_REGISTRY.read_text())
    for m in data["models"]:
        for k in ("input_price_per_mtok_usd", "output_price_per_mtok_usd", "cached_input_price_per_mtok_usd"):
            if m.get(k) is not None:
                m[k] = m[k] * 3
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("BATCHROUTE_REGISTRY", str(path))
    get_settings.cache_clear()
    _cached.cache_clear()
    cost_b, price_b = bill(job_b, 2)
    assert price_b == pytest.approx(3 * price_a)
    report = {r["job"]: r for r in cost_report(["job"])}
    assert report["job_old"]["cost_usd"] == pytest.approx(cost_a, rel=1e-12)
    assert report["job_new"]["cost_usd"] == pytest.approx(cost_b, rel=1e-12)
    assert cost_b == pytest.approx(3 * cost_a, rel=1e-12)
    # History does not move: the old job keeps its cost and baseline at the old prices.
    assert report["job_old"] == before["job_old"]
    assert report["job_new"]["baseline_cost_usd"] == pytest.approx(3 * report["job_old"]["baseline_cost_usd"],
                                                                   rel=1e-12)
    monkeypatch.delenv("BATCHROUTE_REGISTRY")
    get_settings.cache_clear()
    _cached.cache_clear()


class RecordingDispatcher:
    """Captures what would be sent to the analyzer."""

    def __init__(self) -> None:
        self.analyzed: list[list[str]] = []

    def analyze(self, request_ids: Sequence[str]) -> None:
        self.analyzed.append(list(request_ids))


def reservations() -> dict[str, float]:
    from batchroute.budgets import RESERVATIONS

    with engine().connect() as conn:
        return {r: float(a) for r, a in conn.execute(select(RESERVATIONS.c.request_id, RESERVATIONS.c.amount_usd))}


def job_row(job_id: str) -> Any:
    from batchroute.budgets import JOBS

    with engine().connect() as conn:
        return conn.execute(select(JOBS).where(JOBS.c.id == job_id)).one()


def test_budget_reserve_settle_pause_resume(ledger_db: str) -> None:
    from batchroute.budgets import list_budgets, pause_job, reserve, resume_job, set_tag_budget, settle
    from batchroute.errors import InputError
    from batchroute.ledger import record_failure, record_success

    legal = {"team": "legal"}
    add_job("job_j", tags=legal, budget=1.0, requests=[(i, "concise", None) for i in range(1, 6)])
    add_job("job_k", tags=legal, requests=[(1, "concise", None)])
    add_job("job_free", requests=[(1, "concise", None)])
    with engine().begin() as conn:
        assert reserve(conn, "job_j", legal, "job_j-1", 0.4)
        assert reserve(conn, "job_j", legal, "job_j-2", 0.4)
        assert not reserve(conn, "job_j", legal, "job_j-3", 0.4)  # 0.8 + 0.4 > 1.0
        assert reserve(conn, "job_j", legal, "job_j-1", 0.4)  # the same request again: no second hold
        assert reserve(conn, "job_free", {}, "job_free-1", 100.0)  # no budget applies: nothing written
    assert reservations() == {"job_j-1": 0.4, "job_j-2": 0.4}
    # Request 1 completes at a real cost of 0.3: its reservation goes, its cost counts.
    j = ("job_j", "acme", legal)
    row = attempt(1, j, MODELS[2], "job_j-1", cost=0.3)
    write_rows([row], bulk=False)
    with engine().begin() as conn:
        record_success({"request_id": "job_j-1", "job_id": "job_j", "custom_id": "c1", "attempt_id": row["id"],
                        "model": row["model"], "provider": row["provider"], "output": "ok",
                        "finish_reason": "stop", "prompt_tokens": 100, "completion_tokens": 50,
                        "latency_ms": 1.0, "created_at": row["created_at"]})(conn)
    assert reservations() == {"job_j-2": 0.4}
    with engine().begin() as conn:
        assert not reserve(conn, "job_j", legal, "job_j-3", 0.4)  # 0.3 spent + 0.4 held + 0.4 > 1.0
        assert reserve(conn, "job_j", legal, "job_j-3", 0.3)  # exactly 1.0
        # A request that fails for good releases its hold too (record_failure settles).
        record_failure("job_j-2", "dead letter")(conn)
        settle(conn, "job_j-404")  # settling nothing is fine
    assert reservations() == {"job_j-3": 0.3}
    # A tag budget counts every job with the tag: spent 0.3 (job_j) + held 0.3 (job_j-3).
    set_tag_budget("team", "legal", 0.65)
    with engine().begin() as conn:
        assert not reserve(conn, "job_k", legal, "job_k-1", 0.1)
        assert reserve(conn, "job_k", legal, "job_k-1", 0.05)
    listed = {b["budget"]: b for b in list_budgets()}
    assert listed["tag:team=legal"]["spent_usd"] == pytest.approx(0.3)
    assert listed["tag:team=legal"]["reserved_usd"] == pytest.approx(0.35)
    assert listed["job:job_j"]["limit_usd"] == 1.0 and listed["job:job_j"]["reserved_usd"] == pytest.approx(0.3)
    set_tag_budget("team", "legal", 50.0)  # replaces the limit
    assert {b["budget"]: b for b in list_budgets()}["tag:team=legal"]["limit_usd"] == 50.0
    # Pause: nothing more is admitted; resume with a bigger budget re-queues the waiting requests.
    assert pause_job("job_j", "job:job_j budget reached")
    assert not pause_job("job_j", "again")
    assert job_row("job_j").state == "paused" and job_row("job_j").pause_reason == "job:job_j budget reached"
    with engine().begin() as conn:
        assert not reserve(conn, "job_j", legal, "job_j-4", 0.0)
    disp = RecordingDispatcher()
    report = resume_job("job_j", new_budget_usd=5.0, dispatcher=disp)  # type: ignore[arg-type]
    assert report.state == "running" and report.budget_usd == 5.0 and report.spent_usd == pytest.approx(0.3)
    # Queued requests 3, 4, 5 (1 succeeded, 2 failed), in chunks of BATCHROUTE_ANALYZE_CHUNK_SIZE=2.
    assert disp.analyzed == [["job_j-3", "job_j-4"], ["job_j-5"]]
    assert report.requeued == 3
    assert job_row("job_j").state == "running" and job_row("job_j").budget_usd == 5.0
    assert job_row("job_j").pause_reason is None
    with engine().begin() as conn:
        assert reserve(conn, "job_j", legal, "job_j-4", 2.0)
    add_job("job_done", state="completed")
    with pytest.raises(InputError, match="completed"):
        resume_job("job_done", dispatcher=disp)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        resume_job("job_j", new_budget_usd=0, dispatcher=disp)  # type: ignore[arg-type]


def test_admit_chunk_holds_over_budget_requests_and_pauses(ledger_db: str) -> None:
    from sqlmodel import col, select  # SQLModel's select: Session.exec yields the rows' model objects

    from batchroute.budgets import admit_chunk
    from batchroute.pricing import estimate_cost_usd
    from batchroute.registry import get_registry
    from batchroute.tables import Job, Request

    model = get_registry().model("sim-gpt-4")
    one = estimate_cost_usd(model, 100, "concise", None)  # every request: 100 prompt tokens
    add_job("job_p", budget=2.5 * one, requests=[(i, "concise", None) for i in range(1, 6)])
    add_job("job_q", requests=[(1, "concise", None)])
    with Session(engine()) as s:
        jobs = {j.id: j for j in s.exec(select(Job))}
        reqs = list(s.exec(select(Request).order_by(col(Request.job_id), col(Request.line))))
    routed = [(r, model.name, "concise") for r in reqs]
    with engine().begin() as conn:
        held = admit_chunk(conn, jobs, routed)
    assert held == {"job_p-3", "job_p-4", "job_p-5"}
    assert set(reservations()) == {"job_p-1", "job_p-2"}
    assert job_row("job_p").state == "paused" and "job:job_p" in job_row("job_p").pause_reason
    assert job_row("job_q").state == "running"
    # Re-analysing the same chunk (a redelivery) holds the same requests and reserves nothing twice.
    jobs["job_p"].state = "paused"
    with engine().begin() as conn:
        assert admit_chunk(conn, jobs, routed) == {"job_p-1", "job_p-2", "job_p-3", "job_p-4", "job_p-5"}
    assert set(reservations()) == {"job_p-1", "job_p-2"}


def test_migrations_upgrade_a_fresh_sqlite_file(tmp_path: Path) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    from batchroute.db import alembic_config, migrate

    url = f"sqlite:///{tmp_path}/fresh.db"
    migrate(url)
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head
        insp = inspect(eng)
        for table in ("attempts", "cost_rollup_daily", "tag_set_items", "budgets", "budget_reservations"):
            assert insp.has_table(table), table
        assert {"v_cost_by_job", "v_cost_by_tag", "v_cost_by_model_day"} <= set(insp.get_view_names())
        assert {"baseline_cost_usd", "tag_set"} <= {c["name"] for c in insp.get_columns("attempts")}
        command.downgrade(alembic_config(url), "0001")
        assert not inspect(eng).has_table("cost_rollup_daily")
        migrate(url)
        assert inspect(eng).has_table("cost_rollup_daily")
    finally:
        eng.dispose()


def test_cli_costs_budget_resume(tmp_path: Path) -> None:
    """The commands as `cli.py` will register them, on a fresh SQLite database."""
    import csv
    import io
    import json

    import typer
    from typer.testing import CliRunner

    from batchroute.cost_cli import register, register_bench

    apply_settings(BATCHROUTE_DATABASE_URL=f"sqlite:///{tmp_path}/cli.db", BATCHROUTE_BROKER_URL="memory://")
    try:
        app, bench = typer.Typer(), typer.Typer()
        app.add_typer(bench, name="bench")
        register(app)
        register_bench(bench)
        run = CliRunner().invoke
        rows = dataset(30, seed=5)
        write_rows(rows, bulk=True)
        res = run(app, ["costs", "--by", "model", "--by", "tag:team", "--format", "csv"])
        assert res.exit_code == 0, res.output
        parsed = list(csv.DictReader(io.StringIO(res.stdout)))
        assert sum(int(r["attempts"]) for r in parsed) == 30
        res = run(app, ["costs", "--job", "job_a", "--format", "json"])
        assert res.exit_code == 0 and {r["model"] for r in json.loads(res.stdout)} <= {m for m, _ in MODELS}
        assert run(app, ["costs", "--by", "color"]).exit_code == 2
        assert run(app, ["costs", "--until", "11/05/2026"]).exit_code == 2
        assert run(app, ["costs", "--by", "day"]).exit_code == 0
        assert run(app, ["budget", "set", "--tag", "team=legal", "--usd", "10"]).exit_code == 0
        assert run(app, ["budget", "set", "--tag", "team legal", "--usd", "10"]).exit_code == 2
        listed = run(app, ["budget", "list", "--json"])
        assert listed.exit_code == 0 and json.loads(listed.stdout)[0]["budget"] == "tag:team=legal"
        assert run(app, ["resume", "nope"]).exit_code == 1
        assert run(app, ["bench", "ledger", "--help"]).exit_code == 0
    finally:
        apply_settings()


def test_migrations_match_the_table_models(tmp_path: Path) -> None:
    """A column or table added to tables.py without a migration (or the reverse) fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine
    from sqlmodel import SQLModel

    import batchroute.tables  # noqa: F401 - registers the models on SQLModel.metadata
    from batchroute.db import migrate

    url = f"sqlite:///{tmp_path}/drift.db"
    migrate(url)
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    finally:
        eng.dispose()
    # Only structural drift counts: added/removed tables and columns.
    structural = [d for d in diff if isinstance(d, tuple) and d[0] in
                  ("add_table", "remove_table", "add_column", "remove_column")]
    assert structural == []
