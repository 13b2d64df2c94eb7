"""The schema comes from Alembic alone: upgrade, downgrade, and agreement with the code."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gpuhistory.storage.engine import (
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    upgrade,
)
from gpuhistory.storage.schema import metadata


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_upgrade_and_downgrade_on_a_file(tmp_path: Path) -> None:
    """head creates every table; base removes them; head again restores them."""
    db = tmp_path / "m.db"
    engine = make_engine(db)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert {"gpus", "samples", "transitions", "events", "leases"} <= tables(db)
    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert tables(db) == {"alembic_version"}
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_migrated_schema_matches_the_table_definitions(engine: sa.Engine) -> None:
    """Alembic's autogenerate finds no difference between the migrations and schema.py."""
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_samples_is_a_without_rowid_table_keyed_by_gpu_and_time(db_path: Path, engine) -> None:
    """The samples table is clustered on (gpu_id, ts_ms): a GPU's history is one range scan."""
    with sqlite3.connect(db_path) as conn:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name='samples'").fetchone()[0]
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM samples WHERE gpu_id=1 AND ts_ms BETWEEN 0 AND 9"
        ).fetchall()
    assert "WITHOUT ROWID" in sql and "PRIMARY KEY (gpu_id, ts_ms)" in sql
    assert "USING PRIMARY KEY (gpu_id=? AND ts_ms>? AND ts_ms<?)" in plan[0][-1]


def test_every_connection_gets_wal_busy_timeout_and_foreign_keys(engine: sa.Engine) -> None:
    """WAL mode, a busy timeout and foreign keys are set on each new connection."""
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_concurrent_upgrades_migrate_once(tmp_path: Path) -> None:
    """Several threads upgrading one fresh file at once: no error, one schema."""
    db = tmp_path / "race.db"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            eng = make_engine(db)
            upgrade(eng)
            eng.dispose()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert current_revision(make_engine(db)) == head_revision()


def test_db_upgrade_and_current_commands(tmp_path: Path) -> None:
    """`gpuhistory db upgrade` then `db current` report the head revision (exit 0)."""
    db = str(tmp_path / "cli.db")
    cli = [sys.executable, "-m", "gpuhistory.cli.main"]
    before = subprocess.run([*cli, "db", "current", "--db", db], capture_output=True, text=True)
    assert before.returncode == 1 and "(empty database)" in before.stdout
    up = subprocess.run([*cli, "db", "upgrade", "--db", db], capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    after = subprocess.run([*cli, "db", "current", "--db", db], capture_output=True, text=True)
    assert after.returncode == 0 and f"current: {head_revision()}" in after.stdout
