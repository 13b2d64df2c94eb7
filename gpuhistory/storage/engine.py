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
# A URL query parameter for PostgreSQL, taken out of the URL and given to psycopg:
# ``prepare_threshold=none`` turns server-side prepared statements off, which a PgBouncer
# in transaction pooling mode before 1.21 needs (docs/fleet.md#behind-pgbouncer).
PREPARE_THRESHOLD = "prepare_threshold"
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


class DatabaseUrlError(ValueError):
    """A ``--db`` URL this project cannot use as given."""


def _driver_options(url: str) -> tuple[str, dict[str, Any]]:
    """``url`` less this project's own query parameters, and the driver options they ask
    for (``prepare_threshold``: ``none`` or a count of executions, PostgreSQL only)."""
    parsed = sa.make_url(url)
    if PREPARE_THRESHOLD not in parsed.query:
        return url, {}
    value = parsed.query[PREPARE_THRESHOLD]
    text = value if isinstance(value, str) else value[-1]
    if parsed.get_backend_name() != "postgresql":
        raise DatabaseUrlError(f"{PREPARE_THRESHOLD} applies to PostgreSQL URLs only")
    if text.lower() in ("none", "off"):
        threshold: int | None = None
    elif text.isdigit():
        threshold = int(text)
    else:
        raise DatabaseUrlError(f"{PREPARE_THRESHOLD} must be 'none' or a whole number of "
                               f"executions, not {text!r}")
    rest = parsed.difference_update_query([PREPARE_THRESHOLD])
    return rest.render_as_string(hide_password=False), {"prepare_threshold": threshold}


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


def inserted_id(result: sa.CursorResult[Any]) -> int:
    """The primary key of the row a single-row INSERT added."""
    key = result.inserted_primary_key
    if key is None:  # SQLAlchemy raises for anything but an INSERT; typed as optional
        raise sa.exc.InvalidRequestError("the statement inserted no row")
    return int(key[0])


def driver_connection(conn: sa.Connection) -> Any:
    """The driver's own connection (sqlite3's, psycopg's) under ``conn``."""
    driver = conn.connection.driver_connection
    if driver is None:  # the pooled connection is already gone
        raise sa.exc.InvalidRequestError("the connection has no driver connection")
    return driver


def make_engine(db: str | os.PathLike[str] | None,
                busy_timeout_ms: int = BUSY_TIMEOUT_MS, **kwargs: Any) -> sa.Engine:
    """An engine for ``db`` with this project's per-connection settings applied.

    ``busy_timeout_ms``: how long a SQLite statement waits for another writer's lock
    before it fails with "database is locked" (tests make it short). A PostgreSQL URL may
    carry ``prepare_threshold=none`` (see PREPARE_THRESHOLD); DatabaseUrlError otherwise.
    """
    url, driver_options = _driver_options(database_url(db))
    if driver_options:
        kwargs["connect_args"] = {**driver_options, **kwargs.get("connect_args", {})}
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
