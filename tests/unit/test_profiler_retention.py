"""Retention of profile snapshots: the cutoff, the setting, the writer's prune step, ``profile --prune`` input.

No services: the writer runs on a SQLite file of ``tmp_path``; the database path of ``profile --prune``
is tested on Postgres and SQLite in ``tests/integration/test_profiler_snapshots.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from batchroute.errors import ConfigError, InputError, StorageError
from batchroute.profiler import Counts, MemoryProfileStore, ProfilePolicy
from batchroute.profiler import snapshots as snapshots_mod
from batchroute.profiler.snapshots import prune_cutoff, retention_cutoff, snapshot_to_db
from batchroute.settings import get_settings

POLICY = ProfilePolicy(min_samples=20, min_calls=20, unhealthy_error_rate=0.5)
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
NOWHERE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"  # any database access fails


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Settings rebuilt from a monkeypatched environment (and rebuilt again afterwards)."""
    monkeypatch.delenv("BATCHROUTE_PROFILE_SNAPSHOT_RETENTION_DAYS", raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_retention_cutoff() -> None:
    assert retention_cutoff(NOW, 30) == datetime(2026, 10, 29, 10, 0, tzinfo=UTC)
    assert retention_cutoff(NOW, 0.5) == datetime(2026, 11, 27, 22, 0, tzinfo=UTC)
    assert retention_cutoff(NOW, 1e-6) == NOW - timedelta(microseconds=86_400)
    # An offset is honoured and the cutoff is UTC: 11:00+01:00 is NOW.
    plus_one = datetime.fromisoformat("2026-11-28T11:00:00+01:00")
    got = retention_cutoff(plus_one, 1)
    assert got == datetime(2026, 11, 27, 10, 0, tzinfo=UTC) and got is not None and got.utcoffset() == timedelta(0)
    assert retention_cutoff(NOW, 0) is None  # keep forever
    for beyond in (math.inf, 1e12, 740_000.0):  # before year 1: nothing is that old
        assert retention_cutoff(NOW, beyond) is None
    for bad in (-1.0, -1e-9, math.nan):
        with pytest.raises(ValueError, match="retention must be >= 0 days"):
            retention_cutoff(NOW, bad)
    with pytest.raises(ValueError, match="timezone-aware"):
        retention_cutoff(datetime(2026, 11, 28), 30)


def test_retention_setting(settings_env: pytest.MonkeyPatch) -> None:
    assert get_settings().profile_snapshot_retention_days == 30.0
    assert prune_cutoff(now=NOW) == NOW - timedelta(days=30)  # --prune without --older-than-days
    settings_env.setenv("BATCHROUTE_PROFILE_SNAPSHOT_RETENTION_DAYS", "7.5")
    get_settings.cache_clear()
    assert get_settings().profile_snapshot_retention_days == 7.5
    assert prune_cutoff(now=NOW) == datetime(2026, 11, 20, 22, 0, tzinfo=UTC)
    assert prune_cutoff(2, now=NOW) == datetime(2026, 11, 26, 10, 0, tzinfo=UTC)  # the flag wins
    settings_env.setenv("BATCHROUTE_PROFILE_SNAPSHOT_RETENTION_DAYS", "0")
    get_settings.cache_clear()
    assert prune_cutoff(now=NOW) is None  # retention off: --prune deletes nothing
    for bad in ("-1", "nan", "a month"):
        settings_env.setenv("BATCHROUTE_PROFILE_SNAPSHOT_RETENTION_DAYS", bad)
        get_settings.cache_clear()
        with pytest.raises(ConfigError, match="BATCHROUTE_PROFILE_SNAPSHOT_RETENTION_DAYS"):
            get_settings()


def test_prune_cutoff_rejects_bad_days() -> None:
    for bad, shown in ((-1.0, "-1"), (math.nan, "nan"), (0.0, "0"), (-math.inf, "-inf")):
        with pytest.raises(InputError) as info:
            prune_cutoff(bad, now=NOW)
        assert info.value.field == "older_than_days"
        assert info.value.reason == f"--older-than-days must be a number of days > 0, got {shown}"


def rows_of(url: str) -> list[tuple[str, str]]:
    from batchroute.db import get_engine

    with get_engine(url).connect() as conn:
        return [(r[0], str(r[1])[:19]) for r in conn.execute(text(
            "SELECT model, taken_at FROM profile_snapshots ORDER BY taken_at, model"))]


def test_the_writer_prunes_after_inserting_and_a_failed_prune_is_logged_not_raised(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path}/snap.db"
    store = MemoryProfileStore(1e9)
    store.record({"a": Counts(ok=3)})
    old = NOW - timedelta(days=10)
    assert snapshot_to_db(store, ["a"], old, policy=POLICY, url=url, retention_days=0) == 1
    assert snapshot_to_db(store, ["a"], NOW, policy=POLICY, url=url, retention_days=10) == 1
    assert rows_of(url) == [("a", "2026-11-18 10:00:00"), ("a", "2026-11-28 10:00:00")]  # exactly 10 days: kept
    assert snapshot_to_db(store, ["never-seen"], NOW + timedelta(days=1), policy=POLICY, url=url,
                          retention_days=1) == 0
    assert len(rows_of(url)) == 2  # nothing written, so nothing pruned

    calls: list[datetime] = []

    def failing(older_than: datetime, url: str | None = None) -> int:
        calls.append(older_than)
        raise StorageError("cannot delete profile snapshots: lock timeout")

    monkeypatch.setattr(snapshots_mod, "prune_snapshots", failing)
    later = NOW + timedelta(days=5)
    with caplog.at_level(logging.WARNING, logger="batchroute.profiler"):
        assert snapshot_to_db(store, ["a"], later, policy=POLICY, url=url, retention_days=1) == 1
    assert calls == [later - timedelta(days=1)]
    assert [r.getMessage() for r in caplog.records] == [
        "profiler: old snapshots not pruned: cannot delete profile snapshots: lock timeout"]
    assert len(rows_of(url)) == 3  # the new row is stored all the same

    def buggy(older_than: datetime, url: str | None = None) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(snapshots_mod, "prune_snapshots", buggy)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="batchroute.profiler"):
        assert snapshot_to_db(store, ["a"], later, policy=POLICY, url=url, retention_days=1) == 1
    assert [r.getMessage() for r in caplog.records] == ["profiler: pruning old snapshots failed"]
    assert len(rows_of(url)) == 4


@pytest.mark.parametrize(("args", "field", "message"), [
    (["--prune", "--older-than-days", "-1"], "older_than_days",
     "--older-than-days must be a number of days > 0, got -1"),
    (["--prune", "--older-than-days", "nan"], "older_than_days",
     "--older-than-days must be a number of days > 0, got nan"),
    (["--prune", "--older-than-days", "0"], "older_than_days", "--older-than-days must be a number of days > 0, got 0"),
    (["--prune", "--json", "--older-than-days", "-0.5"], "older_than_days",
     "--older-than-days must be a number of days > 0, got -0.5"),
    (["--older-than-days", "3"], "older_than_days", "--older-than-days: only with --prune"),
    (["--history", "--older-than-days", "3"], "older_than_days", "--older-than-days: only with --prune"),
    (["--prune", "--history"], "history", "--history: not with --prune"),
    (["--prune", "--model", "m", "--since", "2026-11-28"], "model", "--model, --since: not with --prune"),
])
def test_profile_prune_rejects_bad_options(args: list[str], field: str, message: str,
                                           settings_env: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from batchroute.cli import app

    settings_env.setenv("BATCHROUTE_DATABASE_URL", NOWHERE)  # opening it would exit 1, not 2
    get_settings.cache_clear()
    res = CliRunner().invoke(app, ["profile", *args])
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert " ".join(res.stderr.split()) == f"error: field {field!r}: {message}"


def test_profile_prune_on_an_unreachable_database_exits_1(settings_env: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from batchroute.cli import app

    settings_env.setenv("BATCHROUTE_DATABASE_URL", NOWHERE)
    get_settings.cache_clear()
    res = CliRunner().invoke(app, ["profile", "--prune", "--older-than-days", "3", "--json"])
    assert res.exit_code == 1, res.output
    assert res.stdout == "" and "error: database error" in res.stderr
