"""Maintenance once per fleet: three samplers (three services with their own engines and
hosts) on one database run each fleet-wide job once per period between them, hand it on
when its holder stops or dies, and neither double-count rollups nor find an incident twice.

Time is each service's FakeClock; the scheduler's jobs are called as the scheduler would
call them (its job objects' ``func(*args)``), from three threads at once.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.sampling.maintenance import FleetMaintenance, MaintenanceJob
from gpuhistory.service import (
    INCIDENTS_EVERY_SECONDS,
    REAP_JOB_ID,
    ROLLUP_EVERY_SECONDS,
    ServeSettings,
    Service,
)
from gpuhistory.storage import maintenance_runs
from tests.conftest import FLEET4

pytestmark = pytest.mark.postgres

HOSTS = ("node-a", "node-b", "node-c")
START_MS = 1_767_225_600_000 + 58 * 60_000  # 00:58 UTC: the run crosses an hour
FLEET_JOBS = ("incidents", "retention", "rollups")


def runs(engine: sa.Engine) -> dict[str, int]:
    return {name: row.runs for name, row in maintenance_runs.rows(engine).items()}


# -- the claim itself ----------------------------------------------------------------------
def test_one_claim_per_period_whoever_asks(engine: sa.Engine) -> None:
    """Of several claims in one period only the first wins; the next period is anyone's."""
    period, busy = 10_000, 16_000
    t = START_MS + 2_000
    end = (t // period + 1) * period
    assert maintenance_runs.claim(engine, "job", "a", t, end, busy, period)
    assert maintenance_runs.finish(engine, "job", "a", t, t + 5, None)
    assert not maintenance_runs.claim(engine, "job", "b", t + 10, end, busy, period)
    assert not maintenance_runs.claim(engine, "job", "a", end - 1, end, busy, period)
    assert maintenance_runs.claim(engine, "job", "b", end, end + period, busy, period)
    row = maintenance_runs.rows(engine)["job"]
    assert (row.holder, row.runs, row.next_due_ms, row.finished_ms) == ("b", 2, end + period,
                                                                         None)


def test_a_run_in_progress_keeps_the_job_until_its_busy_time(engine: sa.Engine) -> None:
    """A holder that dies mid-run (claimed, never finished) blocks the job until its busy
    time passes; then another process claims it, and the dead run's late finish is
    refused."""
    period, busy = 10_000, 16_000
    t = START_MS
    assert maintenance_runs.claim(engine, "job", "dead", t, t + period, busy, period)
    later = t + period + 1  # the next period, but the run is still "in progress"
    assert not maintenance_runs.claim(engine, "job", "b", later, later + period, busy, period)
    t2 = t + busy
    assert maintenance_runs.claim(engine, "job", "b", t2, t2 + period, busy, period)
    assert not maintenance_runs.finish(engine, "job", "dead", t, t2 + 1, None)
    assert maintenance_runs.rows(engine)["job"].holder == "b"


def test_a_clock_that_was_ahead_does_not_block_the_job(engine: sa.Engine) -> None:
    """A period end written by a clock a day ahead (since stepped back) is not waited for."""
    period, busy = 10_000, 16_000
    ahead = START_MS + 86_400_000
    assert maintenance_runs.claim(engine, "job", "skewed", ahead, ahead + period, busy, period)
    assert maintenance_runs.finish(engine, "job", "skewed", ahead, ahead + 1, None)
    t = START_MS
    assert maintenance_runs.claim(engine, "job", "b", t, t + period, busy, period)
    assert not maintenance_runs.claim(engine, "job", "c", t + 1, t + period, busy, period)


def test_a_failed_run_records_its_error_and_the_next_period_retries(engine: sa.Engine) -> None:
    clock = FakeClock(START_MS)
    calls: list[int] = []

    def flaky() -> None:
        calls.append(clock.now_ms())
        if len(calls) == 1:
            raise RuntimeError("boom")

    fleet = FleetMaintenance(engine, clock, "a")
    job = MaintenanceJob("flaky", "x", "flaky", 10, 1, flaky)
    assert fleet.fire(job) and not fleet.fire(job)
    row = maintenance_runs.rows(engine)["flaky"]
    assert row.last_error == "RuntimeError: boom" and row.busy_until_ms is None
    clock.advance(10)
    assert fleet.fire(job)
    assert maintenance_runs.rows(engine)["flaky"].last_error is None
    assert len(calls) == 2 and fleet.failed["flaky"] == 1 and fleet.ran["flaky"] == 2


# -- three samplers ------------------------------------------------------------------------
class Fleet:
    """Three sampler services on one database, each with its own engine, host and clock."""

    def __init__(self, db_url: str) -> None:
        self.clocks = {h: FakeClock(START_MS) for h in HOSTS}
        self.services = {h: Service(
            ServeSettings(db=db_url, backend="sim", trace=str(FLEET4), sim_gpus=2,
                          host_name=h, interval=1.0),
            clock=self.clocks[h], role="sampler") for h in HOSTS}
        for service in self.services.values():
            service.claim.acquire()
            service.schedule_jobs()
        self.alive = set(HOSTS)
        self.quiet: set[str] = set()  # hosts whose rows arrive but that fire no maintenance
        self.fired: dict[str, set[int]] = {name: set() for name in FLEET_JOBS}
        self._pool = ThreadPoolExecutor(len(HOSTS))
        self._rng = random.Random(17)

    def scheduled(self, host: str) -> dict[str, Callable[[], object]]:
        """The service's scheduled maintenance jobs as the scheduler calls them, by name."""
        out: dict[str, Callable[[], object]] = {}
        for job in self.services[host].scheduler.get_jobs():
            if job.args and isinstance(job.args[0], MaintenanceJob):
                out[job.args[0].name] = (lambda j=job: j.func(*j.args))
        return out

    def step(self, seconds: float = 1.0) -> None:
        """Advance every clock, tick every live sampler, then fire every maintenance job of
        every live sampler, the three samplers at once (each in its own thread)."""
        for clock in self.clocks.values():
            clock.advance(seconds)
        now = self.clocks[HOSTS[0]].now_ms()
        for host in sorted(self.alive):
            self.services[host].sampler.tick()
        firing = sorted(self.alive - self.quiet)
        barrier = threading.Barrier(len(firing))

        def fire_all(host: str) -> None:
            jobs = list(self.scheduled(host).items())
            self._rng.shuffle(jobs)
            barrier.wait()
            for _name, fire in jobs:
                fire()

        for future in [self._pool.submit(fire_all, h) for h in firing]:
            future.result()
        for job in self.services[HOSTS[0]].maintenance_jobs:
            self.fired[job.name].add(now // job.period_ms)

    def ran(self, name: str) -> int:
        return sum(s.maintenance.ran[name] for s in self.services.values())

    def close(self) -> None:
        self._pool.shutdown()
        for service in self.services.values():
            service.shutdown()


@pytest.fixture
def fleet(db_url: str, engine: sa.Engine) -> Iterator[Fleet]:
    fleet = Fleet(db_url)
    yield fleet
    fleet.close()


def test_the_scheduler_fires_fleet_jobs_through_the_claim(fleet: Fleet) -> None:
    """Rollups, incidents and retention are scheduled as claimed fleet jobs over every GPU;
    the lease reaper stays this host's own job."""
    service = fleet.services["node-a"]
    jobs = {job.id: job for job in service.scheduler.get_jobs()}
    fleet_jobs = {j.args[0].name: j for j in jobs.values()
                  if j.args and isinstance(j.args[0], MaintenanceJob)}
    assert sorted(fleet_jobs) == list(FLEET_JOBS)
    for job in fleet_jobs.values():
        assert job.func == service.maintenance.fire
        assert job.max_instances == 1 and job.coalesce
        period = job.args[0].period_s
        assert job.trigger.interval.total_seconds() == period
        # fired inside its period, away from the edges where a late firing changes period
        phase = job.trigger.start_date.timestamp() % period
        assert 0.1 * period <= phase <= 0.9 * period
    assert jobs[REAP_JOB_ID].func == service.leases.reap
    assert service.incidents.host is None and service.rollups.host is None


def test_three_samplers_run_each_job_once_per_period(fleet: Fleet, engine: sa.Engine) -> None:
    """Every sampler fires every job every second, three at once; each job runs exactly once
    per period, counted by the processes and by maintenance_runs alike."""
    for _ in range(75):
        fleet.step()
    counted = runs(engine)
    for name in FLEET_JOBS:
        assert fleet.ran(name) == len(fleet.fired[name]) == counted[name], name
    assert len(fleet.fired["incidents"]) == 75 // INCIDENTS_EVERY_SECONDS + 1
    assert len(fleet.fired["rollups"]) == 75 // ROLLUP_EVERY_SECONDS + 1
    # the work was shared: more than one sampler ran some job
    holders = {h for h, s in fleet.services.items() if sum(s.maintenance.ran.values())}
    assert len(holders) > 1
    assert all(row.last_error is None and row.busy_until_ms is None
               for row in maintenance_runs.rows(engine).values())


def test_a_stopped_holder_hands_the_work_on_within_one_period(fleet: Fleet,
                                                              engine: sa.Engine) -> None:
    """The sampler that ran the last period of each job stops; the next period of every
    job is run by one of the others, and no period goes without a run."""
    for _ in range(12):
        fleet.step()
    holder = maintenance_runs.rows(engine)["incidents"].holder
    gone = next(h for h, s in fleet.services.items() if s.maintenance.holder == holder)
    fleet.services[gone].shutdown()
    fleet.alive.discard(gone)
    before = runs(engine)
    others_before = sum(fleet.services[h].maintenance.ran["incidents"] for h in fleet.alive)
    for _ in range(INCIDENTS_EVERY_SECONDS):
        fleet.step()
    assert runs(engine)["incidents"] == before["incidents"] + 1
    assert sum(fleet.services[h].maintenance.ran["incidents"]
               for h in fleet.alive) == others_before + 1
    assert maintenance_runs.rows(engine)["incidents"].holder != holder
    for _ in range(40):
        fleet.step()
    for name in FLEET_JOBS:
        assert runs(engine)[name] == len(fleet.fired[name]), name


def test_a_holder_that_dies_mid_run_is_taken_over_after_its_busy_time(
        fleet: Fleet, engine: sa.Engine) -> None:
    """A claim never finished (its process killed mid-run) keeps the others off for the
    job's busy time, then the next firing takes the job over."""
    fleet.step()
    job = next(j for j in fleet.services["node-a"].maintenance_jobs if j.name == "incidents")
    now = fleet.clocks["node-a"].now_ms()
    # the claim a killed process left behind: due now, claimed, never finished
    next_period = (now // job.period_ms + 1) * job.period_ms
    for clock in fleet.clocks.values():
        clock.set(next_period)
    assert maintenance_runs.claim(engine, "incidents", "killed", next_period,
                                  next_period + job.period_ms, job.busy_ms, job.period_ms)
    before = fleet.ran("incidents")
    steps = 0
    while maintenance_runs.rows(engine)["incidents"].holder == "killed":
        fleet.step()
        steps += 1
        assert steps * 1000 <= job.busy_ms + job.period_ms, "never taken over"
    assert steps * 1000 >= job.busy_ms  # not before the busy time
    assert fleet.ran("incidents") == before + 1


def test_nothing_double_counted_and_no_incident_found_twice(fleet: Fleet,
                                                           engine: sa.Engine) -> None:
    """Through the trace's overheat (GPU 1 of each host) and across an hour boundary, with
    node-a stopping midway and node-c's rows arriving with no maintenance of its own (as
    an imported host's): the rollups hold each sample once, and each host's overheat is
    one incident, the same as a rescan from scratch finds."""
    fleet.quiet.add("node-c")
    for step in range(250):
        if step == 200:
            fleet.services["node-a"].shutdown()
            fleet.alive.discard("node-a")
        fleet.step()
    with engine.connect() as conn:
        gpu_rows = conn.execute(sa.text("SELECT id, host, gpu_index FROM gpus")).all()
        for gpu_id, host, index in gpu_rows:
            marks = dict(conn.execute(sa.text(
                "SELECT resolution, done_until_ms FROM rollup_progress WHERE gpu_id = :g"),
                {"g": gpu_id}).all())
            assert marks["1h"] > START_MS, (host, index)  # an hour was completed
            raw = conn.execute(sa.text(
                "SELECT count(*) FROM samples WHERE gpu_id = :g AND ts_ms < :w"),
                {"g": gpu_id, "w": marks["1m"]}).scalar_one()
            minutes = conn.execute(sa.text(
                "SELECT coalesce(sum(n), 0) FROM samples_1m WHERE gpu_id = :g "
                "AND bucket_ms < :w"), {"g": gpu_id, "w": marks["1m"]}).scalar_one()
            hour_raw = conn.execute(sa.text(
                "SELECT count(*) FROM samples WHERE gpu_id = :g AND ts_ms < :w"),
                {"g": gpu_id, "w": marks["1h"]}).scalar_one()
            hours = conn.execute(sa.text(
                "SELECT coalesce(sum(n), 0) FROM samples_1h WHERE gpu_id = :g"),
                {"g": gpu_id}).scalar_one()
            assert raw > 0 and minutes == raw and hours == hour_raw, (host, index)
        found = conn.execute(sa.text(
            "SELECT g.host, g.gpu_index, i.start_ms, i.end_ms, i.peak_temp_c FROM incidents i "
            "JOIN gpus g ON g.id = i.gpu_id ORDER BY g.host, g.gpu_index, i.start_ms")).all()
    assert [(h, i) for h, i, *_ in found] == [(h, 1) for h in HOSTS]
    service = fleet.services["node-b"]
    service.incidents.rebuild()  # from scratch, over every GPU
    with engine.connect() as conn:
        again = conn.execute(sa.text(
            "SELECT g.host, g.gpu_index, i.start_ms, i.end_ms, i.peak_temp_c FROM incidents i "
            "JOIN gpus g ON g.id = i.gpu_id ORDER BY g.host, g.gpu_index, i.start_ms")).all()
    assert again == found
    assert all(row.last_error is None for row in maintenance_runs.rows(engine).values())
