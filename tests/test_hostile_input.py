"""Hostile input to the HTTP API: every case is a clear 4xx in the one error shape, never
echoes the hostile value, and changes nothing in the database.

Wrong types, negative and huge numbers, NaN and Infinity, unicode, control characters and
SQL in ids, deeply nested and oversized bodies, bad ``since``/``until``, unknown GPUs and
leases, wrong methods and paths. The app runs over real HTTP with an API token (sent with
every request, so the bodies get past the auth check), on SQLite and, with
GPUHISTORY_TEST_POSTGRES set, on PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from gpuhistory.api.app import MAX_BODY_BYTES
from gpuhistory.clock import FakeClock
from gpuhistory.storage.engine import make_engine, upgrade
from tests.conftest import App, _postgres_url

pytestmark = pytest.mark.slow

TOKEN = "hostile-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SQL = "x'; DROP TABLE leases; --"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hostile_engine(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """A migrated database for this module: a SQLite file, or a fresh PostgreSQL database
    (skipped unless GPUHISTORY_TEST_POSTGRES names a server)."""
    if request.param == "sqlite":
        engine = make_engine(tmp_path_factory.mktemp("hostile") / "hostile.db")
        upgrade(engine)
        yield engine
        engine.dispose()
        return
    url = _postgres_url()
    name = f"gpuhistory_hostile_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine = make_engine(sa.make_url(url).set(database=name).render_as_string(False))
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


@pytest.fixture(scope="module")
def hostile_app(hostile_engine: sa.Engine) -> Iterator[App]:
    """The API with a token, 4 simulated GPUs, a minute of samples and one lease."""
    application = App(hostile_engine, FakeClock(), token=TOKEN)
    application.tick(1.0, times=60)
    granted = requests.post(f"{application.url}/api/gpu/memory/allocate", headers=AUTH,
                            json={"allocation_id": "held", "memory_mb": 1024,
                                  "owner": "alice", "ttl_seconds": 86_400}, timeout=10)
    assert granted.status_code == 201, granted.text
    application.held_token = granted.json()["lease_token"]  # type: ignore[attr-defined]
    yield application
    application.close()


_COUNTS: dict[str, sa.TextClause] = {}


def snapshot(engine: sa.Engine) -> dict[str, Any]:
    """Every table's row count (one query), and the leases in full."""
    key = engine.url.render_as_string()
    if key not in _COUNTS:
        tables = sorted(sa.inspect(engine).get_table_names())
        _COUNTS[key] = sa.text("SELECT " + ", ".join(
            f'(SELECT count(*) FROM "{t}") AS "{t}"' for t in tables))
    with engine.connect() as conn:
        counts = conn.execute(_COUNTS[key]).one()._asdict()
        leases = conn.execute(sa.text("SELECT * FROM leases ORDER BY id")).all()
    return {"counts": counts, "leases": [tuple(r) for r in leases]}


def send(app: App, method: str, path: str, query: Any = None, body: Any = None,
         headers: dict[str, str] | None = None) -> requests.Response:
    """``body``: bytes sent as they are (as JSON), anything else encoded as JSON."""
    kwargs: dict[str, Any] = {"params": query, "timeout": 30,
                              "headers": {**AUTH, **(headers or {})}}
    if isinstance(body, bytes) or (body is not None and not isinstance(body, (dict, list))):
        kwargs["data"] = body if isinstance(body, bytes) else json.dumps(body).encode()
        kwargs["headers"].setdefault("Content-Type", "application/json")
    elif body is not None:
        kwargs["json"] = body
    return requests.request(method, f"{app.url}{path}", **kwargs)


def assert_error(response: requests.Response, status: int, code: str | None) -> dict:
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    if code is not None:
        assert error["code"] == code, error
    return error


def nested(depth: int, inner: str = "1") -> bytes:
    return ('{"a":' * depth + inner + "}" * depth).encode()


ALLOC = "/api/gpu/memory/allocate"
RENEW = "/api/gpu/memory/renew"
FREE = "/api/gpu/memory/deallocate"
CONFIG = "/api/gpu/config"
HISTORY = "/api/gpu/metrics/history"
TREND = "/api/gpu/temperature/trend"


def alloc(**fields: Any) -> dict[str, Any]:
    return {"allocation_id": "hostile", "memory_mb": 1024, **fields}


# (id, method, path, query, body, status, code, hostile text that must not be echoed)
CASES: list[tuple[str, str, str, Any, Any, int, str | None, str | None]] = [
    # -- wrong types --------------------------------------------------------------------
    ("query int as word", "GET", "/api/gpu/status", {"gpu_id": "zero"}, None, 400,
     "invalid_argument", None),
    ("query int as float", "GET", "/api/gpu/status", {"gpu_id": "1.5"}, None, 400,
     "invalid_argument", None),
    ("query int as hex", "GET", "/api/gpu/metrics", {"gpu_id": "0x1"}, None, 400,
     "invalid_argument", None),
    ("query limit as word", "GET", HISTORY, {"limit": "ten"}, None, 400, "invalid_argument",
     None),
    ("query points as exponent", "GET", HISTORY, {"points": "1e3"}, None, 400,
     "invalid_argument", None),
    ("query duration as word", "GET", TREND, {"duration_minutes": "five"}, None, 400,
     "invalid_argument", None),
    ("query since_id as float", "GET", "/api/gpu/events", {"since_id": "1.5"}, None, 400,
     "invalid_argument", None),
    ("query unknown argument", "GET", "/api/gpu/status", {"gpu": 0}, None, 400,
     "invalid_argument", None),
    ("body memory as string", "POST", ALLOC, None, alloc(memory_mb="1024"), 400,
     "invalid_argument", None),
    ("body memory as bool", "POST", ALLOC, None, alloc(memory_mb=True), 400,
     "invalid_argument", None),
    ("body memory as float", "POST", ALLOC, None, alloc(memory_mb=1.5), 400,
     "invalid_argument", None),
    ("body memory as null", "POST", ALLOC, None, alloc(memory_mb=None), 400,
     "invalid_argument", None),
    ("body memory as list", "POST", ALLOC, None, alloc(memory_mb=[1024]), 400,
     "invalid_argument", None),
    ("body gpu as string", "POST", ALLOC, None, alloc(gpu_id="0"), 400, "invalid_argument",
     None),
    ("body ttl as string", "POST", ALLOC, None, alloc(ttl_seconds="60"), 400,
     "invalid_argument", None),
    ("body ttl as bool", "POST", ALLOC, None, alloc(ttl_seconds=True), 400,
     "invalid_argument", None),
    ("body id as number", "POST", ALLOC, None, alloc(allocation_id=42), 400,
     "invalid_argument", None),
    ("body id as object", "POST", ALLOC, None, alloc(allocation_id={"$ne": ""}), 400,
     "invalid_argument", None),
    ("body owner as object", "POST", ALLOC, None, alloc(owner={"a": 1}), 400,
     "invalid_argument", None),
    ("body missing field", "POST", ALLOC, None, {"allocation_id": "hostile"}, 400,
     "invalid_argument", None),
    ("body unknown field", "POST", ALLOC, None, alloc(admin=True), 400, "invalid_argument",
     None),
    ("body is a list", "POST", ALLOC, None, [alloc()], 400, None, None),
    ("body is a string", "POST", ALLOC, None, "hostile", 400, None, None),
    ("body is a number", "POST", ALLOC, None, 42, 400, None, None),
    ("body is null", "POST", ALLOC, None, b"null", 400, None, None),
    ("body is empty", "POST", ALLOC, None, b"", 400, "missing_body", None),
    ("body is not JSON", "POST", ALLOC, None, b"{allocation_id: hostile}", 400,
     "malformed_json", None),
    ("body is truncated JSON", "POST", ALLOC, None, b'{"allocation_id": "hostile", "mem',
     400, "malformed_json", None),
    ("body is not UTF-8", "POST", ALLOC, None, b'{"allocation_id": "\xff\xfe"}', 400,
     "malformed_json", None),
    ("body is binary", "POST", ALLOC, None, bytes(range(256)), 400, "malformed_json", None),
    ("body JSON as text/plain", "POST", ALLOC, None, json.dumps(alloc()).encode(), 400,
     "malformed_json", None),  # (headers below)
    ("renew token as number", "POST", RENEW, None,
     {"allocation_id": "held", "lease_token": 12345}, 400, "invalid_argument", None),
    ("config int as float", "PUT", CONFIG, None, {"history_size": 1.5}, 400,
     "invalid_argument", None),
    ("config number as string", "PUT", CONFIG, None, {"temp_throttle": "80"}, 400,
     "invalid_argument", None),
    ("config number as bool", "PUT", CONFIG, None, {"history_size": True}, 400,
     "invalid_argument", None),
    ("config unknown key", "PUT", CONFIG, None, {"temp_throtle": 80}, 400,
     "invalid_argument", None),
    ("config empty", "PUT", CONFIG, None, {}, 400, "invalid_argument", None),
    # -- negative and huge numbers ------------------------------------------------------
    ("negative gpu", "GET", "/api/gpu/status", {"gpu_id": -1}, None, 422,
     "validation_failed", None),
    ("gpu beyond the range", "GET", "/api/gpu/throttle/status", {"gpu_id": 1024}, None, 422,
     "validation_failed", None),
    ("gpu of 40 digits", "GET", "/api/gpu/status", {"gpu_id": "9" * 40}, None, 422,
     "validation_failed", None),
    ("gpu of 5000 digits", "GET", "/api/gpu/status", {"gpu_id": "9" * 5000}, None, 422,
     "validation_failed", None),
    ("limit 0", "GET", HISTORY, {"limit": 0}, None, 422, "validation_failed", None),
    ("limit huge", "GET", HISTORY, {"limit": 10**12}, None, 422, "validation_failed", None),
    ("points 0", "GET", HISTORY, {"points": 0}, None, 422, "validation_failed", None),
    ("points huge", "GET", HISTORY, {"points": 10**6}, None, 422, "validation_failed", None),
    ("duration negative", "GET", TREND, {"duration_minutes": -5}, None, 422,
     "validation_failed", None),
    ("duration zero", "GET", TREND, {"duration_minutes": 0}, None, 422, "validation_failed",
     None),
    ("duration huge", "GET", TREND, {"duration_minutes": "1e308"}, None, 422,
     "validation_failed", None),
    ("since_id negative", "GET", "/api/gpu/events", {"since_id": -1}, None, 422,
     "validation_failed", None),
    ("since_id beyond 64 bits", "GET", "/api/gpu/events", {"since_id": 2**64}, None, 422,
     "validation_failed", None),
    ("leases limit negative", "GET", "/api/gpu/memory/leases", {"limit": -1}, None, 422,
     "validation_failed", None),
    ("incident id 0", "GET", "/api/gpu/incidents/0", None, None, 422, "validation_failed",
     None),
    ("incident id of 30 digits", "GET", "/api/gpu/incidents/" + "9" * 30, None, None, 422,
     "validation_failed", None),
    ("incident max_samples negative", "GET", "/api/gpu/incidents/1", {"max_samples": -1},
     None, 422, "validation_failed", None),
    ("memory zero", "POST", ALLOC, None, alloc(memory_mb=0), 422, "validation_failed", None),
    ("memory negative", "POST", ALLOC, None, alloc(memory_mb=-5), 422, "validation_failed",
     None),
    ("memory beyond any card", "POST", ALLOC, None, alloc(memory_mb=10**12), 422,
     "validation_failed", None),
    ("memory beyond 64 bits", "POST", ALLOC, None, alloc(memory_mb=2**70), 422,
     "validation_failed", None),
    ("memory of 5000 digits", "POST", ALLOC, None,
     b'{"allocation_id": "hostile", "memory_mb": ' + b"9" * 5000 + b"}", 400,
     "malformed_json", None),
    ("memory over capacity", "POST", ALLOC, None, alloc(memory_mb=9_000_000), 409,
     "over_capacity", None),
    ("ttl zero", "POST", ALLOC, None, alloc(ttl_seconds=0), 422, "validation_failed", None),
    ("ttl negative", "POST", ALLOC, None, alloc(ttl_seconds=-60), 422, "validation_failed",
     None),
    ("ttl over 30 days", "POST", ALLOC, None, alloc(ttl_seconds=10**9), 422,
     "validation_failed", None),
    ("renew ttl negative", "POST", RENEW, None,
     {"allocation_id": "held", "lease_token": "t", "ttl_seconds": -1}, 422,
     "validation_failed", None),
    ("config interval zero", "PUT", CONFIG, None, {"monitor_interval": 0}, 422,
     "validation_failed", None),
    ("config interval huge", "PUT", CONFIG, None, {"monitor_interval": 1e308}, 422,
     "validation_failed", None),
    ("config reserve negative", "PUT", CONFIG, None, {"memory_reserve_mb": -1}, 422,
     "validation_failed", None),
    ("config history beyond 64 bits", "PUT", CONFIG, None, {"history_size": 2**70}, 422,
     "validation_failed", None),
    # -- NaN and Infinity ---------------------------------------------------------------
    ("body NaN literal", "POST", ALLOC, None,
     b'{"allocation_id": "hostile", "memory_mb": NaN}', 400, "malformed_json", None),
    ("body Infinity literal", "POST", ALLOC, None,
     b'{"allocation_id": "hostile", "memory_mb": 1, "ttl_seconds": Infinity}', 400,
     "malformed_json", None),
    ("body -Infinity literal", "PUT", CONFIG, None, b'{"hysteresis_c": -Infinity}', 400,
     "malformed_json", None),
    ("config NaN literal", "PUT", CONFIG, None, b'{"temp_throttle": NaN}', 400,
     "malformed_json", None),
    ("body 1e999 ttl", "POST", ALLOC, None,
     b'{"allocation_id": "hostile", "memory_mb": 1, "ttl_seconds": 1e999}', 422,
     "validation_failed", None),
    ("config 1e999", "PUT", CONFIG, None, b'{"hysteresis_c": 1e999}', 422,
     "validation_failed", None),
    ("query duration nan", "GET", TREND, {"duration_minutes": "nan"}, None, 422,
     "validation_failed", None),
    ("query duration inf", "GET", TREND, {"duration_minutes": "inf"}, None, 422,
     "validation_failed", None),
    ("query at nan", "GET", "/api/gpu/status", {"at": "nan"}, None, 400, "invalid_argument",
     None),
    ("query at infinity", "GET", "/api/gpu/status/all", {"at": "Infinity"}, None, 400,
     "invalid_argument", None),
    ("query since 1e999", "GET", HISTORY, {"since": "1e999"}, None, 400, "invalid_argument",
     None),
    # -- unicode, control characters and SQL in ids -------------------------------------
    ("id with SQL", "POST", ALLOC, None, alloc(allocation_id=SQL), 422, "validation_failed",
     SQL),
    ("id with NUL", "POST", ALLOC, None, alloc(allocation_id="a\x00b"), 422,
     "validation_failed", None),
    ("id with newline", "POST", ALLOC, None, alloc(allocation_id="a\nb"), 422,
     "validation_failed", None),
    ("id with escape", "POST", ALLOC, None, alloc(allocation_id="a\x1b[31mb"), 422,
     "validation_failed", None),
    ("id with accent", "POST", ALLOC, None, alloc(allocation_id="café"), 422,
     "validation_failed", "café"),
    ("id with emoji", "POST", ALLOC, None, alloc(allocation_id="job💥"), 422,
     "validation_failed", "💥"),
    ("id with bidi override", "POST", ALLOC, None, alloc(allocation_id="job\u202egpj"), 422,
     "validation_failed", None),
    ("id with space", "POST", ALLOC, None, alloc(allocation_id="two words"), 422,
     "validation_failed", None),
    ("id empty", "POST", ALLOC, None, alloc(allocation_id=""), 422, "validation_failed",
     None),
    ("id starting with a dot", "POST", ALLOC, None, alloc(allocation_id="../../etc/passwd"),
     422, "validation_failed", "../../etc/passwd"),
    ("id of 129 characters", "POST", ALLOC, None, alloc(allocation_id="a" * 129), 422,
     "validation_failed", None),
    ("id with a lone surrogate", "POST", ALLOC, None,
     b'{"allocation_id": "\\ud800", "memory_mb": 1}', 400, "invalid_argument", None),
    ("owner with NUL", "POST", ALLOC, None, alloc(owner="alice\x00"), 422,
     "validation_failed", None),
    ("owner with escape", "POST", ALLOC, None, alloc(owner="\x1b]0;pwned\x07"), 422,
     "validation_failed", None),
    ("owner with a lone surrogate", "POST", ALLOC, None,
     b'{"allocation_id": "hostile", "memory_mb": 1, "owner": "\\udfff"}', 400,
     "invalid_argument", None),
    ("owner of 129 characters", "POST", ALLOC, None, alloc(owner="o" * 129), 422,
     "validation_failed", None),
    ("renew id with SQL", "POST", RENEW, None,
     {"allocation_id": SQL, "lease_token": "t"}, 422, "validation_failed", SQL),
    ("release id with SQL", "POST", FREE, None,
     {"allocation_id": SQL, "lease_token": "t"}, 422, "validation_failed", SQL),
    ("release token of 129 characters", "POST", FREE, None,
     {"allocation_id": "held", "lease_token": "t" * 129}, 422, "validation_failed", None),
    ("event kind with SQL", "GET", "/api/gpu/events", {"kind": "x' OR 1=1 --"}, None, 422,
     "validation_failed", "OR 1=1"),
    ("event kind unicode", "GET", "/api/gpu/events", {"kind": "ünïcode"}, None, 422,
     "validation_failed", None),
    ("lease status with SQL", "GET", "/api/gpu/memory/leases",
     {"status": "active' OR '1'='1"}, None, 422, "validation_failed", "OR '1'='1"),
    ("lease owner with control", "GET", "/api/gpu/memory/leases", {"owner": "a\x07b"}, None,
     422, "validation_failed", None),
    ("lease owner of 10000 characters", "GET", "/api/gpu/memory/leases",
     {"owner": "o" * 10_000}, None, 422, "validation_failed", None),
    ("incident severity with SQL", "GET", "/api/gpu/incidents", {"severity": SQL}, None, 422,
     "validation_failed", SQL),
    ("history resolution unknown", "GET", HISTORY, {"resolution": "1s"}, None, 422,
     "validation_failed", None),
    # -- deeply nested and oversized bodies ---------------------------------------------
    ("body nested 20000 arrays", "POST", ALLOC, None, b"[" * 20_000 + b"]" * 20_000, 400,
     "malformed_json", None),
    ("body nested 5000 objects", "POST", ALLOC, None, nested(5_000), 400, "malformed_json",
     None),
    ("config nested 5000 objects", "PUT", CONFIG, None, nested(5_000), 400,
     "malformed_json", None),
    ("field nested 500 deep", "POST", ALLOC, None,
     b'{"allocation_id": "hostile", "memory_mb": 1, "owner": ' + b"[" * 500 + b"]" * 500
     + b"}", 400, "invalid_argument", None),
    ("body one byte over 64 KiB", "POST", ALLOC, None,
     b'{"allocation_id": "hostile", "memory_mb": 1, "owner": "'
     + b"o" * (MAX_BODY_BYTES - 51) + b'"}', 413, "request_entity_too_large", None),
    ("config body of 1 MiB", "PUT", CONFIG, None, b" " * (1 << 20), 413,
     "request_entity_too_large", None),
    ("body of 2000 unknown fields", "POST", ALLOC, None,
     {**alloc(), **{f"k{i}": i for i in range(2000)}}, 400, "invalid_argument", None),
    # -- bad since / until --------------------------------------------------------------
    ("since a word", "GET", HISTORY, {"since": "yesterday"}, None, 400, "invalid_argument",
     None),
    ("since month 13", "GET", HISTORY, {"since": "2026-13-01"}, None, 400,
     "invalid_argument", None),
    ("since hour 25", "GET", HISTORY, {"since": "2026-11-26T25:00:00Z"}, None, 400,
     "invalid_argument", None),
    ("since with SQL", "GET", HISTORY, {"since": SQL}, None, 400, "invalid_argument", SQL),
    ("since after until", "GET", HISTORY,
     {"since": "2026-01-01T00:01:00Z", "until": "2026-01-01T00:00:00Z"}, None, 422,
     "validation_failed", None),
    ("since after until, buckets", "GET", HISTORY,
     {"since": "1767225660", "until": "1767225600", "points": 10}, None, 422,
     "validation_failed", None),
    ("since before 1970", "GET", HISTORY, {"since": "0001-01-01T00:00:00Z"}, None, 422,
     "validation_failed", None),
    ("since negative epoch", "GET", HISTORY, {"since": "-99999999999"}, None, 422,
     "validation_failed", None),
    ("since epoch of year 5000+", "GET", HISTORY, {"since": "1e12"}, None, 400,
     "invalid_argument", None),
    ("since of 65 characters", "GET", HISTORY, {"since": "1" * 65}, None, 422,
     "validation_failed", None),
    ("until with a bad zone", "GET", TREND, {"until": "2026-01-01T00:00:00+99:00"}, None,
     400, "invalid_argument", None),
    ("until before 1970", "GET", TREND, {"until": "1969-12-31T23:59:59Z"}, None, 422,
     "validation_failed", None),
    ("at February 30", "GET", "/api/gpu/status", {"at": "2026-02-30T00:00:00Z"}, None, 400,
     "invalid_argument", None),
    ("incidents since after until", "GET", "/api/gpu/incidents",
     {"since": "2026-01-02", "until": "2026-01-01"}, None, 422, "validation_failed", None),
    ("throttle at garbage", "GET", "/api/gpu/throttle/status", {"at": "\x00\x01"}, None,
     400, "invalid_argument", None),
    # -- unknown GPUs, leases, incidents ------------------------------------------------
    ("status of an unknown GPU", "GET", "/api/gpu/status", {"gpu_id": 7}, None, 404,
     "gpu_not_found", None),
    ("metrics of an unknown GPU", "GET", "/api/gpu/metrics", {"gpu_id": 7}, None, 404,
     "gpu_not_found", None),
    ("history of an unknown GPU", "GET", HISTORY, {"gpu_id": 7}, None, 404, "gpu_not_found",
     None),
    ("buckets of an unknown GPU", "GET", HISTORY, {"gpu_id": 7, "points": 10}, None, 404,
     "gpu_not_found", None),
    ("trend of an unknown GPU", "GET", TREND, {"gpu_id": 7}, None, 404, "gpu_not_found",
     None),
    ("throttle of an unknown GPU", "GET", "/api/gpu/throttle/status", {"gpu_id": 7}, None,
     404, "gpu_not_found", None),
    ("capacity of an unknown GPU", "GET", "/api/gpu/memory/available", {"gpu_id": 1023},
     None, 404, "gpu_not_found", None),
    ("lease on an unknown GPU", "POST", ALLOC, None, alloc(gpu_id=7), 404, "gpu_not_found",
     None),
    ("renew of an unknown lease", "POST", RENEW, None,
     {"allocation_id": "nobody", "lease_token": "t"}, 404, "lease_not_found", None),
    ("release of an unknown lease", "POST", FREE, None,
     {"allocation_id": "nobody", "lease_token": "t"}, 404, "lease_not_found", None),
    ("a duplicate lease id", "POST", ALLOC, None, alloc(allocation_id="held"), 409,
     "duplicate_allocation", None),
    ("an unknown incident", "GET", "/api/gpu/incidents/999", None, None, 404,
     "incident_not_found", None),
    ("samples of an unknown incident", "GET", "/api/gpu/incidents/999/samples.csv", None,
     None, 404, "incident_not_found", None),
    # -- methods, paths, headers --------------------------------------------------------
    ("an unknown path", "GET", "/api/gpu/nothing", None, None, 404, "not_found", None),
    ("a path climbing out", "GET", "/api/gpu/../../etc/passwd", None, None, 404,
     "not_found", None),
    ("an incident id that is a word", "GET", "/api/gpu/incidents/one", None, None, 404,
     "not_found", None),
    ("a negative incident id", "GET", "/api/gpu/incidents/-1", None, None, 404, "not_found",
     None),
    ("DELETE of the config", "DELETE", CONFIG, None, None, 405, "method_not_allowed", None),
    ("GET of allocate", "GET", ALLOC, None, None, 405, "method_not_allowed", None),
    ("PATCH of a lease", "PATCH", RENEW, None, {"allocation_id": "held"}, 405,
     "method_not_allowed", None),
]

TEXT_PLAIN = {"body JSON as text/plain": {"Content-Type": "text/plain"}}


@pytest.mark.parametrize(("method", "path", "query", "body", "status", "code", "secret"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_request_is_a_clear_4xx_and_changes_nothing(
        request: pytest.FixtureRequest, hostile_app: App, method: str, path: str, query: Any,
        body: Any, status: int, code: str | None, secret: str | None) -> None:
    """The status and code, the one error shape, no echo of the value, no change."""
    case = request.node.callspec.id.split("-", 1)[-1]
    before = snapshot(hostile_app.engine)
    response = send(hostile_app, method, path, query, body, TEXT_PLAIN.get(case))
    assert_error(response, status, code)
    if secret is not None:
        assert secret not in response.text
    assert snapshot(hostile_app.engine) == before


def test_oversized_chunked_body_is_refused(hostile_app: App) -> None:
    """A body without Content-Length, streamed past 64 KiB, is cut off: 413, nothing kept."""
    before = snapshot(hostile_app.engine)

    def chunks() -> Iterator[bytes]:
        yield b'{"allocation_id": "chunked", "memory_mb": 1, "owner": "'
        for _ in range(100):
            yield b"o" * 1024
        yield b'"}'

    response = requests.post(f"{hostile_app.url}{ALLOC}", data=chunks(), timeout=30,
                             headers={**AUTH, "Content-Type": "application/json"})
    assert_error(response, 413, "request_entity_too_large")
    assert snapshot(hostile_app.engine) == before


def test_a_stream_with_a_bad_cursor_is_refused(hostile_app: App) -> None:
    """The event stream (not fuzzed) refuses a bad Last-Event-ID or since_id up front."""
    for headers, query, status in (({"Last-Event-ID": "abc"}, None, 400),
                                   ({"Last-Event-ID": "-5"}, None, 400),
                                   ({"Last-Event-ID": "9" * 5000}, None, 400),
                                   ({}, {"since_id": -1}, 422),
                                   ({}, {"kind": SQL}, 422)):
        response = requests.get(f"{hostile_app.url}/api/gpu/events/stream", params=query,
                                headers=headers, timeout=10, stream=True)
        with response:
            assert_error(response, status, None)


def test_sql_and_unicode_in_free_text_are_stored_verbatim(hostile_app: App) -> None:
    """Owner is free text: SQL, quotes, markup and any script round-trip unchanged, through
    bound parameters (the tables are intact), and a query by owner matches only itself."""
    owners = [SQL, "Robert'); DROP TABLE gpus;--", '<script>alert("x")</script>',
              "Ωmega ✓ 日本語 עברית", "\\x00 and %s and {0}"]
    for i, owner in enumerate(owners):
        granted = send(hostile_app, "POST", ALLOC,
                       body=alloc(allocation_id=f"free-text-{i}", owner=owner))
        assert granted.status_code == 201, granted.text
        assert granted.json()["owner"] == owner
        listed = send(hostile_app, "GET", "/api/gpu/memory/leases", {"owner": owner}).json()
        assert [x["allocation_id"] for x in listed["leases"]] == [f"free-text-{i}"]
        released = send(hostile_app, "POST", FREE, body={
            "allocation_id": f"free-text-{i}", "lease_token": granted.json()["lease_token"]})
        assert released.status_code == 200, released.text
    injected = send(hostile_app, "GET", "/api/gpu/memory/leases",
                    {"owner": "x' OR '1'='1"}).json()
    assert injected["count"] == 0  # the held lease of alice is not matched
    assert {"leases", "gpus", "samples", "events"} <= set(
        sa.inspect(hostile_app.engine).get_table_names())


def test_a_body_of_exactly_64_kib_is_read(hostile_app: App) -> None:
    """The limit is 64 KiB, not less: a valid body padded to exactly that size is served."""
    text = json.dumps(alloc(allocation_id="exactly-64k"))
    body = text.encode() + b" " * (MAX_BODY_BYTES - len(text))
    assert len(body) == MAX_BODY_BYTES
    granted = send(hostile_app, "POST", ALLOC, body=body)
    assert granted.status_code == 201, granted.text
    send(hostile_app, "POST", FREE, body={"allocation_id": "exactly-64k",
                                          "lease_token": granted.json()["lease_token"]})


def test_the_app_still_answers_after_the_abuse(hostile_app: App) -> None:
    """After every hostile request the held lease is intact and its token still works."""
    status = send(hostile_app, "GET", "/api/gpu/status", {"gpu_id": 0})
    assert status.status_code == 200
    renewed = send(hostile_app, "POST", RENEW, body={
        "allocation_id": "held", "lease_token": hostile_app.held_token})  # type: ignore[attr-defined]
    assert renewed.status_code == 200, renewed.text
