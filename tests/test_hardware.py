"""What was running and what the hardware did: processes, throttle counters, XIDs in the log.

The NVML backend runs against the fake pynvml; the sampler writes to a migrated SQLite file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.sampling.backend import HardwareSource
from gpuhistory.sampling.hardware import COUNTER_NAMES
from gpuhistory.sampling.nvml import NvmlBackend
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.sampler import Sampler, default_hardware_every
from gpuhistory.sampling.sim import SIM_PID_BASE, SimBackend
from gpuhistory.storage.log import LogStore
from tests import fake_pynvml
from tests.conftest import FLEET4, sqlite_only
from tests.fake_proc import FakeProc
from tests.fake_pynvml import MIB, POWER_CAP, FakeNvml, h100, scenario

pytestmark = pytest.mark.postgres

PID = 31337


def make_sampler(engine: sa.Engine, clock: FakeClock, backend: Any,
                 **kwargs: Any) -> Sampler:
    store = LogStore(engine, "testhost")
    pipeline = Pipeline(store, backend.name, lambda: DEFAULT_CONFIG)
    pipeline.restore(clock.now_ms())
    return Sampler(backend, pipeline, store, clock, interval=kwargs.pop("interval", 1.0),
                   **kwargs)


def nvml_backend(nvml: FakeNvml, clock: FakeClock) -> NvmlBackend:
    return NvmlBackend(nvml=nvml, clock=clock, process_names=False)  # type: ignore[arg-type]


def rows(engine: sa.Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql))]


def events(engine: sa.Engine, kind: str) -> list[tuple[int, dict[str, Any]]]:
    query = sa.text("SELECT ts_ms, payload FROM events WHERE kind = :kind ORDER BY id"
                    ).columns(ts_ms=sa.BigInteger, payload=sa.JSON)
    with engine.connect() as conn:
        return [(ts, payload) for ts, payload in conn.execute(query, {"kind": kind})]


@pytest.fixture
def nvml() -> FakeNvml:
    return scenario("one_h100")


def test_process_appearing_and_exiting(engine, clock, nvml) -> None:
    """One process: exactly one process_started, one process_exited and one row."""
    sampler = make_sampler(engine, clock, nvml_backend(nvml, clock))
    sampler.tick()
    clock.advance(1)
    nvml.devices[0].processes = [(PID, 1000 * MIB)]
    sampler.tick()
    started_ms = clock.now_ms()
    for used in (30_000, 60_000, 60_000, 45_000):  # it grows, then shrinks
        clock.advance(1)
        nvml.devices[0].processes = [(PID, used * MIB)]
        sampler.tick()
    last_seen_ms = clock.now_ms()
    clock.advance(1)
    nvml.devices[0].processes = []
    sampler.tick()
    clock.advance(1)
    sampler.tick()
    assert events(engine, "process_started") == [
        (started_ms, {"pid": PID, "name": None, "used_memory_mib": 1000})]
    assert events(engine, "process_exited") == [
        (clock.now_ms() - 1000, {"pid": PID, "name": None, "used_memory_mib": 60_000})]
    assert rows(engine, "SELECT pid, name, used_memory_mib, first_seen_ms, last_seen_ms, "
                        "ended_ms FROM gpu_processes") == [
        (PID, None, 60_000, started_ms, last_seen_ms, clock.now_ms() - 1000)]


def test_processes_are_rows_per_gpu_and_pid(engine, clock) -> None:
    """Two GPUs, a process on each and one on both: a row per (GPU, pid), with names."""
    nvml = scenario("four_h100")
    nvml.devices[0].processes = [(10, MIB), (11, 2 * MIB)]
    nvml.devices[3].processes = [(11, 3 * MIB)]
    backend = NvmlBackend(nvml=nvml, clock=clock, process_names=True)  # type: ignore[arg-type]
    sampler = make_sampler(engine, clock, backend)
    sampler.tick()
    clock.advance(1)
    sampler.tick()
    assert rows(engine, "SELECT g.gpu_index, p.pid, p.used_memory_mib FROM gpu_processes p "
                        "JOIN gpus g ON g.id = p.gpu_id ORDER BY 1, 2") == [
        (0, 10, 1), (0, 11, 2), (3, 11, 3)]
    assert len(events(engine, "process_started")) == 3


def test_pid_reused_by_another_program_is_a_new_process(engine, clock, nvml,
                                                        tmp_path) -> None:
    """The same pid with another name between two reads: the old one exited."""
    proc = FakeProc(tmp_path / "proc")
    proc.add(PID, name="trainer")
    backend = NvmlBackend(nvml=nvml, clock=clock, process_names=True,  # type: ignore[arg-type]
                          proc=proc.reader())
    sampler = make_sampler(engine, clock, backend)
    nvml.devices[0].processes = [(PID, MIB)]
    sampler.tick()
    clock.advance(1)
    nvml.devices[0].processes = []
    backend.read_hardware()  # the pid left between two ticks (read outside the sampler)
    proc.remove(PID)
    proc.add(PID, name="server")
    nvml.devices[0].processes = [(PID, MIB)]
    sampler.tick()
    assert [p["name"] for _, p in events(engine, "process_started")] == ["trainer", "server"]
    assert [p["name"] for _, p in events(engine, "process_exited")] == ["trainer"]
    assert rows(engine, "SELECT name, ended_ms IS NULL FROM gpu_processes ORDER BY id") == [
        ("trainer", 0), ("server", 1)]


def test_counters_unchanged_write_only_the_baseline(engine, clock, nvml) -> None:
    """An idle card: one baseline row, then nothing however many ticks."""
    sampler = make_sampler(engine, clock, nvml_backend(nvml, clock))
    for _ in range(10):
        sampler.tick()
        clock.advance(1)
    assert rows(engine, "SELECT count(*), min(power_cap_ns) FROM throttle_counters") == [(1, 0)]


def test_counters_advancing_write_rows(engine, clock, nvml) -> None:
    """Power-capped for a while: a row for each tick the counter moved, stamped like the
    tick's sample; NULL for a counter the card does not have."""
    del nvml.devices[0].counters[fake_pynvml.POWER_BRAKE]
    sampler = make_sampler(engine, clock, nvml_backend(nvml, clock))
    sampler.tick()
    for step in range(1, 4):
        clock.advance(1)
        nvml.devices[0].counters[POWER_CAP] = step * 800_000_000
        sampler.tick()
    clock.advance(1)
    sampler.tick()
    got = rows(engine, "SELECT ts_ms, power_cap_ns, sw_thermal_ns, power_brake_ns "
                       "FROM throttle_counters ORDER BY ts_ms")
    start = clock.now_ms() - 4000
    assert got == [(start + i * 1000, i * 800_000_000, 0, None) for i in range(4)]
    sample_ts = {r[0] for r in rows(engine, "SELECT ts_ms FROM samples")}
    assert {r[0] for r in got} <= sample_ts


def test_counters_not_supported_write_nothing(engine, clock) -> None:
    """A card with none of the counters: no rows at all, and NVML is not asked again."""
    nvml = scenario("one_rtx4090")
    sampler = make_sampler(engine, clock, nvml_backend(nvml, clock))
    for _ in range(3):
        sampler.tick()
        clock.advance(1)
    assert rows(engine, "SELECT count(*) FROM throttle_counters") == [(0,)]
    assert [fid for ids in nvml.field_requests for fid in ids
            if fid in fake_pynvml.COUNTER_FIELDS] == list(fake_pynvml.COUNTER_FIELDS)


def test_xid_becomes_an_event_on_its_gpu(engine, clock) -> None:
    """XID 79 pending in the event set: one `xid` event with the code, on GPU 2's row."""
    nvml = scenario("four_h100")
    sampler = make_sampler(engine, clock, nvml_backend(nvml, clock))
    seen: list[Any] = []
    sampler.callbacks.register("xid", seen.append)
    sampler.tick()
    nvml.xid(2, 79)
    clock.advance(1)
    sampler.tick()
    clock.advance(1)
    sampler.tick()
    assert events(engine, "xid") == [(clock.now_ms() - 1000, {"code": 79})]
    assert rows(engine, "SELECT g.gpu_index FROM events e JOIN gpus g ON g.id = e.gpu_id "
                        "WHERE e.kind = 'xid'") == [(2,)]
    assert [(e.gpu_id, e.payload) for e in seen] == [(2, {"code": 79})]


def test_event_sets_not_supported_sampling_continues(engine, clock) -> None:
    nvml = scenario("no_event_sets")
    nvml.devices[0].processes = [(PID, MIB)]
    backend = nvml_backend(nvml, clock)
    sampler = make_sampler(engine, clock, backend)
    for _ in range(3):
        sampler.tick()
        clock.advance(1)
    assert rows(engine, "SELECT count(*) FROM samples") == [(3,)]
    assert rows(engine, "SELECT count(*) FROM gpu_processes") == [(1,)]
    assert "XID events not supported" in (backend.health().detail or "")
    assert sampler.hardware_error is None


class RaisingHardware:
    """A backend whose hardware read raises (a bug, a binding surprise)."""

    def __init__(self, inner: NvmlBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.fail = True

    def read(self):
        return self.inner.read()

    def identities(self):
        return self.inner.identities()

    def health(self):
        return self.inner.health()

    def close(self) -> None:
        self.inner.close()

    def read_hardware(self):
        if self.fail:
            raise RuntimeError("hardware read exploded")
        return self.inner.read_hardware()


def test_failing_hardware_read_never_fails_the_tick(engine, clock, nvml) -> None:
    nvml.devices[0].processes = [(PID, MIB)]
    backend = RaisingHardware(nvml_backend(nvml, clock))
    assert isinstance(backend, HardwareSource)
    sampler = make_sampler(engine, clock, backend)
    sampler.tick()
    assert rows(engine, "SELECT count(*) FROM samples") == [(1,)]
    assert sampler.hardware_error == "RuntimeError: hardware read exploded"
    assert rows(engine, "SELECT count(*) FROM gpu_processes") == [(0,)]
    backend.fail = False
    clock.advance(1)
    sampler.tick()
    assert sampler.hardware_error is None
    assert rows(engine, "SELECT count(*) FROM samples") == [(2,)]
    assert rows(engine, "SELECT count(*) FROM gpu_processes") == [(1,)]


def test_failed_write_is_recomputed_on_the_next_tick(engine, clock, nvml,
                                                    monkeypatch) -> None:
    """The tracker remembers only what was committed: a lost tick loses no process."""
    sampler = make_sampler(engine, clock, nvml_backend(nvml, clock))
    sampler.tick()
    nvml.devices[0].processes = [(PID, MIB)]
    original = sampler.store.write

    def fail_once(record, conn=None):
        monkeypatch.setattr(sampler.store, "write", original)
        raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(sampler.store, "write", fail_once)
    clock.advance(1)
    sampler.safe_tick()
    assert sampler.last_tick is not None and sampler.last_tick.error
    clock.advance(1)
    sampler.tick()
    assert len(events(engine, "process_started")) == 1
    assert rows(engine, "SELECT count(*) FROM gpu_processes") == [(1,)]


def test_restart_writes_no_duplicate_start_or_counter_row(engine, clock) -> None:
    """A new process on the same log: a process still running is not started again, an
    unchanged counter writes no row, and a process gone while we were down is ended."""
    nvml = scenario("one_h100")
    nvml.devices[0].processes = [(PID, MIB), (PID + 1, MIB)]
    nvml.devices[0].counters[POWER_CAP] = 7
    first = make_sampler(engine, clock, nvml_backend(nvml, clock))
    first.tick()
    clock.advance(1)
    first.tick()
    first.stop()  # not started: a no-op, as a crash would be
    clock.advance(30)
    nvml.devices[0].processes = [(PID, MIB)]  # PID + 1 ended during the downtime
    second = make_sampler(engine, clock, nvml_backend(nvml, clock))
    assert set(second.pipeline.hardware.running[1]) == {PID, PID + 1}
    second.tick()
    clock.advance(1)
    second.tick()
    assert [p["pid"] for _, p in events(engine, "process_started")] == [PID, PID + 1]
    assert events(engine, "process_exited") == [
        (clock.now_ms() - 1000, {"pid": PID + 1, "name": None, "used_memory_mib": 1})]
    assert rows(engine, "SELECT pid, ended_ms IS NULL FROM gpu_processes ORDER BY pid") == [
        (PID, 1), (PID + 1, 0)]
    assert rows(engine, "SELECT count(*) FROM throttle_counters") == [(1,)]


def test_last_seen_is_refreshed_once_a_minute_and_made_exact_on_stop(engine, clock,
                                                                    nvml) -> None:
    nvml.devices[0].processes = [(PID, MIB)]
    sampler = make_sampler(engine, clock, nvml_backend(nvml, clock))
    sampler.tick()
    first = clock.now_ms()
    for _ in range(90):
        clock.advance(1)
        sampler.tick()
    assert rows(engine, "SELECT last_seen_ms FROM gpu_processes") == [(first + 60_000,)]
    from apscheduler.schedulers.background import BackgroundScheduler

    sampler.attach(BackgroundScheduler(timezone="UTC"))  # as if started (never run)
    sampler._job_interval = 1.0
    assert sampler.stop()
    assert rows(engine, "SELECT last_seen_ms, ended_ms FROM gpu_processes") == [
        (clock.now_ms(), None)]


def test_hardware_every(engine, clock, nvml) -> None:
    """Every tick at intervals of 1 s or more, about once a second below; or as told."""
    assert [default_hardware_every(s) for s in (0.1, 0.25, 0.3, 0.5, 1, 3, 60)] == [
        10, 4, 4, 2, 1, 1, 1]
    sampler = make_sampler(engine, clock, nvml_backend(nvml, clock), interval=0.25)
    for _ in range(9):
        sampler.tick()
        clock.advance(0.25)
    assert nvml.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 3  # ticks 1, 5, 9
    told = make_sampler(engine, clock, nvml_backend(scenario("one_h100"), clock),
                        hardware_every=3)
    for _ in range(7):
        told.tick()
    assert told.backend.nvml.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 3


def test_backend_without_hardware_facts_is_fine(engine, clock) -> None:
    """A backend with no read_hardware (an old plug-in) samples as before."""
    class Plain:
        name = "nvml"

        def __init__(self) -> None:
            self.inner = NvmlBackend(nvml=scenario("one_h100"), clock=clock)  # type: ignore[arg-type]

        def read(self):
            return self.inner.read()

        def identities(self):
            return self.inner.identities()

        def health(self):
            return self.inner.health()

        def close(self) -> None:
            self.inner.close()

    sampler = make_sampler(engine, clock, Plain())
    sampler.tick()
    assert rows(engine, "SELECT count(*) FROM samples") == [(1,)]
    assert rows(engine, "SELECT count(*) FROM throttle_counters") == [(0,)]


# -- the simulated backend -------------------------------------------------------------------
def test_sim_fleet_trace_shows_processes_and_power_cap_time(engine, clock) -> None:
    """Replaying the fleet trace: a process on each GPU while it is busy (none on idle
    GPU 3), and GPU 0's power-cap time growing through its load, then holding still."""
    backend = SimBackend(clock, trace=FLEET4)
    sampler = make_sampler(engine, clock, backend, interval=3.0)
    for _ in range(0, 261, 3):
        sampler.tick()
        clock.advance(3)
    started = {(p["pid"], p["name"]) for _, p in events(engine, "process_started")}
    assert started == {(SIM_PID_BASE, "python3"), (SIM_PID_BASE + 1, "python3"),
                       (SIM_PID_BASE + 2, "python3")}
    assert [p["pid"] for _, p in events(engine, "process_exited")] == [
        SIM_PID_BASE, SIM_PID_BASE + 1]  # GPU 2 is still busy when the trace ends
    peak = rows(engine, "SELECT max(used_memory_mib) FROM gpu_processes")[0][0]
    assert peak == 63020 - 480
    power_cap = rows(engine, "SELECT t.ts_ms, t.power_cap_ns FROM throttle_counters t "
                             "JOIN gpus g ON g.id = t.gpu_id WHERE g.gpu_index = 0 "
                             "ORDER BY t.ts_ms")
    values = [v for _, v in power_cap]
    assert values == sorted(values) and values[0] == 0
    assert 170e9 < values[-1] < 190e9  # ~180 s power-capped during the load
    start = power_cap[0][0]
    during = [v for ts, v in power_cap if start + 30_000 <= ts <= start + 190_000]
    assert len(during) > 40  # a row a tick while it grows
    assert rows(engine, "SELECT count(*) FROM throttle_counters t JOIN gpus g "
                        "ON g.id = t.gpu_id WHERE g.gpu_index = 3") == [(1,)]  # idle: baseline


def test_sim_counters_do_not_depend_on_how_often_they_are_read(clock) -> None:
    backend = SimBackend(clock, trace=FLEET4)
    clock.advance(120.05)
    once = backend.read_hardware()[0].counters
    again = backend.read_hardware()[0].counters
    assert once == again and once is not None
    assert set(once) == set(COUNTER_NAMES)
    assert once["power_cap_ns"] == pytest.approx(99.35e9, abs=0.2e9)  # capped since 20.7 s
    assert once["hw_thermal_ns"] == 0


def test_sim_energy_integrates_the_trace_power_and_keeps_counting_across_loops(clock) -> None:
    """The sim's energy counter is the trace's power integrated over time (mJ): the same
    whenever read, the average power times the seconds played, growing over a loop; the
    other reliability counters are absent (None), as on a card without them."""
    backend = SimBackend(clock, trace=FLEET4)
    first = backend.read_hardware()[0].reliability
    assert first is not None and first["energy_mj"] == 0
    assert {k for k, v in first.items() if v is not None} == {"energy_mj"}
    clock.advance(10)
    ten = backend.read_hardware()[0].reliability["energy_mj"]
    readings = backend.read()  # the 10 s so far drew between the trace's min and max power
    assert ten > 0 and readings[0].power_w is not None
    assert backend.read_hardware()[0].reliability["energy_mj"] == ten
    clock.advance(backend.duration_s)  # one whole loop later: a loop's energy more
    looped = backend.read_hardware()[0].reliability["energy_mj"]
    clock.advance(backend.duration_s)
    twice = backend.read_hardware()[0].reliability["energy_mj"]
    assert looped > ten and twice - looped == pytest.approx(looped - ten, rel=1e-6)


# -- the schema --------------------------------------------------------------------------------
@sqlite_only
def test_throttle_counters_is_without_rowid(db_path: Path, engine) -> None:
    with sqlite3.connect(db_path) as conn:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name='throttle_counters'"
                           ).fetchone()[0]
    assert "WITHOUT ROWID" in sql and "PRIMARY KEY (gpu_id, ts_ms)" in sql


def test_h100_fake_default_counts_nothing(clock) -> None:
    """The default fake card is idle: every counter zero, no processes."""
    (facts,) = NvmlBackend(nvml=FakeNvml([h100(0)]), clock=clock).read_hardware()  # type: ignore[arg-type]
    assert facts.processes == [] and set((facts.counters or {}).values()) == {0}


def test_failure_while_comparing_facts_adds_nothing_to_the_tick(engine, clock, nvml,
                                                               monkeypatch) -> None:
    nvml.devices[0].processes = [(PID, MIB)]
    sampler = make_sampler(engine, clock, nvml_backend(nvml, clock))

    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(sampler.pipeline.hardware, "diff", broken)
    sampler.tick()
    assert rows(engine, "SELECT count(*) FROM samples") == [(1,)]
    assert rows(engine, "SELECT count(*) FROM gpu_processes") == [(0,)]
    assert sampler.hardware_error == "KeyError: 'surprise'"
