"""A sampler needs one database connection: its pool holds one, and its tick writer, claim
heartbeat, lease reaper and fleet maintenance jobs take turns on it without a deadlock and
without losing a tick, while ``serve`` and ``api`` keep a pool.

The run is the production wiring (``schedule_jobs``, the sampler's writer thread, the
scheduler's job objects) with the scheduler started paused, so the test calls every job
itself — from five threads at once — on a FakeClock. SQLAlchemy's pool events count the
connections checked out at any moment.
Every job fires at each tick's moment (all periods lined up: the worst case) in threads
of its own, as the scheduler's thread pool runs them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.sampling.sampler import SAMPLE_JOB_ID
from gpuhistory.service import SAMPLER_POOL_SIZE, ServeSettings, Service
from gpuhistory.storage import maintenance_runs
from tests.conftest import FLEET4

pytestmark = pytest.mark.postgres

TICKS = 60


class CheckedOut:
    """Connections checked out of an engine's pool, now and at most; and whether a thread
    ever asked for a second one while holding one (with one connection: a deadlock)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.now = self.most = self.checkouts = 0
        self.nested: list[str] = []
        self._held: dict[int, int] = {}
        self._lock = threading.Lock()
        sa.event.listen(engine, "checkout", self._out)
        sa.event.listen(engine, "checkin", self._in)

    def _out(self, *_args: Any) -> None:
        me = threading.get_ident()
        with self._lock:
            self.now += 1
            self.checkouts += 1
            self.most = max(self.most, self.now)
            if self._held.get(me):
                self.nested.append(threading.current_thread().name)
            self._held[me] = self._held.get(me, 0) + 1

    def _in(self, *_args: Any) -> None:
        me = threading.get_ident()
        with self._lock:
            self.now -= 1
            if self._held.get(me):  # a checkin from another thread (a pool reset) is fine
                self._held[me] -= 1


def scheduled_jobs(service: Service) -> dict[str, Callable[[], object]]:
    assert service.scheduler is not None
    return {job.id: (lambda j=job: j.func(*j.args, **j.kwargs))
            for job in service.scheduler.get_jobs()}


def test_a_sampler_runs_on_one_connection_and_loses_no_tick(db_url: str, engine: sa.Engine
                                                            ) -> None:
    clock = FakeClock()
    service = Service(ServeSettings(db=db_url, backend="sim", trace=str(FLEET4),
                                    host_name="node-a", interval=1.0),
                      clock=clock, role="sampler")
    pool = service.engine.pool
    assert isinstance(pool, sa.pool.QueuePool)
    assert (pool.size(), pool._max_overflow) == (SAMPLER_POOL_SIZE, 0) == (1, 0)
    counted = CheckedOut(service.engine)
    try:
        service.claim.acquire()
        service.schedule_jobs()
        assert service.scheduler is not None and service.sampler is not None
        service.scheduler.start(paused=True)  # jobs run only when this test calls them
        service.sampler.start()  # the writer thread and the sampling job
        jobs = scheduled_jobs(service)
        tick = jobs.pop(SAMPLE_JOB_ID)
        assert {"gpuhistory.rollups", "gpuhistory.detect_incidents", "gpuhistory.retention",
                "gpuhistory.reap_leases", "sampler-claim"} <= set(jobs)
        names = sorted(jobs)
        fired = 0
        with ThreadPoolExecutor(len(names)) as threads:
            for _ in range(TICKS):
                clock.advance(1)
                # every job fires at the tick's moment, each in its own scheduler thread
                start = threading.Barrier(len(names) + 1)

                def fire(name: str, start: threading.Barrier = start) -> None:
                    start.wait()
                    jobs[name]()
                    service.config()  # the configuration refresh every reader does

                firing = [threads.submit(fire, name) for name in names]
                start.wait()
                tick()  # the scheduled tick: classified here, written by the writer thread
                for future in firing:
                    future.result()
                    fired += 1
        assert fired == TICKS * len(names)
        service.sampler.stop(reason="test done")  # the writer writes what it was handed
        assert counted.nested == []
        assert service.sampler.buffer.outage is None
        with engine.connect() as conn:
            ticks = conn.execute(sa.text(
                "SELECT count(DISTINCT ts_ms) FROM samples s JOIN gpus g ON g.id = s.gpu_id "
                "WHERE g.host = 'node-a'")).scalar_one()
        assert ticks == TICKS  # every tick written: none lost, none waiting
        assert counted.most == 1 and counted.checkouts > TICKS
        rows = maintenance_runs.rows(service.engine)
        assert sorted(rows) == ["incidents", "retention", "rollups"]
        assert all(r.last_error is None for r in rows.values())
        assert service.claim.held
    finally:
        service.shutdown()


@pytest.mark.parametrize("role", ["both", "api"])
def test_serve_and_api_keep_their_pools(db_url: str, engine: sa.Engine, role: str) -> None:
    service = Service(ServeSettings(db=db_url, backend="sim", trace=str(FLEET4),
                                    host_name="node-a"), clock=FakeClock(), role=role)
    try:
        pool = service.engine.pool
        assert isinstance(pool, sa.pool.QueuePool)
        expected = 32 if service.engine.dialect.name == "sqlite" else 5
        assert pool.size() == expected and pool._max_overflow > 0
    finally:
        service.shutdown()


def test_db_pool_size_sets_any_roles_pool(db_url: str, engine: sa.Engine) -> None:
    """``--db-pool-size`` (GPUHISTORY_DB_POOL_SIZE): that many, no overflow, in any role."""
    for role, size in (("api", 3), ("sampler", 2)):
        service = Service(ServeSettings(db=db_url, backend="sim", trace=str(FLEET4),
                                        host_name="node-a", db_pool_size=size),
                          clock=FakeClock(), role=role)
        try:
            pool = service.engine.pool
            assert isinstance(pool, sa.pool.QueuePool)
            assert (pool.size(), pool._max_overflow) == (size, 0)
        finally:
            service.shutdown()


def test_a_tick_that_finds_the_connection_busy_is_kept_not_lost(db_url: str,
                                                                 engine: sa.Engine) -> None:
    """While something holds the sampler's one connection past the pool's timeout, ticks
    are still taken (with the configuration last read) and wait in memory; once the
    connection is free they are all written, in order. (The pool's timeout is cut to
    50 ms for the test: the waits are real ones, on the pool.)"""
    clock = FakeClock()
    service = Service(ServeSettings(db=db_url, backend="sim", trace=str(FLEET4),
                                    host_name="node-a", interval=1.0),
                      clock=clock, role="sampler")
    pool = service.engine.pool
    assert isinstance(pool, sa.pool.QueuePool)
    pool._timeout = 0.05
    try:
        service.claim.acquire()
        service.schedule_jobs()
        assert service.scheduler is not None and service.sampler is not None
        service.scheduler.start(paused=True)
        service.sampler.start()
        tick = scheduled_jobs(service)[SAMPLE_JOB_ID]
        clock.advance(1)
        tick()  # registers the GPUs
        clock.advance(1)
        service.sampler.tick()  # a direct tick: returns once written
        with service.engine.connect():  # the one connection, held by someone else
            for _ in range(3):
                clock.advance(1)
                tick()
            # the writer thread finds the pool empty after its 50 ms wait (a bounded wait
            # for that thread, not for a TTL)
            deadline = time.monotonic() + 10
            while service.sampler.buffer.outage is None and time.monotonic() < deadline:
                time.sleep(0.01)
            waited = service.sampler.buffer.outage
        clock.advance(1)
        service.sampler.tick()
        assert waited is not None and waited.reason == "unavailable"
        assert service.sampler.buffer.outage is None
        with engine.connect() as conn:
            ticks = conn.execute(sa.text("SELECT count(DISTINCT ts_ms) FROM samples"
                                         )).scalar_one()
            recovered = conn.execute(sa.text(
                "SELECT count(*) FROM events WHERE kind = 'storage_recovered'")).scalar_one()
        assert ticks == 6 and recovered == 1
    finally:
        service.shutdown()
