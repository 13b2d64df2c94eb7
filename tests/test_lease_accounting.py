"""Leases held to account: which processes a lease covers (pids, Slurm job, container),
and the ``lease_exceeded`` / ``unleased_usage`` events the sampler records — once per
excursion, never per tick — end to end with the fake NVML's process memory changing over
injected time, shown in status, /metrics and the event log; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.leases.accounting import account, covered
from gpuhistory.leases.model import Covers, Lease
from gpuhistory.sampling.hardware import HardwareFacts, ProcessInfo
from gpuhistory.sampling.lease_watch import Observed, _observed
from tests.lease_rig import CAPACITY, Rig
from tests.test_metrics_endpoint import scrape_url

pytestmark = pytest.mark.postgres

MIB = 1024 * 1024


@dataclass(frozen=True)
class Proc:
    """A process as accounting sees it: a plain object, not a row."""

    pid: int
    used_memory_mib: int | None
    slurm_job_id: str | None = None
    container_id: str | None = None


def lease(name: str, mib: int, covers: Covers, lease_id: int = 1) -> Lease:
    return Lease(allocation_id=name, gpu_id=0, host="h", gpu_uuid="GPU-x", memory_mb=mib,
                 owner=None, ttl_seconds=60, granted_ms=0, expires_ms=10**9, id=lease_id,
                 gpu_db_id=1, covers=covers)


# -- the matching rule, on plain objects ---------------------------------------------------
def test_a_lease_covers_its_pids_its_slurm_job_and_its_container() -> None:
    """pid listed, same Slurm job, same container (or a 12+ character prefix of its id)
    are covered; a short prefix, another job, another pid are not."""
    full = "3f2a9c1b7d4e" + "0" * 52
    assert covered(Covers(pids=(7,)), Proc(7, 1))
    assert not covered(Covers(pids=(7,)), Proc(8, 1))
    assert covered(Covers(slurm_job="4711"), Proc(8, 1, slurm_job_id="4711"))
    assert not covered(Covers(slurm_job="4711"), Proc(8, 1, slurm_job_id="4712"))
    assert not covered(Covers(slurm_job="4711"), Proc(8, 1))
    assert covered(Covers(container=full), Proc(8, 1, container_id=full))
    assert covered(Covers(container="3f2a9c1b7d4e"), Proc(8, 1, container_id=full))
    assert not covered(Covers(container="3f2a9c"), Proc(8, 1, container_id=full))
    assert not covered(Covers(container="3f2a9c1b7d4e"), Proc(8, 1))
    assert not covered(Covers(), Proc(7, 1, "4711", full))


def test_account_sums_a_job_and_leaves_the_rest_unleased() -> None:
    """A job's two processes count against its lease; a process no lease covers is
    unleased; near capacity is leases >= the threshold % of capacity."""
    job = lease("job", 1000, Covers(slurm_job="4711"))
    found = account([job], [Proc(1, 600, "4711"), Proc(2, 500, "4711"), Proc(3, 300)],
                    capacity_mb=1100, near_capacity_pct=90)
    (use,) = found.leases
    assert (use.used_mib, use.reserved_mib, use.pids, use.exceeded) == (1100, 1000, (1, 2), True)
    assert (found.unleased_mib, found.unleased_pids) == (300, (3,))
    assert found.near_capacity and found.unleased_excursion
    assert not account([job], [Proc(3, 300)], 1112, 90).near_capacity  # 1000 < 90 % of 1112
    assert not account([], [Proc(3, 300)], 1000, 1).unleased_excursion  # no leases at all


def test_two_leases_of_one_job_are_judged_together() -> None:
    """Two leases covering the same processes are one group: 1500 MiB used against 2000
    reserved exceeds neither, though each lease alone reserved less than 1500."""
    a = lease("a", 1000, Covers(slurm_job="4711"), 1)
    b = lease("b", 1000, Covers(pids=(2,)), 2)
    other = lease("c", 100, Covers(pids=(9,)), 3)
    found = account([a, b, other], [Proc(1, 700, "4711"), Proc(2, 800, "4711"),
                                    Proc(9, 200)], 80_000, 90)
    uses = {u.lease.allocation_id: u for u in found.leases}
    assert uses["a"].group == uses["b"].group == ("a", "b")
    assert (uses["a"].used_mib, uses["a"].reserved_mib, uses["a"].exceeded) == (1500, 2000, False)
    assert (uses["c"].used_mib, uses["c"].exceeded) == (200, True)
    assert found.unleased_mib == 0


def test_attribution_is_read_defensively_from_rows() -> None:
    """The Slurm job and container come from the gpu_processes row when it has those
    columns (here a pending insert), and are None when it does not; memory is the
    process's current use, summed over its MIG entries."""
    facts = HardwareFacts(index=0, processes=[ProcessInfo(1, "a", 100), ProcessInfo(1, "a", 50),
                                              ProcessInfo(2, "b", 7), ProcessInfo(3, "c", None)])
    rows = {1: {"pid": 1, "slurm_job_id": 4711, "container_id": "abc"}, 2: {"pid": 2}}
    found = {p.pid: p for p in _observed(facts, rows)}
    assert found[1] == Observed(1, 150, "4711", "abc")
    assert (found[2].slurm_job_id, found[2].container_id) == (None, None)
    assert found[3].used_memory_mib is None


# -- end to end ----------------------------------------------------------------------------
@pytest.fixture
def rig(engine: sa.Engine, clock: FakeClock) -> Iterator[Rig]:
    built = Rig(engine, clock)
    yield built
    built.close()


def gauges(rig: Rig) -> tuple[dict[int, float], dict[int, float]]:
    _, samples = scrape_url(rig.url)
    exceeding = {int(s.labels["gpu"]): s.value
                 for s in samples["gpuhistory_gpu_lease_exceeding_leases"]}
    unleased = {int(s.labels["gpu"]): s.value
                for s in samples["gpuhistory_gpu_unleased_memory_bytes"]}
    return exceeding, unleased


def status(rig: Rig, index: int) -> dict:
    return requests.get(f"{rig.url}/api/gpu/status", params={"gpu_id": index},
                        timeout=10).json()


def test_lease_exceeded_once_per_excursion_end_to_end(rig: Rig) -> None:
    """A lease of 4000 MiB covering pid 5001: the process grows 3000 → 5000 MiB (one
    lease_exceeded, with lease id, allocation id, reserved and used MiB and pids), stays
    and grows further (nothing more), falls back within (nothing), grows past again (a
    second event). /metrics and status say whether it exceeds now; nothing is killed."""
    granted = rig.allocate({"allocation_id": "train", "memory_mb": 4000, "gpu_id": "any",
                            "pids": [5001], "owner": "alice"})
    assert granted.status_code == 201 and granted.json()["gpu_id"] == 0
    rig.run(0, (5001, 3000))
    rig.tick()
    assert rig.events("lease_exceeded") == []
    rig.run(0, (5001, 5000))
    rig.tick()
    (event,) = rig.events("lease_exceeded")
    lease_id = rig.leases.get("train").id
    assert event["gpu_id"] == 0
    assert {k: event["payload"][k] for k in ("lease_id", "allocation_id", "reserved_mib",
                                             "used_mib", "pids", "owner")} == {
        "lease_id": lease_id, "allocation_id": "train", "reserved_mib": 4000,
        "used_mib": 5000, "pids": [5001], "owner": "alice"}
    assert gauges(rig)[0][0] == 1.0
    doc = status(rig, 0)["lease_accounting"]
    assert doc["leases"] == [{"allocation_id": "train", "used_mib": 5000, "reserved_mib": 4000,
                              "pids": [5001], "exceeded": True}]
    rig.run(0, (5001, 6000))
    rig.tick(times=3)
    assert len(rig.events("lease_exceeded")) == 1
    rig.run(0, (5001, 3500))
    rig.tick()
    assert len(rig.events("lease_exceeded")) == 1 and gauges(rig)[0][0] == 0.0
    rig.run(0, (5001, 4500))
    rig.tick()
    second = rig.events("lease_exceeded")
    assert len(second) == 2 and second[-1]["payload"]["used_mib"] == 4500
    assert rig.nvml.devices[0].processes == [(5001, 4500 * MIB)]  # untouched, never killed


def test_a_slurm_job_lease_covers_the_jobs_processes_as_proc_places_them(
        engine: sa.Engine, clock: FakeClock, tmp_path) -> None:
    """A lease naming Slurm job 4711 and no pid: the two processes whose /proc cgroup puts
    them in job 4711 are covered together (3000 + 2500 MiB past its 5000: one
    lease_exceeded naming both pids), while a process of another job on the same GPU is
    not counted against it (it is the unleased use)."""
    from tests.fake_proc import FakeProc

    proc = FakeProc(tmp_path / "proc")
    proc.add(6001, uid=1000, cgroup="0::/system.slice/slurmstepd.scope/job_4711/step_0/user/task_0")
    proc.add(6002, uid=1000, cgroup="0::/system.slice/slurmstepd.scope/job_4711/step_0/user/task_1")
    proc.add(6003, uid=1001, cgroup="0::/system.slice/slurmstepd.scope/job_9999/step_0/user/task_0")
    built = Rig(engine, clock, proc=proc.reader())
    try:
        granted = built.allocate({"allocation_id": "job4711", "memory_mb": 5000, "gpu_id": 0,
                                  "slurm_job": "4711", "pids": []})
        assert granted.status_code == 201, granted.text
        built.run(0, (6001, 2000), (6002, 2500), (6003, 9000))
        built.tick()
        assert built.events("lease_exceeded") == []  # 4500 of 5000: within
        built.run(0, (6001, 3000), (6002, 2500), (6003, 9000))
        built.tick()
        (event,) = built.events("lease_exceeded")
        assert (event["payload"]["used_mib"], sorted(event["payload"]["pids"])) == (
            5500, [6001, 6002])
    finally:
        built.close()


def test_an_excursion_survives_a_restart_without_a_second_event(rig: Rig) -> None:
    """A sampler started again over the same log while a lease is still exceeded does not
    record that excursion again; once it ends and starts anew, it does."""
    rig.allocate({"allocation_id": "train", "memory_mb": 4000, "pids": [5001]})
    rig.run(0, (5001, 5000))
    rig.tick()
    rig.restart_sampler()
    rig.tick(times=2)
    assert len(rig.events("lease_exceeded")) == 1
    rig.run(0, (5001, 100))
    rig.tick()
    rig.run(0, (5001, 5000))
    rig.tick()
    assert len(rig.events("lease_exceeded")) == 2


def test_a_lease_that_ends_ends_its_excursion(rig: Rig) -> None:
    """After the exceeded lease is released, the same use under a new lease covering the
    process is a new excursion (a new event); the released lease is no longer counted."""
    first = rig.allocate({"allocation_id": "a", "memory_mb": 1000, "pids": [5001]}).json()
    rig.run(0, (5001, 2000))
    rig.tick()
    requests.post(f"{rig.url}/api/gpu/memory/deallocate",
                  json={"allocation_id": "a", "lease_token": first["lease_token"]}, timeout=10)
    rig.tick()
    assert gauges(rig)[0][0] == 0.0
    rig.allocate({"allocation_id": "b", "memory_mb": 1000, "pids": [5001]})
    rig.tick()
    assert [e["payload"]["allocation_id"] for e in rig.events("lease_exceeded")] == ["a", "b"]


def test_unleased_usage_once_per_excursion_end_to_end(rig: Rig) -> None:
    """Leases hold 75000 of 81047 MiB (>= 90 %) on GPU 0; pid 6001, covered by no lease,
    starts using 1000 MiB: one unleased_usage (MiB, pids, leased and capacity), not one per
    tick; it leaves and comes back: a second. /metrics shows the unleased bytes."""
    rig.allocate({"allocation_id": "big", "memory_mb": 75_000, "gpu_id": 0, "pids": [5001]})
    rig.run(0, (5001, 70_000), (6001, 1000))
    rig.tick(times=3)
    (event,) = rig.events("unleased_usage")
    assert event["gpu_id"] == 0 and event["payload"] == {
        "unleased_mib": 1000, "pids": [6001], "leased_mb": 75_000, "capacity_mb": CAPACITY,
        "near_capacity_pct": 90}
    assert gauges(rig)[1][0] == 1000 * MIB
    assert status(rig, 0)["lease_accounting"]["unleased_usage"] is True
    rig.run(0, (5001, 70_000))
    rig.tick()
    assert gauges(rig)[1][0] == 0.0
    rig.run(0, (5001, 70_000), (6002, 300))
    rig.tick()
    events = rig.events("unleased_usage")
    assert len(events) == 2 and events[1]["payload"]["pids"] == [6002]
    assert rig.events("lease_exceeded") == []


def test_unleased_usage_waits_for_the_near_capacity_setting(rig: Rig) -> None:
    """Below lease_near_capacity_pct nothing is recorded (10000 MiB leased is 12 % of the
    GPU), though the gauge shows the unleased memory; with the setting changed to 10 at
    run time, the next tick records it."""
    rig.allocate({"allocation_id": "a", "memory_mb": 10_000, "gpu_id": 1})
    rig.run(1, (7001, 500))
    rig.tick(times=2)
    assert rig.events("unleased_usage") == []
    assert gauges(rig)[1][1] == 500 * MIB
    changed = requests.put(f"{rig.url}/api/gpu/config", json={"lease_near_capacity_pct": 10},
                           timeout=10)
    assert changed.status_code == 200, changed.text
    rig.tick()
    (event,) = rig.events("unleased_usage")
    assert event["payload"]["near_capacity_pct"] == 10


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_the_per_tick_lease_read_is_an_index_seek(engine: sa.Engine) -> None:
    """The sampler's read of the active leases (once per hardware tick while processes
    run), as active_leases sends it, seeks ix_leases_gpu_released by GPU and unreleased,
    never scans the leases."""
    from gpuhistory.leases.manager import active_leases

    sent: list[tuple[str, tuple]] = []

    def capture(_conn, _cursor, sql, parameters, _context, _many) -> None:
        sent.append((sql, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as conn:
            assert active_leases(conn, [1, 2], 5) == []
            sql, parameters = sent[-1]
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", parameters).all()
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    text = "\n".join(r[-1] for r in rows)
    assert "SEARCH leases USING INDEX ix_leases_gpu_released (gpu_id=? AND released_ms=?)" \
        in text, text
    assert "SCAN leases" not in text, text
