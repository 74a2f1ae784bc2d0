"""Database engine, sessions and migrations.

One engine per process and URL. Postgres (``postgresql://``) is the real deployment; SQLite is the
embedded default and is migrated automatically on first use. Postgres is migrated explicitly with
``batchroute migrate`` (Alembic, ``migrations/``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from batchroute.errors import StorageError
from batchroute.settings import get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_migrate_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    # WAL lets the API/status readers run while a worker writes; busy_timeout avoids spurious locks.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


@functools.lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(eng, "connect", _sqlite_pragmas)
        return eng
    return create_engine(url, pool_size=10, max_overflow=40, pool_pre_ping=True)


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: the configured database), migrated if SQLite."""
    url = url or get_settings().effective_database_url
    eng = _engine(url)
    if url.startswith("sqlite"):
        _ensure_migrated(url)
    return eng


def _ensure_migrated(url: str) -> None:
    if url in _migrated:
        return
    with _migrate_lock:
        if url not in _migrated:
            migrate(url)
            _migrated.add(url)


_migrated: set[str] = set()


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    """An Alembic Config pointing at the project's ``migrations/`` and ``url``."""
    from alembic.config import Config

    if not MIGRATIONS_DIR.is_dir():
        raise StorageError(f"migrations directory not found at {MIGRATIONS_DIR}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str | None = None, revision: str = "head") -> None:
    """Apply the Alembic migrations to ``url`` (default: the configured database)."""
    from alembic import command

    url = url or get_settings().effective_database_url
    try:
        command.upgrade(alembic_config(url), revision)
    except OperationalError as exc:
        raise StorageError(f"cannot migrate {safe_url(url)}: {exc.orig}") from exc


def schema_ready(url: str | None = None) -> bool:
    """True when the tables exist (used to tell the user to run ``batchroute migrate``)."""
    return inspect(_engine(url or get_settings().effective_database_url)).has_table("requests")


def safe_url(url: str) -> str:
    """``url`` with any password masked, for messages and logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error; DB errors become StorageError."""
    session = Session(get_engine(url), expire_on_commit=False)
    try:
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        raise StorageError(f"database error: {exc.orig}") from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
