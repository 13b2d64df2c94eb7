"""Alembic environment: runs on the connection gpuhistory hands over, or on GPUHISTORY_DB.

Migrations run inside one transaction holding the database's write lock (SQLite
``BEGIN IMMEDIATE``; a PostgreSQL advisory lock), so several processes starting on one
database at once migrate it exactly once.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from gpuhistory.storage.partitions import not_a_partition
from gpuhistory.storage.schema import metadata

MIGRATION_LOCK_KEY = 0x67707568  # "gpuh"


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection, target_metadata=metadata, render_as_batch=True,
        transaction_per_migration=False,
        include_object=not_a_partition,  # autogenerate: samples' day partitions are not ours
    )
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from gpuhistory.storage.engine import make_engine

    url = context.config.get_main_option("sqlalchemy.url") or os.environ["GPUHISTORY_DB"]
    engine = make_engine(url)
    try:
        with engine.connect() as conn, conn.execution_options(sqlite_begin="IMMEDIATE").begin():
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run them online")
run_migrations_online()
