"""Shared fixtures: service URLs, an isolated embedded environment, worker processes.

Integration tests use the real Redis and Postgres of this machine. Locally they skip when a service
is missing; under CI=true a missing service is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchroute.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# One data dir for the whole session (and the worker processes it starts): the exemplar index
# is built once and reused from its on-disk cache.
DATA_DIR = ROOT / ".cache" / "test-data"
os.environ.setdefault("BATCHROUTE_DATA_DIR", str(DATA_DIR))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PG_ADMIN_URL = os.environ.get("BATCHROUTE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
# Per pytest process, so concurrent sessions (developers, helpers) never drop each other's database.
PG_TEST_DB = f"batchroute_test_{os.getpid()}"
REDIS_URL = os.environ.get("BATCHROUTE_TEST_REDIS", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() == "true"

# Every BATCHROUTE_* setting but the data dir (one per session, above): apply_settings unsets
# them, so a variable in the developer's shell never leaks into a test.
SETTINGS_ENV = tuple(f"BATCHROUTE_{name.upper()}" for name in Settings.model_fields if name != "data_dir")


def service_missing(what: str, exc: BaseException) -> None:
    """Skip locally, fail under CI, when a service the test needs does not answer."""
    msg = f"{what} unavailable: {exc}"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def apply_settings(**env: str) -> None:
    """Set BATCHROUTE_* variables (unset the rest of SETTINGS_ENV) and rebuild cached singletons."""
    from batchroute.dispatch import reset_dispatcher
    from batchroute.registry import _cached
    from batchroute.runtime import reset_runtime
    from batchroute.settings import get_settings

    reset_runtime()
    reset_dispatcher()
    for key in SETTINGS_ENV:
        os.environ.pop(key, None)
    os.environ.update(env)
    get_settings.cache_clear()
    _cached.cache_clear()


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Path]:
    """The embedded default in a fresh SQLite file, in-process queues, zero-latency simulator."""
    apply_settings(BATCHROUTE_DATABASE_URL=f"sqlite:///{tmp_path}/t.db", BATCHROUTE_BROKER_URL="memory://",
                   BATCHROUTE_SIM_TIME_SCALE="0", BATCHROUTE_BACKOFF_BASE_S="0.01",
                   BATCHROUTE_BACKOFF_CAP_S="0.05")
    yield tmp_path
    apply_settings()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A freshly created Postgres database for this session, migrated; dropped at the end."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_TEST_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {PG_TEST_DB}")
    except Exception as exc:
        service_missing("PostgreSQL", exc)
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + PG_TEST_DB
    from batchroute.db import migrate

    migrate(sqlalchemy_pg_url(url))
    yield url
    from batchroute.db import _engine

    _engine.cache_clear()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_TEST_DB} WITH (FORCE)")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis database, flushed at session start."""
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        client.flushdb()
    except Exception as exc:
        service_missing("Redis", exc)
    return REDIS_URL


def wait_for_job(job_id: str, timeout_s: float = 120, poll_s: float = 0.25) -> dict[str, Any]:
    """Poll ``job_status`` until the job completes or fails; AssertionError with its status if not."""
    import time

    from batchroute.jobs import job_status

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = job_status(job_id)
        if st["state"] in ("completed", "failed"):
            return st
        time.sleep(poll_s)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s}s: {job_status(job_id)}")


def all_tables() -> list[str]:
    """Every table of the SQLModel metadata (``batchroute.tables``), parents first; not ``alembic_version``."""
    from sqlmodel import SQLModel

    import batchroute.tables  # noqa: F401 - registers the models

    return [t.name for t in SQLModel.metadata.sorted_tables]


def sqlalchemy_pg_url(url: str) -> str:
    """The psycopg (v3) SQLAlchemy URL of a ``postgresql://`` URL."""
    return url.replace("postgresql://", "postgresql+psycopg://")


def empty_db(request: pytest.FixtureRequest, tmp_path: Path, kind: str, **env: str) -> str:
    """An empty, migrated database of ``kind`` ("postgres": the session's, truncated; "sqlite": a new
    file under ``tmp_path``) with settings pointing at it (plus ``env``); returns its SQLAlchemy URL.

    For parametrised fixtures over both backends; call ``apply_settings()`` after the test.
    """
    if kind == "postgres":
        pg = request.getfixturevalue("pg_url")
        truncate_pg(pg)
        url = sqlalchemy_pg_url(pg)
    else:
        url = f"sqlite:///{tmp_path}/test.db"
    apply_settings(BATCHROUTE_DATABASE_URL=url, BATCHROUTE_BROKER_URL="memory://", **env)
    return url


def truncate_pg(url: str) -> None:
    """Empty every batchroute table (between integration tests): all of the metadata, none left out by hand."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(sql.SQL(", ").join(map(sql.Identifier, all_tables()))))
