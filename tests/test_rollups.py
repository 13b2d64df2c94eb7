"""Rollups (samples_1m, samples_1h): equal to a direct aggregation of the raw rows, computed
here in plain Python over ``SELECT * FROM samples``; idempotent; caught up in chunks after
downtime; older history brought in by ``import`` rolled up too; every statement a range on
the (gpu_id, time) key."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gpuhistory.analytics.rollups import CHUNK_MS, RollupJob, mark_dirty, watermarks
from gpuhistory.clock import FakeClock
from gpuhistory.domain.reading import GpuIdentity
from gpuhistory.importer import import_file
from gpuhistory.storage.log import LogStore, TickRecord
from tests.conftest import sqlite_only

pytestmark = pytest.mark.postgres

MINUTE, HOUR = 60_000, 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
UNAVAILABLE = 4
AGGREGATES = ("n", "temp_n", "temp_min", "temp_max", "temp_sum", "mem_max", "util_n",
              "util_sum", "power_n", "power_sum", "power_max", "reasons", "state_max")


def row(gpu_id: int, ts: int, state: int = 0, temp: int | None = 50, mem: int | None = 1000,
        util: int | None = 50, power: int | None = 3000, reasons: int | None = 0
        ) -> dict[str, Any]:
    return {"gpu_id": gpu_id, "ts_ms": ts, "state": state, "temperature_c": temp,
            "memory_temperature_c": None, "memory_used_mib": mem, "utilization_pct": util,
            "power_dw": power, "sm_clock_mhz": None, "mem_clock_mhz": None,
            "clock_event_reasons": reasons, "pstate": 0, "fan_pct": None}


def unavailable_row(gpu_id: int, ts: int) -> dict[str, Any]:
    return row(gpu_id, ts, UNAVAILABLE, None, None, None, None, None)


def add_gpu(store: LogStore, index: int) -> int:
    return store.gpu_id(GpuIdentity(index=index, uuid=f"GPU-test-{index}"), "sim", T0)


def varied_rows(gpu_id: int, start: int, seconds: int, seed: int = 1) -> list[dict[str, Any]]:
    """About one sample a second with jitter, NULLs, reason bits, states, gaps and outages."""
    rng = random.Random(seed)
    rows = []
    for i in range(seconds):
        ts = start + i * 1000 + rng.randrange(0, 400)
        phase = (i // 600) % 6
        if phase == 5 and i % 600 < 200:  # an outage of 200 s every hour
            rows.append(unavailable_row(gpu_id, ts))
            continue
        if phase == 3 and 120 <= i % 600 < 150:  # a gap: nothing at all
            continue
        rows.append(row(
            gpu_id, ts, state=rng.choice([0, 0, 1, 2, 3]),
            temp=None if rng.random() < 0.05 else rng.randrange(30, 95),
            mem=None if rng.random() < 0.03 else rng.randrange(500, 80_000),
            util=None if rng.random() < 0.05 else rng.randrange(0, 101),
            power=None if rng.random() < 0.05 else rng.randrange(500, 7000),
            reasons=None if rng.random() < 0.1 else rng.choice([0, 1, 4, 5, 0x20, 0x44, 0x100])))
    return rows


def reference(engine: sa.Engine, unit: int, before: int) -> dict[tuple[int, int], tuple]:
    """Every bucket of width ``unit`` starting before ``before``, aggregated in Python."""
    groups: dict[tuple[int, int], list[Any]] = {}
    with engine.connect() as conn:
        for r in conn.execute(sa.text("SELECT * FROM samples")):
            bucket = r.ts_ms // unit * unit
            if bucket + unit <= before:
                groups.setdefault((r.gpu_id, bucket), []).append(r)
    out = {}
    for key, rows in groups.items():
        def present(name: str, rows: list[Any] = rows) -> list[Any]:
            return [getattr(r, name) for r in rows if getattr(r, name) is not None]
        temps, utils, powers = present("temperature_c"), present("utilization_pct"), \
            present("power_dw")
        mems, masks = present("memory_used_mib"), present("clock_event_reasons")
        mask = None
        for m in masks:
            mask = (mask or 0) | m
        out[key] = (len(rows), len(temps), min(temps, default=None), max(temps, default=None),
                    sum(temps) if temps else None, max(mems, default=None), len(utils),
                    sum(utils) if utils else None, len(powers),
                    sum(powers) if powers else None, max(powers, default=None), mask,
                    max(r.state for r in rows))
    return out


def rollups(engine: sa.Engine, table: str) -> dict[tuple[int, int], tuple]:
    with engine.connect() as conn:
        return {(r.gpu_id, r.bucket_ms): tuple(getattr(r, a) for a in AGGREGATES)
                for r in conn.execute(sa.text(f"SELECT * FROM {table}"))}


def assert_rollups_match(engine: sa.Engine, now_ms: int) -> None:
    done_minute = (now_ms - 5000) // MINUTE * MINUTE
    assert rollups(engine, "samples_1m") == reference(engine, MINUTE, done_minute)
    assert rollups(engine, "samples_1h") == reference(engine, HOUR, done_minute)


def test_rollups_equal_a_direct_aggregation_of_the_raw_rows(engine, store, clock) -> None:
    """Minutes and hours with partial data, NULL readings, reason bits, gaps and outages,
    and a GPU that was UNAVAILABLE throughout, all equal the aggregation done here."""
    a, b = add_gpu(store, 0), add_gpu(store, 1)
    records = varied_rows(a, T0 + 17_250, 3 * 3600 + 500)  # starts mid-minute, ends mid-hour
    records += [unavailable_row(b, T0 + i * 2000) for i in range(2 * 1800)]
    store.write(TickRecord(samples=records))
    clock.set(T0 + 3 * HOUR + 1800_000)
    written = RollupJob(engine, clock).run()
    one_minute, one_hour = rollups(engine, "samples_1m"), rollups(engine, "samples_1h")
    assert written == len(one_minute) + len(one_hour)
    assert_rollups_match(engine, clock.now_ms())
    assert one_minute[(b, T0)] == (30, 0, None, None, None, None, 0, None, 0, None, None,
                                   None, UNAVAILABLE)
    assert len(one_hour) == 3 + 2 and (a, T0 + 3 * HOUR) not in one_hour  # hour 3 not over
    with engine.connect() as conn:
        assert watermarks(conn, a) == {"1m": T0 + 3 * HOUR + 1800_000 - MINUTE,
                                       "1h": T0 + 3 * HOUR}


def test_the_newest_minute_waits_for_the_lateness_margin(engine, store, clock) -> None:
    """A minute is rolled up once it is complete and ``lateness_ms`` have passed."""
    a = add_gpu(store, 0)
    store.write(TickRecord(samples=[row(a, T0 + s * 1000) for s in range(90)]))
    clock.set(T0 + 64_000)  # minute 0 ended 4 s ago: a tick may still be committing
    job = RollupJob(engine, clock, lateness_ms=5000)
    assert job.run() == 0
    clock.set(T0 + 65_000)
    assert job.run() == 1
    assert list(rollups(engine, "samples_1m")) == [(a, T0)]


def test_running_twice_changes_nothing_and_rerolling_never_double_counts(
        engine, store, clock) -> None:
    """A second run writes nothing; moving the watermark back, or a rebuild, recomputes
    the same rows (upserts of whole buckets, never increments)."""
    a = add_gpu(store, 0)
    store.write(TickRecord(samples=varied_rows(a, T0, 2 * 3600)))
    clock.set(T0 + 2 * HOUR + 10_000)
    job = RollupJob(engine, clock)
    job.run()
    before = (rollups(engine, "samples_1m"), rollups(engine, "samples_1h"))
    assert job.run() == 0
    with engine.begin() as conn:
        mark_dirty(conn, a, T0 + 1234)
    assert job.run() > 0
    assert (rollups(engine, "samples_1m"), rollups(engine, "samples_1h")) == before
    job.rebuild()
    assert (rollups(engine, "samples_1m"), rollups(engine, "samples_1h")) == before
    assert_rollups_match(engine, clock.now_ms())


def test_hours_of_downtime_are_caught_up_in_chunks(engine, store, clock) -> None:
    """After 20 h without a run the job catches up in chunks of at most 6 h of raw time per
    transaction; with a time budget it stops early and the next run goes on from there; a
    GPU that was off for weeks is skipped over, not walked through chunk by chunk."""
    a, b = add_gpu(store, 0), add_gpu(store, 1)
    store.write(TickRecord(samples=[row(a, T0 + s * 5000, temp=40 + s % 30)
                                    for s in range(720)]))
    clock.set(T0 + HOUR + 10_000)
    job = RollupJob(engine, clock)
    job.run()
    ranges: list[int] = []

    def spans(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if statement.startswith("INSERT INTO samples_1m"):
            if isinstance(parameters, dict):  # PostgreSQL's named parameters
                lo, hi = parameters["lo"], parameters["hi"]
            else:
                lo, hi = parameters[-3], parameters[-2]  # ts_ms >= ? AND ts_ms < ? GROUP BY
            ranges.append(hi - lo)

    store.write(TickRecord(samples=[row(a, T0 + HOUR + s * 5000, temp=50 + s % 20)
                                    for s in range(20 * 720)]))
    store.write(TickRecord(samples=[row(b, T0 + 30 * 24 * HOUR + s * 5000)
                                    for s in range(720)]))
    store.write(TickRecord(samples=[row(b, T0 + s * 5000) for s in range(720)]))
    clock.set(T0 + 30 * 24 * HOUR + HOUR + 10_000)
    chunks = job.chunks
    assert job.run(max_seconds=0) > 0  # one chunk, then out of time
    assert job.chunks == chunks + 1
    sa.event.listen(engine, "before_cursor_execute", spans)
    try:
        job.run()
    finally:
        sa.event.remove(engine, "before_cursor_execute", spans)
    assert ranges and max(ranges) <= CHUNK_MS
    assert 4 <= job.chunks - chunks <= 10  # 20 h of a, 2 h of b, the 29-day gap skipped
    assert_rollups_match(engine, clock.now_ms())


def _trace(path: Path, seconds: int) -> Path:
    lines = ["t_s,gpu,temperature_c,memory_temperature_c,power_w,sm_clock_mhz,mem_clock_mhz,"
             "utilization_pct,memory_used_mib,memory_total_mib,clock_event_reasons,pstate"]
    for s in range(seconds):
        for gpu in (0, 1):
            temp = 40 + (s * (gpu + 1)) % 45
            power = "" if s % 7 == 0 else f"{100 + s % 300}.5"
            lines.append(f"{s},{gpu},{temp},,{power},1500,2619,{s % 101},{1000 + s},81559,"
                         f"{4 if temp > 80 else 1},0")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_of_older_history_is_rolled_up_before_import_returns(engine, clock,
                                                                     tmp_path: Path) -> None:
    """Importing a file that covers a time before the rolled-up data moves the watermark
    back (in the import's transaction) and rolls the imported rows up before it returns:
    no job run is needed for the rollups to match the samples."""
    trace = _trace(tmp_path / "burn.csv", 1800)
    clock.set(T0 + 3 * HOUR)
    import_file(engine, trace, start_ms=T0 + 2 * HOUR, host="testhost", clock=clock)
    with engine.connect() as conn:
        gpu_ids = list(conn.execute(sa.text("SELECT id FROM gpus ORDER BY id")).scalars())
        assert watermarks(conn, gpu_ids[0])["1m"] == T0 + 3 * HOUR - MINUTE
    import_file(engine, trace, start_ms=T0 + 20 * MINUTE + 30_000, host="testhost",
                clock=clock)
    with engine.connect() as conn:
        assert [watermarks(conn, g)["1m"] for g in gpu_ids] == [T0 + 3 * HOUR - MINUTE] * 2
    assert RollupJob(engine, clock).run() == 0  # nothing left for the job
    assert_rollups_match(engine, clock.now_ms())
    assert {b for _g, b in rollups(engine, "samples_1h")} == {T0}  # hour 2 is not over
    clock.set(T0 + 3 * HOUR + 5000)
    RollupJob(engine, clock).run()
    assert_rollups_match(engine, clock.now_ms())
    assert {b for _g, b in rollups(engine, "samples_1h")} == {T0, T0 + 2 * HOUR}


def test_mark_dirty_on_a_gpu_never_rolled_up_keeps_its_earlier_samples(engine, store,
                                                                       clock) -> None:
    """Marking a GPU the job has not seen yet starts it at its first sample, not later."""
    a = add_gpu(store, 0)
    store.write(TickRecord(samples=[row(a, T0 + 90_000 + s * 1000) for s in range(600)]))
    with engine.begin() as conn:
        mark_dirty(conn, a, T0 + 5 * MINUTE)
        assert watermarks(conn, a) == {"1m": T0 + MINUTE, "1h": T0}
    clock.set(T0 + HOUR)
    RollupJob(engine, clock).run()
    assert_rollups_match(engine, clock.now_ms())


@sqlite_only  # SQLite's query plans
def test_every_rollup_statement_is_a_range_on_the_primary_key(engine, store, clock) -> None:
    """EXPLAIN QUERY PLAN of each statement the job runs: the samples and rollup tables are
    only ever searched by their (gpu_id, ts_ms/bucket_ms) key, never scanned."""
    a = add_gpu(store, 0)
    store.write(TickRecord(samples=varied_rows(a, T0, 2 * 3600)))
    clock.set(T0 + 2 * HOUR + 10_000)
    executed: list[tuple[str, Any]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if "samples" in statement and not statement.startswith("EXPLAIN"):
            executed.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        RollupJob(engine, clock).run()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert any(s.startswith("INSERT INTO samples_1h") for s, _p in executed)
    with engine.connect() as conn:
        for statement, parameters in executed:
            plan = [r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement,
                                                        parameters)]
            reads = [line for line in plan if line.startswith(("SEARCH", "SCAN"))]
            assert reads, (statement, plan)
            for line in reads:
                assert line in (
                    "SEARCH samples USING PRIMARY KEY (gpu_id=? AND ts_ms>? AND ts_ms<?)",
                    "SEARCH samples USING PRIMARY KEY (gpu_id=? AND ts_ms>?)",
                    "SEARCH samples USING PRIMARY KEY (gpu_id=?)",
                    "SEARCH samples_1m USING PRIMARY KEY "
                    "(gpu_id=? AND bucket_ms>? AND bucket_ms<?)",
                ), (statement, plan)


def test_serve_schedules_the_rollup_job(tmp_path: Path) -> None:
    """``serve`` runs the job every 30 s with an explicit id, one instance, coalesced."""
    from gpuhistory.service import ROLLUP_JOB_ID, ServeSettings, Service

    service = Service(ServeSettings(db=str(tmp_path / "s.db"), backend="sim"),
                      clock=FakeClock())
    service.start_background()
    try:
        job = service.scheduler.get_job(ROLLUP_JOB_ID)
        assert job.max_instances == 1 and job.coalesce
        assert job.trigger.interval.total_seconds() == 30
        assert job.func == service.maintenance.fire and job.args[0].name == "rollups"
    finally:
        service.shutdown()
