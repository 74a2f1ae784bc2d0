"""Profile snapshots in the database: exact rows, ``profile --history``, the provider-side hook, the schema,
retention (the writer's prune step, ``profile --prune``, the delete's use of the ``taken_at`` index).

Runs on Postgres (the session database of ``pg_url``, every table emptied per test) and on a fresh
SQLite file. Skipped without Postgres, unless CI=true, where that is a failure.
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

from batchroute.profiler import Counts, MemoryProfileStore, ProfilePolicy
from tests.conftest import apply_settings, empty_db, sqlalchemy_pg_url, truncate_pg
from tests.profiler_helpers import FakeClock, hist

pytestmark = pytest.mark.integration

POLICY = ProfilePolicy(min_samples=20, min_calls=20, unhealthy_error_rate=0.5)
T1 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
T2 = T1 + timedelta(minutes=1)


@pytest.fixture(params=["postgres", "sqlite"])
def snapshot_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database without snapshots, with settings pointing at it; yields its SQLAlchemy URL."""
    yield empty_db(request, tmp_path, request.param)
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


# -- retention ----------------------------------------------------------------------------------------


def insert_at(url: str, *rows: tuple[str, datetime, str]) -> None:
    """Snapshot rows of (model, taken_at, source) with otherwise default figures."""
    from batchroute.db import session_scope
    from batchroute.tables import ProfileSnapshot

    with session_scope(url) as session:
        session.add_all([ProfileSnapshot(model=m, taken_at=t, source=src, ok=1.0) for m, t, src in rows])


def kept(url: str) -> list[tuple[str, datetime]]:
    """(model, taken_at as aware UTC) of every stored snapshot, oldest first."""
    out = []
    for r in stored(url):
        t = r["taken_at"] if isinstance(r["taken_at"], datetime) else datetime.fromisoformat(r["taken_at"])
        out.append((r["model"], t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)))
    return out


def test_a_snapshot_write_deletes_exactly_the_rows_older_than_the_retention(snapshot_db: str) -> None:
    from batchroute.profiler.snapshots import snapshot_to_db

    now = T1
    cutoff = now - timedelta(days=7)  # 2026-11-21T10:00Z
    insert_at(snapshot_db,
              ("ancient", now - timedelta(days=400), "memory:other-host:1"),  # any source is pruned
              ("just-old", cutoff - timedelta(microseconds=1), "redis:batchroute:profile"),
              ("at-cutoff", cutoff, "redis:batchroute:profile"),  # exactly 7 days old: kept
              ("recent", cutoff + timedelta(seconds=1), "memory:other-host:1"),
              ("ahead", now + timedelta(hours=1), "memory:other-host:1"))  # another host's clock runs ahead
    store = MemoryProfileStore(half_life_s=1e9)
    store.record({"fast": Counts(ok=3)})
    assert snapshot_to_db(store, ["fast", "idle"], now, policy=POLICY, url=snapshot_db, retention_days=7) == 1
    assert kept(snapshot_db) == [("at-cutoff", cutoff), ("recent", cutoff + timedelta(seconds=1)), ("fast", now),
                                 ("ahead", now + timedelta(hours=1))]

    # Retention 0 keeps everything; a write without data prunes nothing.
    insert_at(snapshot_db, ("ancient", now - timedelta(days=400), "x"))
    assert snapshot_to_db(store, ["fast"], now + timedelta(minutes=1), policy=POLICY, url=snapshot_db,
                          retention_days=0) == 1
    assert snapshot_to_db(store, ["idle"], now + timedelta(days=100), policy=POLICY, url=snapshot_db,
                          retention_days=1) == 0
    assert len(kept(snapshot_db)) == 6
    # Half a day, 100 days on: only the newest write (and nothing else) is within the retention.
    later = now + timedelta(days=100)
    assert snapshot_to_db(store, ["fast"], later, policy=POLICY, url=snapshot_db, retention_days=0.5) == 1
    assert kept(snapshot_db) == [("fast", later)]


def test_the_provider_side_writer_prunes_with_the_retention_setting(snapshot_db: str) -> None:
    """The hook ``get_profiler`` installs (``snapshot_registry_models``) prunes per the setting, at write time."""
    from batchroute.profiler import Profiler, snapshot_registry_models

    apply_settings(BATCHROUTE_DATABASE_URL=snapshot_db, BATCHROUTE_BROKER_URL="memory://",
                   BATCHROUTE_PROFILE_SNAPSHOT_RETENTION_DAYS="2")
    wall = datetime.now(UTC)
    two_days = timedelta(days=2)
    insert_at(snapshot_db, ("sim-gpt-4", wall - two_days - timedelta(hours=1), "s"),
              ("sim-gpt-4", wall - two_days + timedelta(hours=1), "s"),
              ("sim-llama-3-8b", wall - timedelta(days=10), "s"))
    clock = FakeClock()
    prof = Profiler(MemoryProfileStore(1e9, clock=clock), POLICY, clock=clock, snapshot_s=60.0,
                    snapshot_sink=snapshot_registry_models)
    prof.observe("sim-gpt-4", "ok", 100.0, 50.0)
    assert len(kept(snapshot_db)) == 3  # not due yet: nothing written, nothing pruned
    clock.t += 60.0
    prof.observe("sim-gpt-4", "ok", 100.0, 50.0)
    rows = kept(snapshot_db)
    assert [m for m, _ in rows] == ["sim-gpt-4", "sim-gpt-4"]
    assert rows[0][1] == wall - two_days + timedelta(hours=1)
    assert wall <= rows[1][1] <= datetime.now(UTC)  # the new snapshot


def prune_cli(*args: str) -> Any:
    from batchroute.cli import app

    return CliRunner().invoke(app, ["profile", "--prune", *args], env={"COLUMNS": "200"})


def test_profile_prune_deletes_what_is_older_and_prints_how_many(snapshot_db: str) -> None:
    wall = datetime.now(UTC)
    insert_at(snapshot_db, ("a", wall - timedelta(days=10), "s"), ("b", wall - timedelta(days=10, hours=1), "s"),
              ("c", wall - timedelta(days=3), "s"), ("d", wall - timedelta(hours=1), "s"))
    res = prune_cli("--older-than-days", "5", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"deleted": 2}
    assert [m for m, _ in kept(snapshot_db)] == ["c", "d"]
    res = prune_cli("--older-than-days", "5", "--json")  # again: nothing left that old
    assert (res.exit_code, json.loads(res.stdout)) == (0, {"deleted": 0})

    # Without --older-than-days: the retention setting.
    apply_settings(BATCHROUTE_DATABASE_URL=snapshot_db, BATCHROUTE_BROKER_URL="memory://",
                   BATCHROUTE_PROFILE_SNAPSHOT_RETENTION_DAYS="2.5")
    res = prune_cli()
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("deleted 1 profile snapshot taken before ")
    assert [m for m, _ in kept(snapshot_db)] == ["d"]

    apply_settings(BATCHROUTE_DATABASE_URL=snapshot_db, BATCHROUTE_BROKER_URL="memory://",
                   BATCHROUTE_PROFILE_SNAPSHOT_RETENTION_DAYS="0")
    res = prune_cli("--json")
    assert (res.exit_code, json.loads(res.stdout)) == (0, {"deleted": 0})
    assert "retention is off" in res.stderr
    assert [m for m, _ in kept(snapshot_db)] == ["d"]
    res = prune_cli("--older-than-days", "0.01")  # explicit days prune even with the retention off
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("deleted 1 profile snapshot taken before ") and kept(snapshot_db) == []

    res = prune_cli("--older-than-days", "-3", "--json")
    assert res.exit_code == 2 and res.stdout == ""
    assert "--older-than-days must be a number of days > 0, got -3" in " ".join(res.stderr.split())


def test_the_prune_delete_uses_the_taken_at_index_on_postgres(pg_url: str) -> None:
    """20,000 snapshots a minute apart, 5 of them past the cutoff: the DELETE scans the taken_at index."""
    import psycopg
    from sqlalchemy import event

    from batchroute.db import get_engine
    from batchroute.profiler.snapshots import prune_snapshots

    truncate_pg(pg_url)
    url = sqlalchemy_pg_url(pg_url)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO profile_snapshots (taken_at, model, source, ok, errors, timeouts, rate_limited, "
                     "latency_samples, unhealthy) SELECT %s + i * interval '1 minute', 'm' || mod(i, 5), 's', 1, 0, "
                     "0, 0, 0, false FROM generate_series(0, 19999) AS i", (start,))
        conn.execute("ANALYZE profile_snapshots")
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            statements.append((statement, parameters))

    eng = get_engine(url)

    def prune(minutes: int, **kw: Any) -> tuple[int, int]:
        """Rows deleted before ``start + minutes`` and the DELETE statements it took."""
        statements.clear()
        event.listen(eng, "before_cursor_execute", capture)
        try:
            return prune_snapshots(start + timedelta(minutes=minutes), url, **kw), len(statements)
        finally:
            event.remove(eng, "before_cursor_execute", capture)

    def remaining() -> Any:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            return conn.execute("SELECT count(*), min(taken_at) FROM profile_snapshots").fetchone()

    assert prune(5) == (5, 1)
    statement, parameters = statements[0]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + statement, parameters).fetchall())
    assert remaining() == (19995, start + timedelta(minutes=5))
    assert "ix_profile_snapshots_taken" in plan, plan
    assert "Seq Scan" not in plan, plan

    # A backlog goes in batches, oldest first, each its own statement: 995 rows by 400 = 3 DELETEs.
    assert prune(1000, batch_rows=400) == (995, 3)
    assert remaining() == (19000, start + timedelta(minutes=1000))
    # An exact multiple of the batch needs one more (empty) statement to know it is done.
    assert prune(1800, batch_rows=400) == (800, 3)
    with pytest.raises(ValueError, match="batch_rows must be >= 1"):
        prune_snapshots(start, url, batch_rows=0)
