"""Profile snapshots in the database: exact rows, ``profile --history``, the provider-side hook, the schema.

Runs on Postgres (the session database of ``pg_url``; its ``profile_snapshots`` emptied per test)
and on a fresh SQLite file. Skipped without Postgres, unless CI=true, where that is a failure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from batchroute.profiler import EMPTY_HIST, Counts, MemoryProfileStore, ProfilePolicy, bucket_index
from tests.conftest import apply_settings

pytestmark = pytest.mark.integration

POLICY = ProfilePolicy(min_samples=20, min_calls=20, unhealthy_error_rate=0.5)
T1 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
T2 = T1 + timedelta(minutes=1)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def hist(*samples: tuple[float, float]) -> tuple[float, ...]:
    out = list(EMPTY_HIST)
    for ms, w in samples:
        out[bucket_index(ms)] += w
    return tuple(out)


@pytest.fixture(params=["postgres", "sqlite"])
def snapshot_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database without snapshots, with settings pointing at it; yields its SQLAlchemy URL."""
    if request.param == "postgres":
        import psycopg

        pg = request.getfixturevalue("pg_url")
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute("DELETE FROM profile_snapshots")
        url = pg.replace("postgresql://", "postgresql+psycopg://")
    else:
        url = f"sqlite:///{tmp_path}/snapshots.db"
    apply_settings(BATCHROUTE_DATABASE_URL=url, BATCHROUTE_BROKER_URL="memory://")
    yield url
    apply_settings()


def stored(url: str) -> list[dict[str, Any]]:
    from batchroute.db import get_engine

    with get_engine(url).connect() as conn:
        rows = conn.execute(text("SELECT model, taken_at, source, ok, errors, timeouts, rate_limited, latency_samples, "
                                 "error_rate, rate_429, latency_ratio, p50_ms, p95_ms, p99_ms, unhealthy, reason "
                                 "FROM profile_snapshots ORDER BY taken_at, model")).mappings().all()
    return [dict(r) for r in rows]


def history(*args: str) -> dict[str, Any]:
    from batchroute.cli import app

    res = CliRunner().invoke(app, ["profile", "--history", "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def test_snapshot_to_db_writes_exact_rows_and_history_returns_them(snapshot_db: str) -> None:
    from batchroute.profiler.snapshots import snapshot_to_db

    clock = FakeClock()
    store = MemoryProfileStore(half_life_s=60.0, clock=clock)
    store.record({"fast": Counts(ok=30, errors=10, rate_limited=10, latency_n=30, observed_ms=60_000,
                                 expected_ms=30_000, latency_hist=hist((100.0, 30.0))),
                  "sick": Counts(ok=10, errors=25, timeouts=5)})
    models = ["fast", "sick", "idle"]
    assert snapshot_to_db(store, models, T1, policy=POLICY) == 2
    clock.t += 60.0  # one half-life: every sum halves, then 20 slow successes arrive
    store.record({"fast": Counts(ok=20, latency_n=20, observed_ms=20_000, expected_ms=20_000,
                                 latency_hist=hist((1000.0, 20.0)))})
    assert snapshot_to_db(store, models, T2, policy=POLICY) == 2

    src = store.source
    assert src.startswith("memory:")
    rows = stored(snapshot_db)
    for r in rows:
        r["taken_at"] = r["taken_at"] if isinstance(r["taken_at"], datetime) else datetime.fromisoformat(r["taken_at"])
        r["taken_at"] = r["taken_at"].replace(tzinfo=UTC) if r["taken_at"].tzinfo is None else r["taken_at"]
        r["unhealthy"] = bool(r["unhealthy"])
    first_fast = {"model": "fast", "taken_at": T1, "source": src, "ok": 30.0, "errors": 10.0, "timeouts": 0.0,
                  "rate_limited": 10.0, "latency_samples": 30.0, "error_rate": 0.25, "rate_429": 0.2,
                  "latency_ratio": 2.0, "p50_ms": 93.008, "p95_ms": 104.663, "p99_ms": 105.767, "unhealthy": False,
                  "reason": None}
    first_sick = {"model": "sick", "taken_at": T1, "source": src, "ok": 10.0, "errors": 25.0, "timeouts": 5.0,
                  "rate_limited": 0.0, "latency_samples": 0.0, "error_rate": 0.75, "rate_429": 0.0,
                  "latency_ratio": None, "p50_ms": None, "p95_ms": None, "p99_ms": None, "unhealthy": True,
                  "reason": "live error rate 0.75 over 40 calls"}
    # 15 of 35 weighted samples at 100 ms, 20 at 1000 ms: the median is 1/8 into the 1000 ms bucket [865, 1125).
    second_fast = {"model": "fast", "taken_at": T2, "source": src, "ok": 35.0, "errors": 5.0, "timeouts": 0.0,
                   "rate_limited": 5.0, "latency_samples": 35.0, "error_rate": 0.125, "rate_429": 0.111111,
                   "latency_ratio": 1.428571, "p50_ms": 893.881, "p95_ms": 1099.032, "p99_ms": 1119.403,
                   "unhealthy": False, "reason": None}
    # Halved to exactly min_calls (20): still judged, still avoided.
    second_sick = {"model": "sick", "taken_at": T2, "source": src, "ok": 5.0, "errors": 12.5, "timeouts": 2.5,
                   "rate_limited": 0.0, "latency_samples": 0.0, "error_rate": 0.75, "rate_429": 0.0,
                   "latency_ratio": None, "p50_ms": None, "p95_ms": None, "p99_ms": None, "unhealthy": True,
                   "reason": "live error rate 0.75 over 20 calls"}
    assert rows == [first_fast, first_sick, second_fast, second_sick]

    def as_json(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "taken_at": row["taken_at"].isoformat()}

    everything = history("--since", "2026-11-28T09:00:00Z")
    assert everything["since"] == "2026-11-28T09:00:00+00:00" and everything["model"] is None
    got = [{k: v for k, v in r.items() if k != "id"} for r in everything["snapshots"]]
    assert got == [as_json(r) for r in (first_fast, first_sick, second_fast, second_sick)]
    ids = [r["id"] for r in everything["snapshots"]]
    assert len(set(ids)) == 4

    only_sick = history("--since", "2026-11-28", "--model", "sick")["snapshots"]
    assert [(r["taken_at"], r["reason"]) for r in only_sick] == [
        ("2026-11-28T10:00:00+00:00", "live error rate 0.75 over 40 calls"),
        ("2026-11-28T10:01:00+00:00", "live error rate 0.75 over 20 calls")]
    # An offset is honoured: 11:00:30+01:00 is 10:00:30 UTC, after the first snapshot.
    later = history("--since", "2026-11-28T11:00:30+01:00")["snapshots"]
    assert [(r["model"], r["taken_at"]) for r in later] == [("fast", "2026-11-28T10:01:00+00:00"),
                                                             ("sick", "2026-11-28T10:01:00+00:00")]
    newest = history("--since", "2026-11-28", "--limit", "1", "--model", "fast")["snapshots"]
    assert [(r["model"], r["p50_ms"]) for r in newest] == [("fast", 893.881)]
    assert history("--hours", "1")["snapshots"] == []  # T1 and T2 are long past

    from batchroute.cli import app

    table = CliRunner().invoke(app, ["profile", "--history", "--since", "2026-11-28"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    lines = [" ".join(line.split()) for line in table.output.splitlines()]
    assert "11-28 10:01:00 fast 40.0 894 1099 0.12 0.11 1.43 ok" in lines
    assert "11-28 10:00:00 sick 40.0 - - 0.75 0.00 - avoided" in lines


def test_provider_side_profiler_snapshots_registry_models_periodically(snapshot_db: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``get_profiler`` (what the provider stage records into) writes snapshots every PROFILE_SNAPSHOT_S."""
    from batchroute.profiler import get_profiler
    from batchroute.settings import get_settings

    monkeypatch.setenv("BATCHROUTE_PROFILE_SNAPSHOT_S", "0.3")
    monkeypatch.setenv("BATCHROUTE_PROFILE_HALF_LIFE_S", "1e9")
    get_settings.cache_clear()
    try:
        prof = get_profiler()
        assert prof.snapshot_s == 0.3
        prof.observe("sim-gpt-4", "ok", 100.0, 50.0)
        assert stored(snapshot_db) == []  # not due before 0.3 s
        time.sleep(0.35)
        prof.observe("sim-gpt-4", "ok", 100.0, 50.0)
        prof.observe("sim-llama-3-8b", "rate_limited")
        prof.observe("not-in-registry", "error")
        rows = stored(snapshot_db)
        assert [(r["model"], round(r["ok"], 6), round(r["rate_limited"], 6)) for r in rows] == [
            ("sim-gpt-4", 2.0, 0.0)]  # the snapshot ran on the second attempt, before the others
        time.sleep(0.35)
        prof.observe("sim-gpt-4", "timeout")
        rows = stored(snapshot_db)
        assert [(r["model"], round(r["ok"], 6), round(r["timeouts"], 6), round(r["rate_limited"], 6),
                 r["latency_ratio"]) for r in rows] == [("sim-gpt-4", 2.0, 0.0, 0.0, 2.0),
                                                        ("sim-gpt-4", 2.0, 1.0, 0.0, 2.0),
                                                        ("sim-llama-3-8b", 0.0, 0.0, 1.0, None)]
        assert prof.store is not None and {r["source"] for r in rows} == {prof.store.source}
    finally:
        get_settings.cache_clear()


def test_migration_0004_matches_the_model_and_downgrades(snapshot_db: str) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine, inspect
    from sqlmodel import SQLModel

    import batchroute.tables  # noqa: F401 - registers the models
    from batchroute.db import alembic_config, get_engine

    get_engine(snapshot_db)  # SQLite is migrated on first use
    eng = create_engine(snapshot_db)
    try:
        with eng.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
        ours = [d for d in diff if "profile_snapshots" in repr(d)]
        assert ours == []
        indexes = {ix["name"]: ix["column_names"] for ix in inspect(eng).get_indexes("profile_snapshots")}
        assert indexes == {"ix_profile_snapshots_model_taken": ["model", "taken_at"],
                           "ix_profile_snapshots_taken": ["taken_at"]}
        if snapshot_db.startswith("sqlite"):  # the shared Postgres database stays at head
            command.downgrade(alembic_config(snapshot_db), "0003")
            assert not inspect(eng).has_table("profile_snapshots")
            command.upgrade(alembic_config(snapshot_db), "head")
            assert inspect(eng).has_table("profile_snapshots")
    finally:
        eng.dispose()
