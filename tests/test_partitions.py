"""Samples on PostgreSQL: daily partitions (migration 0013, gpuhistory/storage/partitions.py),
retention by dropping whole days with the incident windows kept (samples_kept), and the
history and post-mortem queries answering across the dropped boundary as before.

PostgreSQL tests skip without a server; the SQLite test checks that 0013 leaves SQLite be.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gpuhistory.analytics.incidents import IncidentDetector
from gpuhistory.analytics.postmortem import context_samples, get_incident, postmortem
from gpuhistory.analytics.retention import RetentionJob
from gpuhistory.clock import FakeClock
from gpuhistory.documents import history_doc
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.importer import import_file
from gpuhistory.storage import partitions
from gpuhistory.storage.engine import current_revision, downgrade, make_engine, upgrade
from gpuhistory.storage.log import LogStore, TickRecord
from gpuhistory.storage.queries import latest_samples
from gpuhistory.storage.sample_source import raw_samples
from gpuhistory.storage.schema import samples
from tests.conftest import FLEET4
from tests.test_retention import (
    FLEET4_ROWS_PER_GPU,
    HOST,
    START_MS,
    gpu_ids,
    sample_times,
    set_rollup_watermark,
    trace_times,
)

DAY_MS = partitions.DAY_MS
COLUMNS = partitions.COLUMNS
PARAMS = ", ".join(":" + c.name for c in samples.columns)
# Incident windows of fleet4's GPU 1 imported at START_MS (context 0).
WINDOWS = [(START_MS + 42_700, START_MS + 90_300), (START_MS + 121_500, START_MS + 200_200)]


def snapshot(conn: sa.Connection, table: str = "samples") -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sa.text(
        f"SELECT {COLUMNS} FROM {table} ORDER BY gpu_id, ts_ms"))]


def where_rows_are(conn: sa.Connection) -> dict[int, str]:
    """ts_ms -> the partition holding it."""
    return dict(conn.execute(sa.text("SELECT ts_ms, tableoid::regclass::text FROM samples")).all())


def sample(gpu_id: int, ts_ms: int, temp: int = 60) -> dict[str, Any]:
    return {"gpu_id": gpu_id, "ts_ms": ts_ms, "state": 0, "temperature_c": temp,
            "memory_temperature_c": None, "memory_used_mib": 143_771, "utilization_pct": 99,
            "power_dw": 6_995, "sm_clock_mhz": 1_980, "mem_clock_mhz": 3_201,
            "clock_event_reasons": 1 << 40, "pstate": 0, "fan_pct": None,
            "memory_reserved_mib": 616}


def add_gpu(conn: sa.Connection, uuid: str = "GPU-part-0", host: str = HOST) -> int:
    return int(conn.execute(sa.text(
        "INSERT INTO gpus (host, gpu_index, uuid, backend, first_seen_ms, last_seen_ms) "
        "VALUES (:h, 0, :u, 'sim', 0, 0) RETURNING id"), {"h": host, "u": uuid}).scalar_one())


def test_migration_partitions_existing_samples_and_keeps_every_row(
        fresh_postgres_url: str) -> None:
    """A database at 0012 (the revision before) with samples of last year, yesterday,
    today and tomorrow: 0013
    makes samples partitioned, one partition per day with rows and for today plus three,
    every row (all columns) in its day's partition and none in DEFAULT; the downgrade
    gives the plain table back with the same rows, and upgrading again works."""
    engine = make_engine(fresh_postgres_url)
    try:
        upgrade(engine, "0012")
        now = int(time.time() * 1000)
        times = [now - 400 * DAY_MS, now - DAY_MS, now - 1, now, now + DAY_MS]
        with engine.begin() as conn:
            gpu = add_gpu(conn)
            conn.execute(sa.text(f"INSERT INTO samples ({COLUMNS}) VALUES ({PARAMS})"),
                         [sample(gpu, t) for t in times])
            before = snapshot(conn)
        upgrade(engine, "0013")
        assert current_revision(engine) == "0013"
        with engine.connect() as conn:
            assert partitions.is_partitioned(conn)
            assert snapshot(conn) == before
            made = {p.name for p in partitions.partitions(conn)}
            today = partitions.day_of(now)
            wanted = {partitions.partition_name(partitions.day_of(t)) for t in times}
            wanted |= {partitions.partition_name(d) for d in range(today, today + 4)}
            assert made == wanted
            located = where_rows_are(conn)
            assert all(located[t] == partitions.partition_name(partitions.day_of(t))
                       for t in times)
            assert snapshot(conn, "samples_default") == [] and snapshot(conn, "samples_kept") == []
            order = list(conn.execute(sa.text(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'samples'::regclass "
                "AND attnum > 0 ORDER BY attnum")).scalars())
            assert order == [c.name for c in samples.columns]
        downgrade(engine, "0012")
        with engine.connect() as conn:
            assert not partitions.is_partitioned(conn)
            assert snapshot(conn) == before
            assert conn.execute(sa.text("SELECT to_regclass('samples_kept')")).scalar() is None
        upgrade(engine, "0013")
        with engine.connect() as conn:
            assert snapshot(conn) == before
    finally:
        engine.dispose()


def test_migration_0013_leaves_sqlite_alone(tmp_path: Path) -> None:
    """On SQLite 0013 changes nothing: the schema text before and after is the same."""
    path = tmp_path / "m.db"
    engine = make_engine(path)

    def schema() -> list[tuple[str, str]]:
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE "
                                "'alembic%' ORDER BY name").fetchall()
    try:
        upgrade(engine, "0012")
        before = schema()
        upgrade(engine, "0013")
        assert current_revision(engine) == "0013" and schema() == before
        downgrade(engine, "0012")
        assert schema() == before
    finally:
        engine.dispose()


def test_inserts_for_old_new_and_future_times_all_land(pg_engine: sa.Engine) -> None:
    """The write path inserts rows of 2019, yesterday, now, the day after tomorrow and next
    year without a failure; days without a partition land in DEFAULT, and the maintenance
    then gives each its own day partition, every row still there."""
    now = int(time.time() * 1000)
    times = [1_551_398_400_000, now - DAY_MS, now, now + 2 * DAY_MS, now + 400 * DAY_MS]
    with pg_engine.begin() as conn:
        gpu = add_gpu(conn)
    store = LogStore(pg_engine, HOST)
    for t in times:
        store.write(TickRecord(samples=[sample(gpu, t)]))
    with pg_engine.connect() as conn:
        located = where_rows_are(conn)
        before = snapshot(conn)
    assert sorted(located) == sorted(times)
    assert located[1_551_398_400_000] == "samples_default"
    assert located[now + 400 * DAY_MS] == "samples_default"
    assert located[now] == partitions.partition_name(partitions.day_of(now))

    result = partitions.maintain(pg_engine, now)
    assert {"samples_20190301", partitions.partition_name(partitions.day_of(now + 400 * DAY_MS))
            } <= set(result.created)
    assert result.moved_rows >= 2 and result.skipped == []
    with pg_engine.connect() as conn:
        located = where_rows_are(conn)
        assert snapshot(conn) == before
        assert snapshot(conn, "samples_default") == []
    assert all(located[t] == partitions.partition_name(partitions.day_of(t)) for t in times)
    assert partitions.maintain(pg_engine, now).created == []  # idempotent


def answers(engine: sa.Engine, now: int) -> dict[str, Any]:
    """What the post-mortems, their CSV rows and GPU 1's raw history over each incident
    window answer."""
    config = DEFAULT_CONFIG.changed(incident_context_minutes=0)
    with engine.connect() as conn:
        ids = list(conn.execute(sa.text("SELECT id FROM incidents ORDER BY id")).scalars())
        docs, csv_rows = [], []
        for incident_id in ids:
            row = get_incident(conn, incident_id)
            docs.append(postmortem(conn, row, config, now, []))
            csv_rows.append([tuple(r) for r in context_samples(conn, row, row.start_ms,
                                                                 row.end_ms)])
        entry = latest_samples(conn, HOST, 1, now_ms=now)[0]
        history = [history_doc(conn, entry, a, b, 10_000) for a, b in WINDOWS]
    return {"postmortems": docs, "csv": csv_rows, "history": history}


def fleet(engine: sa.Engine, now: int, gpu2_done_ms: int | None = None) -> dict[int, int]:
    """fleet4 imported at START_MS (its own day), incidents found, rollups done a day on."""
    config = DEFAULT_CONFIG.changed(incident_context_minutes=0)
    import_file(engine, FLEET4, start_ms=START_MS, host=HOST)
    IncidentDetector(engine, FakeClock(now), config).run()
    ids = gpu_ids(engine)
    for index, gpu_id in ids.items():
        done = gpu2_done_ms if index == 2 and gpu2_done_ms is not None else START_MS + DAY_MS
        set_rollup_watermark(engine, gpu_id, "1m", done)
    return ids


def test_retention_drops_the_old_day_keeps_incident_samples_and_answers_the_same(
        pg_engine: sa.Engine) -> None:
    """fleet4's day (2026-01-01) is dropped 30 days on: DETACH + DROP, no DELETE; GPU 1's
    incident samples stay in samples_kept; the post-mortems, their CSV rows and the raw
    history over the windows answer exactly as before the drop; a recent day stays."""
    now = START_MS + 30 * DAY_MS
    config = DEFAULT_CONFIG.changed(incident_context_minutes=0)
    ids = fleet(pg_engine, now)
    LogStore(pg_engine, HOST).write(TickRecord(samples=[sample(ids[0], now - 3_600_000)]))
    before = answers(pg_engine, now)
    assert len(before["postmortems"]) == 2
    assert all(doc["count"] > 0 for doc in before["history"])
    statements: list[str] = []
    sa.event.listen(pg_engine, "before_cursor_execute",
                    lambda *a: statements.append(a[2]))

    result = RetentionJob(pg_engine, FakeClock(now), config).run()

    # (Other old days are empty partitions made by earlier tests in this database.)
    assert "samples_20260101" in result.partitions_dropped
    assert not [s for s in statements if s.lstrip().upper().startswith("DELETE FROM SAMPLES")
                and not s.lstrip().upper().startswith("DELETE FROM SAMPLES_1M")]
    kept = [t for t in trace_times(FLEET4, 1) if any(a <= t <= b for a, b in WINDOWS)]
    assert result.raw_deleted == 4 * FLEET4_ROWS_PER_GPU - len(kept)
    with pg_engine.connect() as conn:
        names = {p.name for p in partitions.partitions(conn)}
        assert "samples_20260101" not in names
        assert partitions.partition_name(partitions.day_of(now)) in names
        assert conn.execute(sa.text("SELECT count(*) FROM samples_kept")).scalar() == len(kept)
        assert list(conn.execute(sa.text("SELECT ts_ms FROM samples")).scalars()) == [
            now - 3_600_000]
    assert sample_times(pg_engine, ids[1]) == kept
    assert answers(pg_engine, now) == before
    again = RetentionJob(pg_engine, FakeClock(now), config).run()
    assert again.partitions_dropped == [] and again.raw_deleted == 0


def test_a_day_stays_while_a_gpu_in_it_is_not_rolled_up_to_its_end(pg_engine: sa.Engine) -> None:
    """GPU 2's 1-minute rollups are done only to 50 s into the day: the day's partition
    stays whole (the result says why); once they are done, it goes."""
    now = START_MS + 30 * DAY_MS
    config = DEFAULT_CONFIG.changed(incident_context_minutes=0)
    ids = fleet(pg_engine, now, gpu2_done_ms=START_MS + 50_000)
    result = RetentionJob(pg_engine, FakeClock(now), config).run()
    assert "samples_20260101" not in result.partitions_dropped and result.raw_deleted == 0
    assert any(n.startswith(f"samples_20260101 kept: gpus.id {ids[2]}") for n in result.notes)
    assert len(sample_times(pg_engine, ids[0])) == FLEET4_ROWS_PER_GPU
    set_rollup_watermark(pg_engine, ids[2], "1m", START_MS + DAY_MS)
    result = RetentionJob(pg_engine, FakeClock(now), config).run()
    assert "samples_20260101" in result.partitions_dropped
    assert sample_times(pg_engine, ids[0]) == []


def test_a_day_imported_again_after_its_drop_reads_each_sample_once(pg_engine: sa.Engine) -> None:
    """After the day went (GPU 1's incident samples kept), importing the same recording
    again lands it in a DEFAULT-then-day partition; the raw history reads every sample
    once, and the next retention keeps the windows once."""
    now = START_MS + 30 * DAY_MS
    config = DEFAULT_CONFIG.changed(incident_context_minutes=0)
    ids = fleet(pg_engine, now)
    RetentionJob(pg_engine, FakeClock(now), config).run()
    import_file(pg_engine, FLEET4, start_ms=START_MS, host=HOST)
    assert sample_times(pg_engine, ids[1]) == trace_times(FLEET4, 1)
    result = RetentionJob(pg_engine, FakeClock(now), config).run()
    assert "samples_20260101" in result.partitions_dropped
    kept = [t for t in trace_times(FLEET4, 1) if any(a <= t <= b for a, b in WINDOWS)]
    assert sample_times(pg_engine, ids[1]) == kept
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM samples_kept")).scalar() == len(kept)


def test_partition_maintenance_gives_up_on_a_held_lock_and_retries(pg_engine: sa.Engine) -> None:
    """A transaction holding samples' lock (an import, a long DDL) makes the maintenance
    skip the day within the lock timeout and say so, instead of queueing the samplers'
    inserts behind it; the next run makes the partition."""
    day = partitions.day_of(START_MS) + 300
    blocker = pg_engine.connect()
    try:
        blocker.begin()
        blocker.execute(sa.text("LOCK TABLE samples IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        result = partitions.maintain(pg_engine, day * DAY_MS, ahead_days=0)
        assert time.monotonic() - started < 30
        assert result.created == [] and "lock timeout" in result.skipped[0]
    finally:
        blocker.rollback()
        blocker.close()
    assert partitions.maintain(pg_engine, day * DAY_MS, ahead_days=0).created == [
        partitions.partition_name(day)]


def test_raw_samples_is_the_table_itself_on_sqlite(engine: sa.Engine) -> None:
    """On SQLite the raw-sample queries read samples alone (no samples_kept there)."""
    with engine.connect() as conn:
        assert raw_samples(conn) is samples


@pytest.mark.parametrize("ts_ms, name", [(0, "samples_19700101"),
                                         (1_767_225_599_999, "samples_20251231"),
                                         (1_767_225_600_000, "samples_20260101")])
def test_partition_names_are_utc_days(ts_ms: int, name: str) -> None:
    """A time's day partition is its UTC date; the bounds are midnight to midnight."""
    assert partitions.partition_name(partitions.day_of(ts_ms)) == name


def test_a_rebuild_after_the_drop_finds_the_same_incidents(pg_engine: sa.Engine) -> None:
    """Rescanning every sample with the same thresholds after fleet4's day was dropped
    reads the kept windows: both incidents stay, with their ids and figures."""
    now = START_MS + 30 * DAY_MS
    config = DEFAULT_CONFIG.changed(incident_context_minutes=0)
    ids = fleet(pg_engine, now)
    # GPU 1 samples on today (cool), so the rebuild has something in samples to scan.
    LogStore(pg_engine, HOST).write(TickRecord(samples=[sample(ids[1], now - 3_600_000)]))
    query = sa.text("SELECT id, gpu_id, start_ms, end_ms, peak_temp_c, peak_ms, temp_sum, "
                    "temp_n, above_critical_ms, peak_power_dw, clock_event_reasons "
                    "FROM incidents ORDER BY id")
    with pg_engine.connect() as conn:
        before = conn.execute(query).all()
    assert len(before) == 2
    assert "samples_20260101" in RetentionJob(pg_engine, FakeClock(now), config).run(
        ).partitions_dropped
    IncidentDetector(pg_engine, FakeClock(now), config).rebuild()
    with pg_engine.connect() as conn:
        assert conn.execute(query).all() == before


def test_a_day_that_is_over_gets_its_key_rebuilt_once(pg_engine: sa.Engine) -> None:
    """200 GPUs x 100 s written tick by tick into a past day leave its primary key's pages
    part-empty; the maintenance rebuilds it (smaller, still the unique key) once."""
    day = partitions.day_of(START_MS) + 200
    with pg_engine.begin() as conn:
        for g in range(200):
            add_gpu(conn, uuid=f"GPU-compact-{g}")
        first = conn.execute(sa.text("SELECT min(id) FROM gpus")).scalar_one()
        partitions.create_day(conn, day)
        conn.execute(sa.text(
            f"INSERT INTO samples (ts_ms, gpu_id, state) SELECT {day * DAY_MS} + t * 1000, "
            f"{first} + g, 0 FROM generate_series(0, 99) t, generate_series(0, 199) g "
            "ORDER BY t, g"))
    key = f"{partitions.partition_name(day)}_pkey"
    size = sa.text(f"SELECT pg_relation_size('{key}')")
    with pg_engine.connect() as conn:
        before = conn.execute(size).scalar_one()
    result = partitions.maintain(pg_engine, (day + 2) * DAY_MS, ahead_days=0)
    assert partitions.partition_name(day) in result.compacted
    with pg_engine.connect() as conn:
        assert conn.execute(size).scalar_one() < before * 0.85
        assert conn.execute(sa.text(f"SELECT obj_description('{key}'::regclass, 'pg_class')")
                            ).scalar() == partitions.COMPACTED
    with pytest.raises(sa.exc.IntegrityError), pg_engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO samples (ts_ms, gpu_id, state) "
                             f"VALUES ({day * DAY_MS}, {first}, 0)"))
    again = partitions.maintain(pg_engine, (day + 2) * DAY_MS, ahead_days=0)
    assert partitions.partition_name(day) not in again.compacted


def test_a_partition_another_process_dropped_first_is_no_error(pg_engine: sa.Engine) -> None:
    """Two samplers' retention runs racing for one day: the one that comes second finds
    the partition gone and says None (nothing dropped, nothing counted)."""
    day = partitions.day_of(START_MS) + 100
    with pg_engine.begin() as conn:
        partitions.create_day(conn, day)
    with pg_engine.connect() as conn:
        part = next(p for p in partitions.partitions(conn)
                    if p.name == partitions.partition_name(day))
    assert partitions.drop(pg_engine, part, []) == 0
    assert partitions.drop(pg_engine, part, []) is None
