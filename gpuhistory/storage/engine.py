"""The one place that owns engines: URLs, per-connection settings, migrations.

Every SQLite connection runs in WAL mode with a busy timeout and foreign keys on. The
pysqlite driver's own transaction handling is switched off so that SQLAlchemy's ``begin``
emits a real ``BEGIN`` (or ``BEGIN IMMEDIATE`` when a connection asks for it with the
``sqlite_begin`` execution option: lease grants and migrations take the write lock up
front instead of failing to upgrade a read lock later).

A connection SQLite opened read-only (the file was not writable when it was opened) stays
read-only even after the file is writable again; the first write it refuses therefore
invalidates it and every pooled connection, so that the next write opens afresh.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from gpuhistory.assets import migrations_dir

BUSY_TIMEOUT_MS = 5000
MIGRATION_LOCK_KEY = 0x67707568  # "gpuh": the advisory lock of migrations/env.py


MIGRATE_ATTEMPTS = 5  # a racing start-up on a new SQLite file (see upgrade)


def default_db_path() -> Path:
    """Where the log lives when no ``--db`` is given: the user's data directory."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "gpuhistory" / "gpuhistory.db"


def database_url(db: str | os.PathLike[str] | None) -> str:
    """A SQLAlchemy URL from ``--db``: a URL as given, a path as a SQLite file."""
    if db is None:
        db = default_db_path()
    text = os.fspath(db)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _sqlite_on_connect(dbapi_connection: Any, _record: Any,
                       busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
    dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def _sqlite_on_error(context: sa.engine.ExceptionContext) -> None:
    """Treat "attempt to write a readonly database" as a lost connection: SQLAlchemy then
    discards this connection and recycles the pool's older ones."""
    if "readonly database" in str(context.original_exception):
        context.is_disconnect = True


def unavailable_reason(exc: BaseException) -> str:
    """Why the database refused: ``locked``, ``full``, ``read_only``, ``io_error``,
    ``file_lost`` (its file was deleted or replaced: storage/file_guard.py) or
    ``unavailable`` (anything else: the server is down, the pool is exhausted, ...)."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    if "deleted or replaced under the running service" in text:
        return "file_lost"
    if "locked" in text or "busy" in text:
        return "locked"
    if "disk is full" in text or "database or disk is full" in text:
        return "full"
    if "readonly" in text or "read-only" in text:
        return "read_only"
    if "i/o error" in text:
        return "io_error"
    return "unavailable"


def make_engine(db: str | os.PathLike[str] | None,
                busy_timeout_ms: int = BUSY_TIMEOUT_MS, **kwargs: Any) -> sa.Engine:
    """An engine for ``db`` with this project's per-connection settings applied.

    ``busy_timeout_ms``: how long a SQLite statement waits for another writer's lock
    before it fails with "database is locked" (tests make it short).
    """
    url = database_url(db)
    if url.startswith("sqlite") and ":memory:" not in url:
        # Enough pooled connections for every HTTP worker thread plus the scheduler's jobs,
        # so no request waits for a connection (SQLite connections are cheap to keep).
        kwargs.setdefault("pool_size", 32)
        kwargs.setdefault("max_overflow", 32)
        kwargs.setdefault("pool_timeout", 10)
    engine = sa.create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", functools.partial(
            _sqlite_on_connect, busy_timeout_ms=busy_timeout_ms))
        sa.event.listen(engine, "begin", _sqlite_on_begin)
        sa.event.listen(engine, "handle_error", _sqlite_on_error)
    return engine


def _alembic_config(connection: sa.Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _lock_for_migrating(conn: sa.Connection) -> None:
    """PostgreSQL: the migrations' advisory lock (migrations/env.py takes it too), taken
    before Alembic starts, so threads of one process also migrate one at a time (SQLite's
    BEGIN IMMEDIATE already is that lock)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` (once, even with several processes racing).

    On a brand-new SQLite file the first connections race to switch it to WAL, and SQLite
    can answer "database is locked" at once, without waiting out the busy timeout; the
    whole migration is one transaction, so it is simply tried again (a few times).
    """
    for attempt in range(MIGRATE_ATTEMPTS):
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
                with conn.begin():
                    _lock_for_migrating(conn)
                    command.upgrade(_alembic_config(conn), revision)
            return
        except sa.exc.OperationalError as exc:
            if (engine.dialect.name != "sqlite" or "locked" not in str(exc)
                    or attempt == MIGRATE_ATTEMPTS - 1):
                raise
            engine.dispose()  # reconnect: each connection sets WAL again
            time.sleep(0.05 * 2 ** attempt)


def downgrade(engine: sa.Engine, revision: str) -> None:
    with engine.connect() as conn:
        conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            _lock_for_migrating(conn)
            command.downgrade(_alembic_config(conn), revision)


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()
