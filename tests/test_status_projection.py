"""The status projection (gpuhistory/projection.py): status answers from memory, kept
current from the log — no SQL in the steady state on the sampling process, a bounded read
on an API-only follower once per interval, fresh across processes and after restarts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from gpuhistory.api.app import create_app
from gpuhistory.clock import FakeClock
from gpuhistory.config.layers import load_static
from gpuhistory.config.store import ConfigStore
from gpuhistory.context import ServiceContext
from gpuhistory.documents import status_docs
from gpuhistory.leases.manager import LeaseManager
from gpuhistory.service import ServeSettings, Service
from gpuhistory.storage.engine import make_engine
from gpuhistory.storage.fleet_reads import lease_usage
from gpuhistory.storage.processes import running_processes
from gpuhistory.storage.queries import latest_samples
from tests.sim_fleet import SimFleet

pytestmark = pytest.mark.postgres


@contextmanager
def statements(engine: sa.Engine) -> Iterator[list[str]]:
    """The SQL statements run on ``engine`` inside the block (SQLite's BEGIN aside)."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.startswith("BEGIN"):
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)


def _context(engine: sa.Engine, clock: FakeClock, config: ConfigStore, host: str,
             sampler: Any = None) -> ServiceContext:
    return ServiceContext(engine=engine, host=host, clock=clock, config=config,
                          config_store=config, sampler=sampler,
                          leases=LeaseManager(engine, host, clock, config))


def _config(engine: sa.Engine, clock: FakeClock) -> ConfigStore:
    return ConfigStore(engine, load_static(environ={}), clock, refresh_ms=3_600_000)


def _from_log(engine: sa.Engine, host: str | None, now: int,
              config: ConfigStore) -> list[dict[str, Any]]:
    """The status documents as the log answers them (no projection)."""
    with engine.connect() as conn:
        entries = latest_samples(conn, host, now_ms=now)
        return status_docs(entries, now, config(),
                           processes=running_processes(conn, [e.gpu.id for e in entries]),
                           usage=lease_usage(conn, None, now))


def test_the_sampling_process_answers_status_all_with_no_sql_and_includes_its_commit(
        engine: sa.Engine, clock: FakeClock) -> None:
    """After the process's own sampler commits a tick, its next status/all and status
    answers include that tick (sample timestamp) and run no statement at all."""
    config = _config(engine, clock)
    fleet = SimFleet(engine, clock, config, hosts=2, gpus=4)
    host = fleet.hosts["node-001"]
    context = _context(engine, clock, config, "node-001", host.sampler)
    client = create_app(context).test_client()
    assert client.get("/api/gpu/status/all").status_code == 200  # first answer: rebuild
    clock.advance(0.5)  # well inside one interval
    host.tick()
    with statements(engine) as seen:
        doc = client.get("/api/gpu/status/all").get_json()
        one = client.get("/api/gpu/status?gpu_id=2").get_json()
        fleetwide = client.get("/api/gpu/status/all?host=*").get_json()
    assert seen == []
    newest = {g["timestamp"] for g in doc["gpus"]}
    assert newest == {_iso(clock.now_ms())} and one["timestamp"] == _iso(clock.now_ms())
    assert fleetwide["count"] == 8 and doc["count"] == 4


def test_an_api_follower_sees_another_process_commit_within_one_interval(
        engine: sa.Engine, clock: FakeClock, db_url: str) -> None:
    """Two processes on one database (two engines): the API-only one runs no SQL while the
    interval has not passed, then one bounded read (≤ 5 statements) brings in the other's
    commit — so no answer is older than one interval."""
    config = _config(engine, clock)
    fleet = SimFleet(engine, clock, config, hosts=1, gpus=4)
    other = make_engine(db_url)
    try:
        follower = _context(other, clock, _config(other, clock), "node-001")
        client = create_app(follower).test_client()
        interval_ms = follower.projection.interval_ms
        before = client.get("/api/gpu/status/all").get_json()["gpus"][0]["timestamp"]
        clock.advance(interval_ms / 2000)
        fleet.hosts["node-001"].tick()  # the other process commits
        with statements(other) as seen:
            stale = client.get("/api/gpu/status/all").get_json()["gpus"][0]["timestamp"]
        assert seen == [] and stale == before
        clock.advance(interval_ms / 2000)  # one interval since the follower last asked
        with statements(other) as seen:
            fresh = client.get("/api/gpu/status/all").get_json()
        assert 1 <= len(seen) <= 5
        committed = fleet.hosts["node-001"].sampler.last_tick
        assert committed is not None
        assert {g["timestamp"] for g in fresh["gpus"]} == {
            _iso(committed.ts_ms)}
        with statements(other) as seen:
            client.get("/api/gpu/status/all")
        assert seen == []  # nothing newer: the steady state again
    finally:
        other.dispose()


def _iso(ms: int) -> str:
    from gpuhistory.clock import iso_utc
    return str(iso_utc(ms))


def test_lease_totals_are_exact_on_the_next_answer_of_the_granting_process(
        engine: sa.Engine, clock: FakeClock) -> None:
    """A lease granted through this process's API counts in its very next status answer
    (one statement reads the leases); it stops counting the moment it expires, with no
    read; a release counts on the next answer too."""
    config = _config(engine, clock)
    SimFleet(engine, clock, config, hosts=1, gpus=2)
    context = _context(engine, clock, config, "node-001")
    client = create_app(context).test_client()
    client.get("/api/gpu/status/all")
    answer = client.post("/api/gpu/memory/allocate", json={
        "allocation_id": "job-1", "memory_mb": 1024, "gpu_id": 1, "ttl_seconds": 60})
    assert answer.status_code == 201, answer.get_json()
    token = answer.get_json()["lease_token"]
    with statements(engine) as seen:
        gpus = client.get("/api/gpu/status/all").get_json()["gpus"]
    assert len(seen) == 1
    assert [g["memory"]["leased_mb"] for g in gpus] == [0, 1024]
    assert [g["memory"]["active_leases"] for g in gpus] == [0, 1]
    answer = client.post("/api/gpu/memory/deallocate", json={
        "allocation_id": "job-1", "lease_token": token})
    assert answer.status_code == 200, answer.get_json()
    gpus = client.get("/api/gpu/status/all").get_json()["gpus"]
    assert [g["memory"]["leased_mb"] for g in gpus] == [0, 0]
    client.post("/api/gpu/memory/allocate", json={
        "allocation_id": "job-2", "memory_mb": 256, "gpu_id": 0, "ttl_seconds": 60})
    client.get("/api/gpu/status/all")
    clock.advance(61)
    context.projection.sync(clock.now_ms())  # nothing new in the log but the time
    with statements(engine) as seen:
        gpus = client.get("/api/gpu/status/all").get_json()["gpus"]
    assert seen == [] and [g["memory"]["leased_mb"] for g in gpus] == [0, 0]  # expired


def test_a_rebuilt_projection_answers_as_the_log_does(engine: sa.Engine,
                                                      clock: FakeClock) -> None:
    """A process started on an existing database (a restart) answers status/all?host=*
    from the projection it rebuilds, and that answer equals the log's."""
    config = _config(engine, clock)
    fleet = SimFleet(engine, clock, config, hosts=3, gpus=4)
    fleet.tick(2, times=5)
    LeaseManager(engine, "node-002", clock, config).grant("j", 512, gpu_index=3)
    context = _context(engine, clock, config, "node-001")
    client = create_app(context).test_client()
    answer = client.get("/api/gpu/status/all?host=*").get_json()["gpus"]
    assert answer == _from_log(engine, None, clock.now_ms(), config)
    assert any(g["memory"]["leased_mb"] == 512 for g in answer)


def test_a_fleet_of_125_hosts_by_8_gpus_is_answered_from_the_projection(
        engine: sa.Engine, clock: FakeClock) -> None:
    """status/all?host=* over 125 hosts x 8 GPUs: 1,000 documents equal to the log's, and
    a repeated answer runs no SQL."""
    config = _config(engine, clock)
    SimFleet(engine, clock, config, hosts=125, gpus=8, stagger_s=0.01)
    context = _context(engine, clock, config, "node-001")
    client = create_app(context).test_client()
    first = client.get("/api/gpu/status/all?host=*").get_json()
    assert first["count"] == 1000 and len(first["hosts"]) == 125
    assert first["gpus"] == _from_log(engine, None, clock.now_ms(), config)
    with statements(engine) as seen:
        again = client.get("/api/gpu/status/all?host=*").get_json()
    assert seen == [] and again == first


def test_a_serving_service_and_an_api_service_on_one_database_stay_fresh(
        engine: sa.Engine, clock: FakeClock, db_url: str) -> None:
    """The services as ``serve`` builds them: role ``both`` (its sampler ticks) and role
    ``api`` on the same database, one fake clock. The serving one includes its own tick in
    its next answer with no SQL; the API one includes it once one interval has passed."""
    both = Service(ServeSettings(db=db_url, backend="sim", sim_gpus=2, host_name="node-a",
                                 interval=2.0), clock, role="both")
    api = Service(ServeSettings(db=db_url, host_name="node-a", interval=2.0), clock,
                  role="api")
    try:
        assert both.sampler is not None and both.app is not None and api.app is not None
        serving, following = both.app.test_client(), api.app.test_client()
        both.sampler.tick()
        assert following.get("/api/gpu/status/all").get_json()["count"] == 2
        clock.advance(0.5)
        both.sampler.tick()
        now = _iso(clock.now_ms())
        with statements(both.engine) as seen:
            mine = serving.get("/api/gpu/status/all").get_json()["gpus"]
        assert seen == [] and {g["timestamp"] for g in mine} == {now}
        assert {g["timestamp"] for g in
                following.get("/api/gpu/status/all").get_json()["gpus"]} != {now}
        clock.advance(api.config().monitor_interval)
        theirs = following.get("/api/gpu/status/all").get_json()["gpus"]
        assert {g["timestamp"] for g in theirs} == {now}
        assert [g["state"] for g in theirs] == [g["state"] for g in mine]
    finally:
        for service in (both, api):
            if service.backend is not None:
                service.backend.close()
            service.engine.dispose()


def test_a_failed_follow_read_changes_nothing_and_is_asked_again(
        engine: sa.Engine, clock: FakeClock) -> None:
    """When the log cannot be read half-way through following it (the leases table is
    away), the answer fails, the projection keeps what it held, and the next answer reads
    again and includes the commit."""
    config = _config(engine, clock)
    fleet = SimFleet(engine, clock, config, hosts=1, gpus=2)
    context = _context(engine, clock, config, "node-001")
    client = create_app(context).test_client()
    before = client.get("/api/gpu/status/all").get_json()["gpus"]
    clock.advance(context.projection.interval_ms / 1000)
    fleet.hosts["node-001"].tick()
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE leases RENAME TO leases_away"))
    try:
        assert client.get("/api/gpu/status/all").status_code >= 500
        held = context.projection.entries("node-001", clock.now_ms())
        assert [_iso(e.ts_ms) for e in held if e.ts_ms] == [g["timestamp"] for g in before]
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE leases_away RENAME TO leases"))
    after = client.get("/api/gpu/status/all").get_json()["gpus"]
    assert {g["timestamp"] for g in after} == {_iso(clock.now_ms())}
