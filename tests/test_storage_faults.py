"""Storage faults on a real SQLite file: locked past the busy timeout, disk full, read-only.

Each fault is the real thing, made without root tricks where possible:
- *locked*: a second connection holds ``BEGIN IMMEDIATE`` (another writer) longer than the
  busy timeout (made 100 ms here through the engine's ``busy_timeout_ms``);
- *disk full*: ``PRAGMA max_page_count`` at the file's current size, set on every pooled
  connection as it is checked out (the limit is per connection), so the file cannot grow;
- *read-only*: ``chattr +i`` on the database and its WAL. Root ignores permission bits,
  not the immutable flag: open connections then fail to write ("disk I/O error") and new
  ones open read-only ("attempt to write a readonly database"), as they would for a
  service whose files were chowned or whose filesystem went read-only. (Not the -shm file:
  SQLite maps it into memory, and a write through the mapping of an immutable file is a
  SIGBUS that kills the process — a failure no database library can catch.)

The sampler keeps ticks in memory and writes them in order once the fault clears; the API
answers writes with 503 ``database_unavailable`` and keeps serving reads; nothing
committed is lost; recovery needs nobody.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.domain.reading import GpuIdentity, Reading
from gpuhistory.sampling.backend import BackendHealth
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.sampler import Sampler
from gpuhistory.storage.engine import make_engine, upgrade
from gpuhistory.storage.log import LogStore
from tests.conftest import App

BUSY_MS = 100


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "faults.db"


@pytest.fixture
def fault_engine(db: Path) -> Iterator[sa.Engine]:
    """A migrated SQLite file whose connections wait only BUSY_MS for a lock."""
    engine = make_engine(db, busy_timeout_ms=BUSY_MS)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def service(fault_engine: sa.Engine, clock: FakeClock) -> Iterator[App]:
    """The API over real HTTP with the sim sampler (4 GPUs), on the faulty file."""
    app = App(fault_engine, clock)
    yield app
    app.close()


# -- the faults ----------------------------------------------------------------------------
@contextmanager
def another_writer(db: Path) -> Iterator[None]:
    """A second connection holding the database's write lock until the block ends."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=0)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.rollback()
        conn.close()


class PageLimit:
    """Disk full: every connection, as it is checked out, may not grow the file."""

    def __init__(self, engine: sa.Engine) -> None:
        self.full = False
        with engine.connect() as conn:
            self.unlimited = conn.exec_driver_sql("PRAGMA max_page_count").scalar()
        sa.event.listen(engine, "checkout", self._apply)

    def _apply(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # Below the file's size SQLite sets the limit to the size: "no more pages".
        limit = 1 if self.full else self.unlimited
        dbapi_connection.execute(f"PRAGMA max_page_count = {limit}")


@contextmanager
def read_only_files(db: Path, engine: sa.Engine) -> Iterator[None]:
    """The database and its WAL immutable (chattr +i) for the block; the pool is emptied at
    the start, so connections opened during the fault open read-only, as they would."""
    paths = [str(p) for p in (db, Path(f"{db}-wal")) if p.exists()]
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    made = subprocess.run(["chattr", "+i", *paths], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make files immutable here (root with CAP_LINUX_IMMUTABLE on "
                    f"ext4/xfs/btrfs is needed): {made.stderr.strip()}")
    try:
        engine.dispose()
        yield
    finally:
        subprocess.run(["chattr", "-i", *paths], check=True)


# -- helpers -------------------------------------------------------------------------------
def count(engine: sa.Engine, sql: str, **params: object) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar_one()


def event_payloads(engine: sa.Engine, kind: str) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT payload FROM events WHERE kind = :k ORDER BY id"),
                            {"k": kind}).scalars().all()
    return [p if isinstance(p, dict) else json.loads(p) for p in rows]


def integrity_ok(db: Path) -> bool:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def ticks_per_gpu_all_present(engine: sa.Engine, expected: int) -> None:
    """Every GPU has ``expected`` samples (the App's first tick, then the test's) and each
    tick wrote every GPU (none half-written)."""
    with engine.connect() as conn:
        per_gpu = conn.execute(sa.text("SELECT count(*) FROM samples GROUP BY gpu_id")
                               ).scalars().all()
        per_tick = conn.execute(sa.text("SELECT count(*) FROM samples GROUP BY ts_ms")
                                ).scalars().all()
    assert per_gpu and set(per_gpu) == {expected}
    assert set(per_tick) == {len(per_gpu)}


def allocate(url: str, allocation_id: str, memory_mb: int = 1024) -> requests.Response:
    return requests.post(f"{url}/api/gpu/memory/allocate", json={
        "allocation_id": allocation_id, "memory_mb": memory_mb, "ttl_seconds": 3600},
        timeout=30)


def assert_unavailable(response: requests.Response, reasons: set[str]) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "database_unavailable" and error["details"]["reason"] in reasons
    assert response.headers["Retry-After"] == "1"


def assert_reads_work(url: str) -> None:
    """The read side answers as usual while writes are refused."""
    for path in ("/api/gpu/status/all", "/api/gpu/metrics/history?gpu_id=1",
                 "/api/gpu/temperature/trend?gpu_id=1", "/api/gpu/memory/available",
                 "/api/gpu/memory/leases", "/api/gpu/throttle/status", "/api/gpu/config",
                 "/api/gpu/events?limit=5", "/api/system/status", "/metrics"):
        assert requests.get(f"{url}{path}", timeout=30).status_code == 200, path
    body = requests.get(f"{url}/healthz", timeout=30).json()
    assert body["status"] == "degraded" and body["database"]["ok"]


def assert_health(url: str, status: str, reason: str | None = None) -> dict:
    body = requests.get(f"{url}/healthz", timeout=30).json()
    assert body["status"] == status, body.get("reasons")
    if reason is not None:
        assert any(reason in r for r in body["reasons"]), body["reasons"]
    return body


# -- the sampler and the API under each fault ----------------------------------------------
def test_locked_database_ticks_wait_in_memory_writes_get_503_reads_go_on(
    service: App, db: Path,
) -> None:
    """Another writer holds the lock past the busy timeout: ticks wait in memory and land in
    order when it lets go; lease, config and monitoring writes are 503 and change nothing;
    every read answers; it all recovers by itself."""
    url, engine = service.url, service.engine
    service.tick(times=2)
    granted = allocate(url, "before")
    assert granted.status_code == 201
    with another_writer(db):
        service.tick(times=5)
        storage = service.sampler.storage
        assert (storage["ok"], storage["reason"], storage["waiting_ticks"]) == (
            False, "locked", 5)
        assert_health(url, "degraded", "the database refuses writes (locked): 5 tick(s)")
        assert_unavailable(allocate(url, "during"), {"locked"})
        assert_unavailable(requests.post(f"{url}/api/gpu/memory/deallocate", json={
            "allocation_id": "before", "lease_token": granted.json()["lease_token"]},
            timeout=30), {"locked"})
        assert_unavailable(requests.put(f"{url}/api/gpu/config",
                                        json={"temp_optimal": 50}, timeout=30), {"locked"})
        assert_unavailable(requests.post(f"{url}/api/gpu/monitoring/start", timeout=30),
                           {"locked"})
        assert not service.sampler.running  # the refused request changed nothing
        assert_reads_work(url)
    service.tick()
    assert_health(url, "ok")
    ticks_per_gpu_all_present(engine, 1 + 2 + 5 + 1)
    (recovered,) = event_payloads(engine, "storage_recovered")
    assert (recovered["reason"], recovered["buffered_ticks"], recovered["dropped_ticks"]) == (
        "locked", 5, 0)
    assert event_payloads(engine, "ticks_dropped") == []
    assert allocate(url, "after").status_code == 201
    assert {x["allocation_id"] for x in requests.get(
        f"{url}/api/gpu/memory/leases", timeout=30).json()["leases"]} == {"before", "after"}
    assert requests.get(f"{url}/api/gpu/config", timeout=30).json()["config"][
        "temp_optimal"] == DEFAULT_CONFIG.temp_optimal
    assert integrity_ok(db)


def test_disk_full_leases_granted_before_stay_the_refused_one_never_appears(
    service: App, db: Path,
) -> None:
    """The file may not grow: grants go on while pages have room, then 503 ``full``; ticks
    wait; once space is back, everything waiting lands and grants work again."""
    url, engine = service.url, service.engine
    limit = PageLimit(engine)
    service.tick(times=2)
    engine.dispose()  # every connection from now on is checked out under the limit
    limit.full = True
    ticks = 0
    while service.sampler.storage["ok"]:
        ticks += 1
        assert ticks < 500, "the file never filled up"
        service.tick()
    service.tick(times=3)
    assert service.sampler.storage["reason"] == "full"
    granted, refused = [], None
    for i in itertools.count():
        assert i < 2000, "grants never ran out of room"
        response = allocate(url, f"job-{i}", memory_mb=1)
        if response.status_code != 201:
            refused = f"job-{i}"
            assert_unavailable(response, {"full"})
            break
        granted.append(f"job-{i}")
    assert_reads_work(url)
    assert_health(url, "degraded", "the database refuses writes (full)")
    limit.full = False
    engine.dispose()
    service.tick()
    assert_health(url, "ok")
    ticks_per_gpu_all_present(engine, 1 + 2 + ticks + 3 + 1)
    leases = {x["allocation_id"] for x in requests.get(
        f"{url}/api/gpu/memory/leases?limit=5000", timeout=30).json()["leases"]}
    assert leases == set(granted) and refused not in leases
    assert allocate(url, refused or "x").status_code == 201
    assert integrity_ok(db)


def test_read_only_files_writes_refused_reads_served_recovers_by_itself(
    service: App, db: Path,
) -> None:
    """The database's files made immutable: connections opened meanwhile are read-only and
    stay so even once the files are writable; the first refusal discards them, so the
    service recovers without a restart."""
    url, engine = service.url, service.engine
    service.tick(times=2)
    assert allocate(url, "before").status_code == 201
    with read_only_files(db, engine):
        service.tick(times=4)
        storage = service.sampler.storage
        assert not storage["ok"] and storage["waiting_ticks"] == 4
        assert storage["reason"] in {"read_only", "io_error"}
        assert_unavailable(allocate(url, "during"), {"read_only", "io_error"})
        assert_reads_work(url)
    service.tick()
    assert_health(url, "ok")
    ticks_per_gpu_all_present(engine, 1 + 2 + 4 + 1)
    assert allocate(url, "after").status_code == 201
    assert {x["allocation_id"] for x in requests.get(
        f"{url}/api/gpu/memory/leases", timeout=30).json()["leases"]} == {"before", "after"}
    assert integrity_ok(db)


# -- the write buffer's bound --------------------------------------------------------------
class ScriptedBackend:
    """Two GPUs whose temperatures the test sets."""

    name = "sim"

    def __init__(self) -> None:
        self.temps = [40, 40]

    def identities(self) -> list[GpuIdentity]:
        return [GpuIdentity(index=i, uuid=f"GPU-s-{i}", name="card", memory_total_mib=1000)
                for i in range(2)]

    def read(self) -> list[Reading]:
        return [Reading(index=i, uuid=f"GPU-s-{i}", name="card", temperature_c=t,
                        memory_used_mib=100, memory_total_mib=1000)
                for i, t in enumerate(self.temps)]

    def health(self) -> BackendHealth:
        return BackendHealth(ok=True)

    def close(self) -> None:
        pass


def test_full_buffer_drops_the_oldest_samples_but_keeps_their_state_changes(
    fault_engine: sa.Engine, db: Path, clock: FakeClock,
) -> None:
    """write_buffer_ticks = 3 and a lock for 6 ticks: the 3 oldest ticks lose their samples
    (one ticks_dropped event counts them), but the overheat they saw is still in the
    transitions and events, so the state log has no hole."""
    config = DEFAULT_CONFIG.changed(write_buffer_ticks=3)
    store = LogStore(fault_engine, "testhost")
    backend = ScriptedBackend()
    sampler = Sampler(backend, Pipeline(store, "sim", lambda: config), store, clock)
    sampler.tick()
    with another_writer(db):
        times = []
        backend.temps[0] = 80  # GPU 0 overheats in the first tick of the outage
        for _ in range(6):
            clock.advance(1)
            sampler.tick()
            times.append(clock.now_ms())
        assert sampler.storage["waiting_ticks"] == 3
    clock.advance(1)
    sampler.tick()
    with fault_engine.connect() as conn:
        stamps = conn.execute(sa.text(
            "SELECT DISTINCT ts_ms FROM samples ORDER BY ts_ms")).scalars().all()
        hot = conn.execute(sa.text(
            "SELECT ts_ms, from_state, to_state FROM transitions WHERE from_state IS NOT NULL"
        )).all()
    assert stamps[1:] == [*times[3:], clock.now_ms()]  # ticks 1-3 of the outage dropped
    assert [tuple(t) for t in hot] == [(times[0], 0, 2)]  # seen in a dropped tick, kept
    assert count(fault_engine, "SELECT count(*) FROM events WHERE kind = 'throttle'") == 1
    (dropped,) = event_payloads(fault_engine, "ticks_dropped")
    assert dropped["count"] == 3 and not dropped["state_rebuilt"]
    (recovered,) = event_payloads(fault_engine, "storage_recovered")
    assert (recovered["buffered_ticks"], recovered["dropped_ticks"]) == (3, 3)
    assert sampler.storage == {"ok": True, "waiting_ticks": 0, "buffer_ticks": 3}
