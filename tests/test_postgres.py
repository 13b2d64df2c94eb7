"""What PostgreSQL adds: the migrations on a fresh database (and from several processes at
once), the row lock that serialises lease grants per GPU without holding up sampling, and
the promise that a configured but unreachable server fails the suite instead of skipping."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gpuhistory.clock import FakeClock
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.domain.reading import Reading
from gpuhistory.leases import LeaseManager
from gpuhistory.storage import partitions
from gpuhistory.storage.engine import (
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    upgrade,
)
from gpuhistory.storage.log import LogStore, TickRecord, sample_row
from gpuhistory.storage.schema import metadata, postgres_metadata
from tests import conftest
from tests.conftest import POSTGRES_ENV, REPO, _postgres_url
from tests.test_leases import HOST, add_gpu
from tests.test_serve import free_port


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_migrations_upgrade_downgrade_and_match_the_tables(fresh_postgres_url: str) -> None:
    """On a fresh PostgreSQL database: head creates every table and agrees with schema.py
    (autogenerate finds no difference; samples' daily partitions are not in it); base
    removes them all; head restores them."""
    engine = make_engine(fresh_postgres_url)
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        assert {t.name for t in metadata.sorted_tables} <= tables(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"include_object": partitions.not_a_partition})
            assert compare_metadata(context, [metadata, postgres_metadata]) == []
        downgrade(engine, "base")
        assert current_revision(engine) is None
        assert tables(engine) == {"alembic_version"}
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_concurrent_upgrades_migrate_once(fresh_postgres_url: str) -> None:
    """Several engines upgrading one fresh database at once (every sampler of a fleet
    starting together): the advisory lock lets one migrate, the others find it done."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        engine = make_engine(fresh_postgres_url)
        try:
            barrier.wait(timeout=30)
            upgrade(engine)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    engine = make_engine(fresh_postgres_url)
    try:
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()


def _waiting_on_a_lock(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")).scalars())


def test_a_grant_waits_for_the_gpu_row_lock_and_sampling_does_not(pg_engine: sa.Engine
                                                                  ) -> None:
    """While another transaction holds the GPU's row lock (as a grant in progress does), a
    grant of that GPU waits for it — that is what serialises grants across processes —
    while the sampler's inserts for the same GPU go through (their foreign-key check takes
    only a KEY SHARE lock)."""
    clock = FakeClock()
    store = LogStore(pg_engine, HOST)
    gpu = add_gpu(store, clock)
    leases = LeaseManager(pg_engine, HOST, clock, lambda: DEFAULT_CONFIG)
    outcome: list[object] = []
    holder = pg_engine.connect()
    try:
        holder.begin()
        holder.execute(sa.text("SELECT id FROM gpus WHERE id = :g FOR NO KEY UPDATE"),
                       {"g": gpu})
        grant = threading.Thread(target=lambda: outcome.append(leases.grant("job", 100)))
        grant.start()
        deadline = time.monotonic() + 20
        while not any("FOR NO KEY UPDATE" in q for q in _waiting_on_a_lock(pg_engine)):
            assert time.monotonic() < deadline, "the grant never waited on the row lock"
            time.sleep(0.02)
        assert outcome == []  # still waiting
        clock.advance(1)
        reading = Reading(index=0, uuid="GPU-lease-0", temperature_c=41, memory_used_mib=100)
        store.write(TickRecord(samples=[sample_row(gpu, clock.now_ms(), 0, reading)]))
        holder.rollback()
    finally:
        holder.close()
    grant.join(20)
    assert len(outcome) == 1 and outcome[0][0].allocation_id == "job"  # type: ignore[index]
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM samples")).scalar() == 2


def test_an_unreachable_server_fails_the_postgresql_tests_never_skips() -> None:
    """With GPUHISTORY_TEST_POSTGRES naming a server nobody listens on, the [postgresql]
    variant errors (CI goes red) while the [sqlite] one still passes."""
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         "tests/test_trend.py::test_empty_window"], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, POSTGRES_ENV: dead, "PYTHONPATH": str(REPO)}, timeout=120)
    assert run.returncode == 1, run.stdout
    assert "1 passed, 1 error" in run.stdout and "skipped" not in run.stdout


def test_without_a_server_the_postgresql_variants_skip_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without GPUHISTORY_TEST_POSTGRES and with no server on the default address, a
    developer still runs the rest: the PostgreSQL fixtures skip, saying how to run them."""
    monkeypatch.delenv(POSTGRES_ENV, raising=False)
    monkeypatch.setattr(conftest, "_default_postgres", lambda: None)
    with pytest.raises(pytest.skip.Exception, match=f"set {POSTGRES_ENV} to a PostgreSQL URL"):
        _postgres_url()


def test_a_server_on_the_default_address_is_used_without_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test` on a machine with a local PostgreSQL runs the PostgreSQL variants
    without any variable set; ``skip`` turns them off on purpose."""
    monkeypatch.delenv(POSTGRES_ENV, raising=False)
    monkeypatch.setattr(conftest, "_default_postgres", lambda: conftest.DEFAULT_POSTGRES)
    assert _postgres_url() == conftest.DEFAULT_POSTGRES
    monkeypatch.setenv(POSTGRES_ENV, "skip")
    with pytest.raises(pytest.skip.Exception, match="=skip"):
        _postgres_url()
