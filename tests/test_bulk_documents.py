"""Answers built in bulk (gpuhistory/analytics/bulk.py, api/fastjson.py) say exactly what
the per-row documents said: GPUMetrics samples, CSV and history buckets are compared with
the per-object path (``GPUMetrics.from_reading(reading_from_row(...))``, the csv module,
the old ``bucket_doc`` kept here as the oracle) over rows with every field missing in turn,
on SQLite and PostgreSQL; the orjson answers are what ``jsonify`` wrote; the work per row
is a bounded number of Python calls (no object per row); request schemas are shared
read-only, not copied per request."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
import requests
import sqlalchemy as sa
from flask import Flask, jsonify

from gpuhistory.analytics import bulk
from gpuhistory.analytics import history as history_module
from gpuhistory.analytics import postmortem as postmortem_module
from gpuhistory.analytics.incidents import IncidentDetector
from gpuhistory.analytics.rollups import RollupJob
from gpuhistory.api import schemas
from gpuhistory.api.fastjson import dumps, json_response
from gpuhistory.api.validation import StrictJSONProvider
from gpuhistory.clock import FakeClock, iso_utc
from gpuhistory.domain.metrics import GPUMetrics
from gpuhistory.domain.reading import GpuIdentity, clock_event_reason_names
from gpuhistory.domain.states import GPUState
from gpuhistory.storage.log import LogStore, TickRecord
from gpuhistory.storage.queries import GpuRow, gpu_row, reading_from_row
from gpuhistory.storage.schema import gpus, samples

pytestmark = pytest.mark.postgres

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
START = T0 - 1_800_000  # samples ~8 s apart from half an hour before midnight, new year's
NULLABLE = ("temperature_c", "memory_temperature_c", "memory_used_mib", "utilization_pct",
            "power_dw", "sm_clock_mhz", "mem_clock_mhz", "clock_event_reasons", "pstate",
            "fan_pct", "memory_reserved_mib")
MASKS = (None, 0, 1, 0x4, 0x4 | 0x40, 0x200, 0x1FF | 0x400, 0x20)
CARDS = (  # (uuid, name, memory_total_mib, power_limit_w): the facts every row shares
    ("GPU-plain", "NVIDIA H100 80GB HBM3", 81559, 700.0),
    ("GPU-odd,\"quoted\"", "Ünïcode, \"name\"", 0, 312.5),
    ("GPU-bare", None, None, None),
)


def sample(gpu_id: int, i: int) -> dict[str, Any]:
    """Sample ``i``: each nullable field missing in turn, every state, odd masks and power,
    used memory beyond the total now and then, seconds crossing minutes, hours and days."""
    row: dict[str, Any] = {
        "gpu_id": gpu_id, "ts_ms": START + i * 7_919, "state": i % 5, "temperature_c": 30 + i % 70,
        "memory_temperature_c": 28 + i % 60, "memory_used_mib": (i * 7_777) % 90_000,
        "utilization_pct": i % 101, "power_dw": (0, 1, 6905, 7004, 12345)[i % 5] + i,
        "sm_clock_mhz": 345 + i % 1500, "mem_clock_mhz": 2619, "pstate": i % 16,
        "clock_event_reasons": MASKS[i % len(MASKS)], "fan_pct": i % 100,
        "memory_reserved_mib": (None, 0, 517)[i % 3]}
    missing = i % (len(NULLABLE) + 1)  # one field missing in turn, then none
    if missing < len(NULLABLE):
        row[NULLABLE[missing]] = None
    if i % 13 == 0:  # an unreadable card: every measurement missing
        row.update({name: None for name in NULLABLE}, state=int(GPUState.UNAVAILABLE))
    return row


def cards(store: LogStore, n: int = 300) -> list[GpuRow]:
    """The three CARDS, each with ``n`` varied samples."""
    rows, ids = [], []
    for k, (uuid, name, total, limit) in enumerate(CARDS):
        gpu = store.gpu_id(GpuIdentity(index=k, uuid=uuid, name=name, memory_total_mib=total,
                                       power_limit_w=limit), "sim", T0)
        ids.append(gpu)
        rows += [sample(gpu, i) for i in range(n)]
    store.write(TickRecord(samples=rows))
    with store.engine.connect() as conn:
        return [gpu_row(conn.execute(sa.select(gpus).where(gpus.c.id == i)).one())
                for i in ids]


def bulk_rows(engine: sa.Engine, gpu: GpuRow) -> Sequence[Any]:
    with engine.connect() as conn:
        return conn.execute(bulk.sample_statement(gpu.id, None, None)).all()


def reference_docs(engine: sa.Engine, gpu: GpuRow) -> list[dict[str, Any]]:
    """The per-object path: a Reading and a GPUMetrics per stored row."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(samples).where(samples.c.gpu_id == gpu.id)
                            .order_by(samples.c.ts_ms)).all()
    return [GPUMetrics.from_reading(reading_from_row(gpu, r), GPUState(r.state), r.ts_ms,
                                    gpu.backend).to_dict() for r in rows]


def standard(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_sample_json_is_the_text_json_dumps_wrote_for_each_gpumetrics(engine) -> None:
    """Every card (an odd name and uuid, a total of 0, no facts at all) and every sample:
    the bulk JSON is character for character ``json.dumps`` of the GPUMetrics documents."""
    for gpu in cards(LogStore(engine, "bulkhost")):
        want = reference_docs(engine, gpu)
        text = bulk.metrics_json(gpu, bulk_rows(engine, gpu))
        assert text == standard(want)
        assert bulk.metrics_docs(gpu, bulk_rows(engine, gpu)) == want
    assert bulk.metrics_json(gpu, []) == "[]"


def test_sample_csv_is_what_the_csv_module_wrote(engine) -> None:
    """samples.csv written from the rows is byte for byte the csv module's text of the
    same documents (quoting of the odd uuid and name included), in 500-row pieces."""
    for gpu in cards(LogStore(engine, "bulkhost"), n=1_100):
        pieces = list(bulk.metrics_csv(gpu, bulk_rows(engine, gpu)))
        want = "".join(postmortem_module.metrics_csv(reference_docs(engine, gpu)))
        assert "".join(pieces) == want
        assert len(pieces) == 1 + 3  # the header, then 500 + 500 + 100 rows


def old_bucket_doc(row: Sequence[Any]) -> dict[str, Any]:
    """The per-bucket dict the history answer was built from, before bulk.buckets_json."""
    (bucket, n, temp_n, temp_min, temp_max, temp_sum, mem_max, util_n, util_sum, power_n,
     power_sum, power_max, reasons, state_max) = row
    mask = None if reasons is None else int(reasons)
    return {
        "timestamp": iso_utc(int(bucket)),
        "samples": int(n),
        "temperature_min": temp_min,
        "temperature_max": temp_max,
        "temperature_avg": round(float(temp_sum) / int(temp_n), 2) if temp_n else None,
        "memory_used_max_mb": mem_max,
        "load_avg": round(float(util_sum) / int(util_n), 2) if util_n else None,
        "power_avg_watts": (round(float(power_sum) / int(power_n) / 10, 2) if power_n
                            else None),
        "power_max_watts": None if power_max is None else power_max / 10,
        "clock_event_reasons": clock_event_reason_names(mask),
        "clock_event_reasons_mask": mask,
        "state": GPUState(int(state_max)).name,
    }


@pytest.mark.parametrize("resolution", ["raw", "1m", "auto"])
def test_history_buckets_are_the_old_bucket_documents(engine, resolution: str) -> None:
    """History buckets from raw samples and from the 1-minute rollups (with empty and
    all-NULL buckets): the bulk text is ``json.dumps`` of the old per-bucket dicts."""
    store = LogStore(engine, "bulkhost")
    gpu = cards(store, n=900)[0]
    until = START + 900 * 7_919
    RollupJob(engine, FakeClock(until + 3_600_000)).run()
    with engine.connect() as conn:
        for points in (7, 113, 900):
            _plan, _marks, rows = history_module._history_rows(
                conn, gpu.id, START - 60_000, until, resolution, points)
            assert rows, (resolution, points)
            text = bulk.buckets_json(rows)
            assert text == standard([old_bucket_doc(r) for r in rows])
            _, _, docs = history_module.history_buckets(conn, gpu.id, START - 60_000, until,
                                                        resolution, points)
            assert docs == json.loads(text)


def python_calls(fn: Callable[..., object], *args: Any) -> int:
    """How many Python functions ``fn(*args)`` calls (C functions not counted)."""
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(profile)
    try:
        fn(*args)
    finally:
        sys.setprofile(None)
    return calls


def test_bulk_answers_make_at_most_one_python_call_per_row(engine) -> None:
    """No Reading, GPUMetrics, dict or per-value helper per row: going from 300 to 900
    rows adds at most one Python call per row (its timestamp) and two per new minute
    to the samples JSON, the CSV, the buckets and the post-mortem's
    figures."""
    store = LogStore(engine, "bulkhost")
    gpu = cards(store, n=900)[0]
    rows = bulk_rows(engine, gpu)
    small, large = rows[:300], rows
    with engine.connect() as conn:
        buckets = {n: history_module._history_rows(conn, gpu.id, START, START + 900 * 7_919,
                                                   "raw", n)[2] for n in (300, 900)}
    cases: dict[str, Callable[[Sequence[Any]], object]] = {
        "json": lambda r: bulk.metrics_json(gpu, r),
        "csv": lambda r: list(bulk.metrics_csv(gpu, r)),
        "figures": lambda r: postmortem_module._during(r, START, START + 10**9, 10_000),
    }
    minutes = len({r[0] // 60_000 for r in large}) - len({r[0] // 60_000 for r in small})
    for name, build in cases.items():
        grown = python_calls(build, large) - python_calls(build, small)
        assert grown <= len(large) - len(small) + 2 * minutes, (name, grown)
    grown = (python_calls(bulk.buckets_json, buckets[900])
             - python_calls(bulk.buckets_json, buckets[300]))
    more = len(buckets[900]) - len(buckets[300])
    assert more > 300
    assert grown <= more + 2 * minutes, grown


def test_postmortem_figures_equal_a_walk_over_every_sample(engine) -> None:
    """The one-pass figures (reason bits with samples and seconds, memory, power) of a
    window equal a plain walk over its samples, each lasting until the next (at most
    the gap)."""
    gpu = cards(LogStore(engine, "bulkhost"), n=600)[0]
    rows = bulk_rows(engine, gpu)
    start, stop, gap = rows[40][0], rows[550][0] + 1, 5_000
    got = postmortem_module._during(rows, start, stop, gap)
    seen: dict[int, list[int]] = {}
    used, power = [], []
    for i, r in enumerate(rows):
        if not start <= r.ts_ms < stop:
            continue
        following = rows[i + 1].ts_ms if i + 1 < len(rows) else r.ts_ms
        for bit in (1 << b for b in range(12)):
            if (r.clock_event_reasons or 0) & bit:
                seen.setdefault(bit, [0, 0])
                seen[bit][0] += 1
                seen[bit][1] += min(following - r.ts_ms, gap)
        if r.memory_used_mib is not None:
            used.append(r.memory_used_mib)
        if r.power_dw is not None:
            power.append(r.power_dw)
    assert [(e["mask"], e["samples"], e["seconds"]) for e in got["reasons"]] == [
        (bit, n, round(ms / 1000, 3)) for bit, (n, ms) in sorted(seen.items())]
    assert {e["name"] for e in got["reasons"]} >= {"SwPowerCap", "0x200", "0x400"}
    assert (got["used"], got["power"]) == (used, power)


# -- the encoder ----------------------------------------------------------------------------

def flask_app() -> Flask:
    app = Flask(__name__)
    app.json = StrictJSONProvider(app)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    return app


def test_json_response_writes_what_jsonify_wrote() -> None:
    """Keys in insertion order, compact, a final newline, application/json: the bytes of
    jsonify for an ASCII document; the same parsed value with non-ASCII text (UTF-8, not
    escapes); a Fragment embedded as is; Decimal, dates and big ints as Flask wrote them."""
    doc = {"z": 1, "a": [1.5, 0.1 + 0.2, None, True, "x"], "m": {"b": 2, "a": -3.25e-3},
           "when": 1_767_225_600_123, "nested": [{"k": [], "e": {}}]}
    with flask_app().app_context():
        ours, theirs = json_response(doc), jsonify(doc)
        assert ours.get_data() == theirs.get_data()
        assert ours.mimetype == theirs.mimetype == "application/json"
        assert ours.get_data().endswith(b"\n")
        text = {"summary": "above 85 °C", "n": 2}
        assert json.loads(json_response(text).get_data()) == json.loads(
            jsonify(text).get_data())
        fragment = {"count": 2, "samples": orjson.Fragment('[{"a":1},{"b":null}]')}
        assert json.loads(dumps(fragment)) == {"count": 2, "samples": [{"a": 1}, {"b": None}]}
        odd = {"d": Decimal("1.25"), "t": datetime(2026, 1, 1, tzinfo=UTC), 3: "int key"}
        assert dumps(odd) == jsonify(odd).get_data()
        big = {"big": 2**70, "f": orjson.Fragment("[1]")}  # beyond orjson: the standard path
        assert dumps(big) == jsonify({"big": 2**70, "f": [1]}).get_data()
        with pytest.raises(TypeError):
            dumps({"x": object()})


def test_a_non_finite_float_is_written_null_not_nan() -> None:
    """The documented difference: NaN/Infinity (never stored: the log refuses them) come
    out as null, which every JSON parser reads, where the standard encoder wrote NaN."""
    with flask_app().app_context():
        assert dumps({"x": float("nan"), "y": float("inf")}) == b'{"x":null,"y":null}\n'
        assert b"NaN" in jsonify({"x": float("nan")}).get_data()


def test_answers_over_http_equal_the_per_row_documents(app) -> None:
    """Through the real API: the raw history and a post-mortem's samples are the
    GPUMetrics documents of the stored rows, and samples.csv their CSV."""
    app.tick(1, times=220)
    IncidentDetector(app.engine, app.clock, app.config).run()
    response = requests.get(f"{app.url}/api/gpu/metrics/history",
                            params={"gpu_id": 1, "limit": 150}, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"] == (
        "application/json")
    doc = response.json()
    with app.engine.connect() as conn:
        gpu = gpu_row(conn.execute(sa.select(gpus).where(gpus.c.gpu_index == 1)).one())
    want = reference_docs(app.engine, gpu)
    assert doc["count"] == 150 and doc["samples"] == want[-150:]
    [summary] = requests.get(f"{app.url}/api/gpu/incidents", params={"gpu_id": 1},
                             timeout=10).json()["incidents"]
    post = requests.get(f"{app.url}/api/gpu/incidents/{summary['id']}", timeout=10).json()
    assert post["samples"] == want[-post["samples_total"]:]
    assert list(post)[:3] == ["id", "gpu_id", "uuid"] and list(post)[-1] == "samples"
    csv_text = requests.get(f"{app.url}/api/gpu/incidents/{summary['id']}/samples.csv",
                            timeout=10).text
    assert csv_text == "".join(postmortem_module.metrics_csv(want[-post["samples_total"]:]))
    buckets = requests.get(f"{app.url}/api/gpu/metrics/history",
                           params={"gpu_id": 1, "resolution": "raw", "points": 50},
                           timeout=10).json()
    assert buckets["count"] == len(buckets["buckets"]) > 0
    assert sum(b["samples"] for b in buckets["buckets"]) == len(want)


# -- request schemas ------------------------------------------------------------------------

def test_request_schemas_are_shared_read_only_and_copies_are_free_to_change() -> None:
    """The schema flask-openapi3 reads on every request is built once and shared, and
    cannot be changed by accident; a schema asked for with arguments (the OpenAPI
    document) is a fresh copy each time."""
    shared = schemas.HistoryQuery.model_json_schema()
    assert schemas.HistoryQuery.model_json_schema() is shared
    assert shared["properties"]["since"] and shared["additionalProperties"] is False
    with pytest.raises(TypeError):
        shared["properties"]["since"] = {}
    with pytest.raises(TypeError):
        shared.pop("properties")
    with pytest.raises(AttributeError):
        shared["properties"]["gpu_id"]["anyOf"].append({})  # a tuple
    mutable = copy.deepcopy(shared)
    mutable["properties"]["gpu_id"]["anyOf"].append({})
    mutable["properties"] = {}
    assert shared["properties"] and mutable == {**json.loads(json.dumps(shared)),
                                                "properties": {}}
    one = schemas.HistoryQuery.model_json_schema(mode="validation")
    two = schemas.HistoryQuery.model_json_schema(mode="validation")
    assert one == two and one is not two
    one["properties"].clear()
    assert two["properties"] and schemas.HistoryQuery.model_json_schema()["properties"]
    assert json.loads(json.dumps(shared)) == json.loads(json.dumps(two))


def test_a_bucket_value_of_another_type_is_still_a_number() -> None:
    """A min or max that a driver returns as Decimal or float (an integer column's never
    is) is written as a JSON number of the same value, never as text."""
    row = (T0, Decimal(3), 2, Decimal("41"), 42.5, 83, Decimal("1000"), 1, 50, 1, 7000,
           7000, 4, 1)
    [doc] = json.loads(bulk.buckets_json([row]))
    assert (doc["temperature_min"], doc["temperature_max"], doc["memory_used_max_mb"]) == (
        41.0, 42.5, 1000.0)
    assert doc["samples"] == 3 and doc["power_max_watts"] == 700.0
