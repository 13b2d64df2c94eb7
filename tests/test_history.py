"""History at any resolution: auto picks raw / 1m / 1h by the range, about ``points`` buckets,
the same numbers from every source (checked against an aggregation of the raw rows done
here in Python), rollups filled from raw samples up to "now", primary-key range plans, the
endpoint with its one error shape, the CLI and the Python client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner

from gpuhistory.analytics import history as history_module
from gpuhistory.analytics.history import history_buckets, plan_history
from gpuhistory.analytics.rollups import RollupJob
from gpuhistory.cli import history as history_cli
from gpuhistory.cli.main import cli
from gpuhistory.client import ApiError, Client
from gpuhistory.clock import FakeClock, iso_utc
from gpuhistory.domain.reading import GpuIdentity, clock_event_reason_names
from gpuhistory.domain.states import GPUState
from gpuhistory.storage.engine import make_engine, upgrade
from gpuhistory.storage.log import LogStore, TickRecord
from tests.conftest import sqlite_only

pytestmark = pytest.mark.postgres

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
END = T0 + 30 * DAY  # the month-long log below ends here


def row(gpu_id: int, ts: int, i: int) -> dict[str, Any]:
    """A sample whose values vary with ``i``, with NULLs and outages now and then."""
    if i % 997 == 0:
        return {"gpu_id": gpu_id, "ts_ms": ts, "state": 4, "temperature_c": None,
                "memory_temperature_c": None, "memory_used_mib": None,
                "utilization_pct": None, "power_dw": None, "sm_clock_mhz": None,
                "mem_clock_mhz": None, "clock_event_reasons": None, "pstate": None,
                "fan_pct": None}
    return {"gpu_id": gpu_id, "ts_ms": ts, "state": (i // 50) % 4,
            "temperature_c": None if i % 31 == 0 else 30 + i * 7 % 61,
            "memory_temperature_c": None, "memory_used_mib": 1000 + i * 13 % 70_000,
            "utilization_pct": None if i % 17 == 0 else i % 101,
            "power_dw": None if i % 23 == 0 else 600 + i * 11 % 6400, "sm_clock_mhz": None,
            "mem_clock_mhz": None, "clock_event_reasons": (0, 1, 4, 0x40, None)[i % 5],
            "pstate": 0, "fan_pct": None}


def month_log(store: LogStore) -> int:
    """30 days of one GPU at one sample a minute, then its last hour at 1 Hz."""
    gpu = store.gpu_id(GpuIdentity(index=0, uuid="GPU-month"), "sim", T0)
    rows = [row(gpu, T0 + m * MINUTE + 7_000, m) for m in range(30 * 24 * 60 - 60)]
    rows += [row(gpu, END - HOUR + s * 1000, s) for s in range(3600)]
    store.write(TickRecord(samples=rows))
    return gpu


@pytest.fixture(scope="module")
def month_db(tmp_path_factory) -> Iterator[tuple[sa.Engine, int]]:
    """The month-long log, rolled up to its end; built once, for tests that only read."""
    engine = make_engine(tmp_path_factory.mktemp("month") / "month.db")
    upgrade(engine)
    gpu = month_log(LogStore(engine, "testhost"))
    RollupJob(engine, FakeClock(END)).run()
    yield engine, gpu
    engine.dispose()


def expected(engine: sa.Engine, gpu: int, start: int, until: int, width: int
             ) -> list[dict[str, Any]]:
    """The buckets of [start, until] aggregated here from the raw rows, in Python."""
    groups: dict[int, list[Any]] = {}
    with engine.connect() as conn:
        for r in conn.execute(sa.text("SELECT * FROM samples WHERE gpu_id = :g AND ts_ms "
                                      "BETWEEN :a AND :b ORDER BY ts_ms"),
                              {"g": gpu, "a": start, "b": until}):
            groups.setdefault(r.ts_ms // width * width, []).append(r)
    out = []
    for bucket, rows in groups.items():
        def values(name: str, rows: list[Any] = rows) -> list[Any]:
            return [getattr(r, name) for r in rows if getattr(r, name) is not None]
        temps, utils, powers = values("temperature_c"), values("utilization_pct"), \
            values("power_dw")
        masks = values("clock_event_reasons")
        mask = None
        for m in masks:
            mask = (mask or 0) | m
        out.append({
            "timestamp": iso_utc(bucket), "samples": len(rows),
            "temperature_min": min(temps, default=None),
            "temperature_max": max(temps, default=None),
            "temperature_avg": round(sum(temps) / len(temps), 2) if temps else None,
            "memory_used_max_mb": max(values("memory_used_mib"), default=None),
            "load_avg": round(sum(utils) / len(utils), 2) if utils else None,
            "power_avg_watts": round(sum(powers) / len(powers) / 10, 2) if powers else None,
            "power_max_watts": max(powers) / 10 if powers else None,
            "clock_event_reasons": clock_event_reason_names(mask),
            "clock_event_reasons_mask": mask,
            "state": GPUState(max(r.state for r in rows)).name,
        })
    return out


# -- choosing the source ------------------------------------------------------------------
@pytest.mark.parametrize(("range_ms", "source", "bucket_ms"), [
    (15 * MINUTE, "raw", 2_000),  # 15 min: 1m would give 15 buckets, fewer than 500
    (DAY, "1m", 3 * MINUTE),  # a day: 1440 minutes, 24 hours
    (30 * DAY, "1h", 2 * HOUR),  # a month: 720 hours
])
def test_auto_picks_the_coarsest_source_with_enough_buckets(range_ms, source,
                                                            bucket_ms) -> None:
    """auto: the coarsest source with at least ``points`` buckets over the range; the
    bucket width is the source's width times ceil(range / points / source width)."""
    plan = plan_history("auto", END - range_ms, END, 500)
    assert (plan.source, plan.width_ms) == (source, bucket_ms)
    assert plan.start_ms % bucket_ms == 0 and plan.start_ms <= END - range_ms


@pytest.mark.parametrize(("range_ms", "points", "resolution"), [
    (15 * MINUTE, 500, "auto"), (DAY, 500, "auto"), (30 * DAY, 500, "auto"),
    (DAY, 100, "auto"), (7 * DAY, 1000, "auto"), (30 * DAY, 500, "1m"),
    (2 * DAY, 50, "1h"), (HOUR, 60, "raw"),
])
def test_about_points_buckets_each_equal_to_the_raw_aggregation(month_db, range_ms, points,
                                                                resolution) -> None:
    """About ``points`` buckets (never more than points + 1), each equal to aggregating
    the raw samples of its span — whichever source answered."""
    engine, month = month_db
    with engine.connect() as conn:
        plan, _marks, buckets = history_buckets(conn, month, END - range_ms, END,
                                                resolution, points)
    assert points / 2.2 <= len(buckets) <= points + 1
    assert buckets == expected(engine, month, plan.start_ms, END, plan.width_ms)


def test_rollups_lagging_behind_are_filled_from_raw_samples(engine, store, clock) -> None:
    """With the job behind (mid-hour, minutes late), buckets still reach "now" and equal
    the raw aggregation: 1h rows, then 1m rows, then raw samples, without overlap — for
    every resolution asked."""
    gpu = month_log(store)
    clock.set(END - 100 * MINUTE + 30_000)  # the job last ran 100 minutes ago, mid-hour
    RollupJob(engine, clock).run()
    clock.set(END)
    for resolution, since, points in (
            ("auto", END - 30 * DAY, 500), ("auto", END - DAY, 500), ("auto", END - 3 * HOUR, 30),
            ("auto", END - 15 * MINUTE, 500), ("1m", END - 3 * HOUR, 500),
            ("1h", END - 2 * DAY, 500), ("raw", END - HOUR, 500)):
        with engine.connect() as conn:
            plan, marks, buckets = history_buckets(conn, gpu, since, END, resolution, points)
        assert marks["1m"] == END - 100 * MINUTE and marks["1h"] == END - 2 * HOUR
        assert buckets == expected(engine, gpu, plan.start_ms, END, plan.width_ms)
        assert buckets[-1]["timestamp"] >= iso_utc(END - plan.width_ms)


def test_auto_answers_from_rollups_where_retention_removed_raw_samples(engine, store,
                                                                       clock) -> None:
    """An hour of three weeks ago has no raw samples left but has its 1-minute rollups:
    auto answers from those (an explicit ``raw`` answers with what is there: nothing)."""
    month = month_log(store)
    clock.set(END)
    RollupJob(engine, clock).run()
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM samples WHERE gpu_id = :g AND ts_ms < :t"),
                     {"g": month, "t": END - 14 * DAY})
    since = END - 21 * DAY
    with engine.connect() as conn:
        plan, _m, buckets = history_buckets(conn, month, since, since + HOUR, "auto", 500)
        assert plan.source == "1m" and len(buckets) == 60
        assert sum(b["samples"] for b in buckets) == 60
        _plan, _m, none = history_buckets(conn, month, since, since + HOUR, "raw", 500)
        assert none == []


@sqlite_only  # SQLite's query plans
def test_history_queries_are_ranges_on_the_primary_key(engine, store, clock) -> None:
    """EXPLAIN QUERY PLAN of every statement a history runs (each source, with rollups
    complete and lagging): only SEARCH ... USING PRIMARY KEY ranges, never a SCAN."""
    gpu = month_log(store)
    clock.set(END - 100 * MINUTE + 30_000)
    RollupJob(engine, clock).run()
    executed: list[tuple[str, Any]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if "samples" in statement and not statement.startswith("EXPLAIN"):
            executed.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        with engine.connect() as conn:
            for resolution in ("raw", "1m", "1h", "auto"):
                for since in (END - 30 * DAY, END - DAY, END - 15 * MINUTE):
                    history_buckets(conn, gpu, since, END, resolution, 500)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    allowed = {
        "SEARCH samples USING PRIMARY KEY (gpu_id=? AND ts_ms>? AND ts_ms<?)",
        "SEARCH samples_1m USING PRIMARY KEY (gpu_id=? AND bucket_ms>? AND bucket_ms<?)",
        "SEARCH samples_1h USING PRIMARY KEY (gpu_id=? AND bucket_ms>? AND bucket_ms<?)",
        # the oldest row of a source (auto), and the watermarks: seeks on a key prefix
        "SEARCH samples USING PRIMARY KEY (gpu_id=?)",
        "SEARCH samples_1m USING PRIMARY KEY (gpu_id=?)",
        "SEARCH samples_1h USING PRIMARY KEY (gpu_id=?)",
        "SEARCH rollup_progress USING PRIMARY KEY (gpu_id=?)",
    }
    three_tiers = 0
    with engine.connect() as conn:
        for statement, parameters in executed:
            plan = [r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement,
                                                        parameters)]
            reads = [line for line in plan if line.startswith(("SEARCH", "SCAN"))
                     and line != "SCAN parts"]  # the union, read once to group it
            assert reads and set(reads) <= allowed, (statement, plan)
            three_tiers += len(reads) == 3
    assert three_tiers >= 1  # 1h + 1m + raw in one statement was among them


# -- the endpoint -------------------------------------------------------------------------
def get(app, **params):
    return requests.get(f"{app.url}/api/gpu/metrics/history", params=params, timeout=5)


def test_endpoint_answers_buckets_and_keeps_raw_samples_without_resolution(app) -> None:
    """With resolution/points: buckets, the source and the width; without: the seed's raw
    samples, as before. Buckets from the rollups equal those from raw samples."""
    app.tick(1, times=600)
    RollupJob(app.engine, app.clock).run()
    raw = get(app, gpu_id=1).json()
    assert "samples" in raw and "buckets" not in raw and raw["count"] == 200
    since = str((app.clock.now_ms() - 10 * MINUTE) / 1000)
    body = get(app, gpu_id=1, resolution="1m", points=5, since=since).json()
    assert body["resolution"] == "1m" and body["bucket_seconds"] == 120.0
    assert body["gpu_id"] == 1 and body["points"] == 5 and body["rolled_up_until"]
    assert 5 <= body["count"] == len(body["buckets"]) <= 6
    same = get(app, gpu_id=1, resolution="raw", points=5, since=since).json()
    assert same["resolution"] == "raw" and same["buckets"] == body["buckets"]
    assert {b["state"] for b in body["buckets"]} <= {s.name for s in GPUState}
    last_hour = get(app, gpu_id=1, points=20).json()  # auto over the default hour
    assert last_hour["resolution"] == "1m" and last_hour["bucket_seconds"] == 180.0
    assert sum(b["samples"] for b in last_hour["buckets"]) == 601
    assert last_hour["buckets"][0]["temperature_max"] >= 85  # GPU 1 overheats early on


@pytest.mark.parametrize(("params", "status"), [
    ({"resolution": "5m"}, 422),
    ({"resolution": ""}, 422),
    ({"points": 0}, 422),
    ({"points": 10_001}, 422),
    ({"points": "many"}, 400),
    ({"resolution": "1m", "limit": 10}, 422),
    ({"resolution": "1m", "since": "2026-01-02T00:00:00Z", "until": "2026-01-01"}, 422),
    ({"resolution": "1m", "since": "yesterday"}, 400),
    ({"resolution": "auto", "gpu_id": 42}, 404),
])
def test_endpoint_errors_have_the_one_shape(app, params, status) -> None:
    """Bad resolution or points, limit with buckets, since after until: the error shape."""
    response = get(app, **params)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"} and error["code"] and error["message"]


def test_openapi_documents_both_answers(app) -> None:
    """The 200 answer of the history endpoint is raw samples or buckets."""
    doc = requests.get(f"{app.url}/api/openapi.json", timeout=5).json()
    schemas = doc["components"]["schemas"]
    assert {"History", "HistoryBuckets", "HistoryBucket"} <= set(schemas)
    params = {p["name"] for p in doc["paths"]["/api/gpu/metrics/history"]["get"]["parameters"]}
    assert {"resolution", "points", "since", "until", "limit"} <= params


def test_client_history_with_resolution(app) -> None:
    """Client.history passes resolution and points; a refusal is an ApiError."""
    app.tick(1, times=120)
    client = Client(app.url)
    body = client.history(2, since=(app.clock.now_ms() - 120_000) / 1000, resolution="raw",
                          points=10)
    assert body["resolution"] == "raw" and 10 <= body["count"] <= 11
    assert client.history(2)["count"] == 121  # raw samples, as before
    with pytest.raises(ApiError) as refused:
        client.history(2, resolution="2h")
    assert refused.value.status == 422


# -- the CLI ------------------------------------------------------------------------------
def test_cli_reads_the_database_as_table_csv_and_json(month_db) -> None:
    """``gpuhistory history --db``: the same buckets as the API's document, three ways."""
    engine, month = month_db
    db_path = engine.url.database
    runner = CliRunner()
    args = ["history", "--db", str(db_path), "--host-name", "testhost", "--gpu-id", "0",
            "--since", iso_utc(END - DAY), "--until", iso_utc(END)]
    as_json = runner.invoke(cli, [*args, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)
    assert doc["resolution"] == "1m" and doc["count"] == 480
    assert doc["buckets"] == expected(engine, month, END - DAY, END, 3 * MINUTE)
    as_csv = runner.invoke(cli, [*args, "--format", "csv", "--points", "24"])
    lines = as_csv.output.splitlines()
    assert lines[0].startswith("timestamp,samples,temperature_min") and len(lines) == 25
    assert runner.invoke(cli, [*args, "--resolution", "1h"]).output.count("\n") == 26
    table = runner.invoke(cli, [*args, "--points", "4", "--resolution", "1h"]).output
    assert "source 1h" in table and "buckets of 6 h" in table and "TEMP MAX" in table
    missing = runner.invoke(cli, [*args, "--gpu-id", "5"])
    assert missing.exit_code == 3 and "gpu_not_found" in missing.output
    backwards = runner.invoke(cli, ["history", "--db", str(db_path), "--since",
                                    iso_utc(END), "--until", iso_utc(END - DAY)])
    assert backwards.exit_code == 2


def test_cli_asks_a_server_with_url(app) -> None:
    """``gpuhistory history --url``: the server's document; an unknown GPU exits 3."""
    app.tick(1, times=120)
    runner = CliRunner()
    out = runner.invoke(cli, ["history", "--url", app.url, "--gpu-id", "1", "--points", "4",
                              "--resolution", "raw", "--format", "json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["resolution"] == "raw"
    assert runner.invoke(cli, ["history", "--url", app.url, "--gpu-id", "9"]).exit_code == 3


def test_cli_constants_agree_with_the_analytics_module() -> None:
    """The CLI keeps its own copies (to start without SQLAlchemy): they must agree."""
    for name in ("RESOLUTIONS", "DEFAULT_POINTS", "MAX_POINTS", "DEFAULT_RANGE_MS"):
        assert getattr(history_cli, name) == getattr(history_module, name), name
