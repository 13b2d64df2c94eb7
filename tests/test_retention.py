"""Retention: raw samples past retention_raw_days go in small batches, never those around an
incident, never before the rollups (and the incident detector) have seen them; 1-minute
rollups go after retention_rollup_days once folded into hourly ones; the rest is kept.

Expected survivors are counted here from the trace CSV with the csv module.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gpuhistory.analytics.incidents import IncidentDetector
from gpuhistory.analytics.retention import RetentionJob
from gpuhistory.clock import FakeClock
from gpuhistory.domain.config import DEFAULT_CONFIG, Config
from gpuhistory.importer import import_file
from gpuhistory.storage.sample_source import raw_samples
from gpuhistory.storage.schema import gpus
from tests.conftest import FLEET4, sqlite_only

pytestmark = pytest.mark.postgres

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000
HOST = "testhost"
FLEET4_ROWS_PER_GPU = 2601


def trace_times(path: Path, gpu: int, start_ms: int = START_MS) -> list[int]:
    with open(path, newline="") as handle:
        return [start_ms + round(float(r["t_s"]) * 1000) for r in csv.DictReader(handle)
                if int(r["gpu"]) == gpu]


def gpu_ids(engine: sa.Engine) -> dict[int, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(gpus.c.gpu_index, gpus.c.id)
                                 .where(gpus.c.host == HOST)).all())


def sample_times(engine: sa.Engine, gpu_id: int) -> list[int]:
    """The GPU's raw sample times as the history queries see them (on PostgreSQL with the
    incident windows kept from dropped partitions)."""
    with engine.connect() as conn:
        source = raw_samples(conn)
        return list(conn.execute(sa.select(source.c.ts_ms).where(source.c.gpu_id == gpu_id)
                                 .order_by(source.c.ts_ms)).scalars())


def counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("transitions", "events", "leases", "incidents", "samples_1h")}


def set_rollup_watermark(engine: sa.Engine, gpu_id: int, resolution: str,
                         done_until_ms: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM rollup_progress WHERE gpu_id = :g AND "
                             "resolution = :r"), {"g": gpu_id, "r": resolution})
        conn.execute(sa.text("INSERT INTO rollup_progress (gpu_id, resolution, done_until_ms) "
                             "VALUES (:g, :r, :d)"),
                     {"g": gpu_id, "r": resolution, "d": done_until_ms})


@pytest.fixture
def deletes(engine: sa.Engine) -> Iterator[list[tuple[str, int]]]:
    """(table, rows) of every DELETE statement the engine runs."""
    seen: list[tuple[str, int]] = []

    def record(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM"):
            seen.append((statement.split()[2], cursor.rowcount))

    sa.event.listen(engine, "after_cursor_execute", record)
    yield seen
    sa.event.remove(engine, "after_cursor_execute", record)


def fleet(engine: sa.Engine, config: Config, now_ms: int, watermark_ms: int | None,
          detect: bool = True) -> dict[int, int]:
    """fleet4 imported at START, incidents detected (``detect`` False: the import's scan
    undone, as if the samples had come after it), rollups marked done until ``watermark``."""
    import_file(engine, FLEET4, start_ms=START_MS, host=HOST)
    ids = gpu_ids(engine)
    if detect:
        IncidentDetector(engine, FakeClock(now_ms), config).run()
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM incident_progress"))
    if watermark_ms is not None:
        for gpu_id in ids.values():
            set_rollup_watermark(engine, gpu_id, "1m", watermark_ms)
    return ids


def test_nothing_goes_that_the_rollups_have_not_covered(engine: sa.Engine) -> None:
    """Old samples the 1-minute rollups have not folded in yet stay; without any rollup
    watermark for a GPU nothing of it goes, and the result says why."""
    now = START_MS + 30 * DAY_MS
    ids = fleet(engine, DEFAULT_CONFIG, now, watermark_ms=None)
    for gpu_id in ids.values():
        set_rollup_watermark(engine, gpu_id, "1m", START_MS)  # nothing rolled up yet
    result = RetentionJob(engine, FakeClock(now), DEFAULT_CONFIG).run()
    assert result.raw_deleted == 0 and result.batches == 0
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM rollup_progress"))
    result = RetentionJob(engine, FakeClock(now), DEFAULT_CONFIG).run()
    assert result.raw_deleted == 0
    assert any("no 1-minute rollup watermark" in note for note in result.notes)
    assert all(len(sample_times(engine, i)) == FLEET4_ROWS_PER_GPU for i in ids.values())


def test_nothing_goes_before_the_incident_detector_has_scanned_it(engine: sa.Engine) -> None:
    """Samples not yet scanned for incidents stay: deleting them could lose an incident."""
    now = START_MS + 30 * DAY_MS
    fleet(engine, DEFAULT_CONFIG, now, watermark_ms=now, detect=False)
    result = RetentionJob(engine, FakeClock(now), DEFAULT_CONFIG).run()
    assert result.raw_deleted == 0
    assert any("not yet scanned for incidents" in note for note in result.notes)


def test_old_samples_go_in_batches_and_incident_windows_stay(engine: sa.Engine, database: str,
                                                             deletes: list) -> None:
    """With incident_context_minutes 0, GPU 1 keeps exactly the samples inside its two
    incidents; GPUs 0, 2 and 3 lose everything — on SQLite 500 rows per DELETE at most, on
    PostgreSQL by dropping the day's partition without any DELETE of samples. Transitions,
    events, leases, incidents and hourly rollups are untouched."""
    config = DEFAULT_CONFIG.changed(incident_context_minutes=0)
    now = START_MS + 30 * DAY_MS
    ids = fleet(engine, config, now, watermark_ms=START_MS + DAY_MS)
    before = counts(engine)
    deletes.clear()
    result = RetentionJob(engine, FakeClock(now), config, batch_rows=500).run()

    windows = [(START_MS + 42_700, START_MS + 90_300), (START_MS + 121_500, START_MS + 200_200)]
    kept = [t for t in trace_times(FLEET4, 1) if any(a <= t <= b for a, b in windows)]
    assert sample_times(engine, ids[1]) == kept
    for index in (0, 2, 3):
        assert sample_times(engine, ids[index]) == []
    assert result.raw_deleted == 4 * FLEET4_ROWS_PER_GPU - len(kept)
    if database == "sqlite":
        sizes = [rows for table, rows in deletes if table == "samples"]
        assert max(sizes) <= 500 and sum(sizes) == result.raw_deleted
        assert result.batches == len([n for n in sizes if n])
        assert result.batches >= 3 * -(-FLEET4_ROWS_PER_GPU // 500)
    else:
        assert "samples_20260101" in result.partitions_dropped
        assert not [t for t, _ in deletes if t.startswith("samples") and t != "samples_1m"]
    assert counts(engine) == before

    again = RetentionJob(engine, FakeClock(now), config, batch_rows=500).run()
    assert again.raw_deleted == 0  # idempotent


def test_the_default_context_keeps_ten_minutes_around_each_incident(engine: sa.Engine) -> None:
    """incident_context_minutes 10: all of GPU 1's 260 s of samples are within the window."""
    now = START_MS + 30 * DAY_MS
    ids = fleet(engine, DEFAULT_CONFIG, now, watermark_ms=START_MS + DAY_MS)
    RetentionJob(engine, FakeClock(now), DEFAULT_CONFIG).run()
    assert len(sample_times(engine, ids[1])) == FLEET4_ROWS_PER_GPU
    assert sample_times(engine, ids[0]) == []


@sqlite_only
def test_only_samples_past_retention_and_under_the_watermark_go(engine: sa.Engine) -> None:
    """Now is 14 days and 100 s after START: samples older than 100 s into the trace are
    past retention; GPU 2's rollups are done only up to 50 s, so it keeps more. (On
    PostgreSQL whole days go: tests/test_partitions.py.)"""
    now = START_MS + 14 * DAY_MS + 100_000
    ids = fleet(engine, DEFAULT_CONFIG, now, watermark_ms=START_MS + DAY_MS)
    set_rollup_watermark(engine, ids[2], "1m", START_MS + 50_000)
    RetentionJob(engine, FakeClock(now), DEFAULT_CONFIG).run()
    assert sample_times(engine, ids[0]) == [t for t in trace_times(FLEET4, 0)
                                            if t >= START_MS + 100_000]
    assert sample_times(engine, ids[2]) == [t for t in trace_times(FLEET4, 2)
                                            if t >= START_MS + 50_000]


def test_an_ongoing_incident_keeps_everything_since_it_began(engine: sa.Engine,
                                                             tmp_path: Path) -> None:
    """A card hot for two days (a sample every 30 s) is one ongoing incident: retention
    after one day removes only what came before its start less the context."""
    step_ms, cool, hot = 30_000, 120, 2 * 2880  # one hour at 70 °C, then two days at 86
    path = tmp_path / "hot.csv"
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["t_s", "gpu", "temperature_c"])
        for i in range(cool + hot):
            out.writerow([i * step_ms // 1000, 0, 70 if i < cool else 86])
    now = START_MS + (cool + hot) * step_ms  # one step after the last sample
    import_file(engine, path, start_ms=START_MS, host=HOST, clock=FakeClock(now))
    config = DEFAULT_CONFIG.changed(retention_raw_days=1)
    IncidentDetector(engine, FakeClock(now), config).run()
    [gpu_id] = gpu_ids(engine).values()
    set_rollup_watermark(engine, gpu_id, "1m", now)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT end_ms FROM incidents")).scalar() is None
    result = RetentionJob(engine, FakeClock(now), config).run()
    start = START_MS + cool * step_ms
    keep_from = start - 10 * 60_000
    assert result.raw_deleted == (keep_from - START_MS) // step_ms
    assert sample_times(engine, gpu_id)[0] == keep_from


def test_one_minute_rollups_go_after_their_retention_hourly_ones_stay(
        engine: sa.Engine) -> None:
    """1-minute rows older than retention_rollup_days go once the hourly rollups cover
    them; hourly rows stay forever; without an hourly watermark nothing goes."""
    import_file(engine, FLEET4, start_ms=START_MS, host=HOST)
    gpu_id = gpu_ids(engine)[0]
    columns = "gpu_id, bucket_ms, n, temp_n, util_n, power_n, state_max"
    with engine.begin() as conn:
        for table, step, count in (("samples_1m", 60_000, 120), ("samples_1h", 3_600_000, 2)):
            conn.execute(sa.text(f"DELETE FROM {table}"))  # the import's own rollups
            conn.execute(sa.text(f"INSERT INTO {table} ({columns}) "
                                 "VALUES (:g, :b, 1, 1, 1, 1, 0)"),
                         [{"g": gpu_id, "b": START_MS + i * step} for i in range(count)])
        conn.execute(sa.text("DELETE FROM rollup_progress WHERE resolution = '1h'"))
    now = START_MS + 400 * DAY_MS
    job = RetentionJob(engine, FakeClock(now), DEFAULT_CONFIG, batch_rows=7)
    assert job.run().rollup_deleted == 0  # no hourly watermark
    set_rollup_watermark(engine, gpu_id, "1h", START_MS + 30 * 60_000)
    assert job.run().rollup_deleted == 30
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT min(bucket_ms), count(*) FROM samples_1m")).one()
        assert tuple(left) == (START_MS + 30 * 60_000, 90)
        assert conn.execute(sa.text("SELECT count(*) FROM samples_1h")).scalar() == 2


def test_serve_schedules_the_detector_and_retention(tmp_path: Path) -> None:
    """serve's scheduler runs incident detection every 10 s and retention hourly, each with
    an explicit id, one instance at a time, missed runs coalesced."""
    from gpuhistory.service import (
        INCIDENTS_JOB_ID,
        RETENTION_JOB_ID,
        ServeSettings,
        Service,
    )

    service = Service(ServeSettings(db=str(tmp_path / "s.db"), backend="sim",
                                    trace=str(FLEET4)), clock=FakeClock())
    try:
        service.start_background()
        jobs = {job.id: job for job in service.scheduler.get_jobs()}
        for job_id, seconds in ((INCIDENTS_JOB_ID, 10), (RETENTION_JOB_ID, 3600)):
            job = jobs[job_id]
            assert job.max_instances == 1 and job.coalesce
            assert job.trigger.interval.total_seconds() == seconds
    finally:
        service.shutdown()
