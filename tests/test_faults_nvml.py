"""Faults at the NVML boundary, through the real sampler, log and HTTP API.

A fake pynvml (tests/fake_pynvml.py) injects what drivers do when they go wrong: a call
that hangs, nvmlInit that hangs, absurd values, errors on one GPU, the wall clock stepping.
Each test says what the service must do: keep sampling the healthy GPUs, record the fault
as events, report degraded health, and recover by itself. (The per-error scenarios of the
backend alone — NOT_SUPPORTED, GPU_IS_LOST, UNKNOWN, TIMEOUT, init failing — are in
tests/test_nvml_backend.py; here they run through the whole service.)
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import apscheduler.schedulers.base
import apscheduler.triggers.interval
import pytest
import requests
import sqlalchemy as sa

from gpuhistory.clock import FakeClock, SystemClock
from gpuhistory.domain.config import DEFAULT_CONFIG, Config
from gpuhistory.sampling.nvml import NvmlBackend
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.sampler import Sampler
from gpuhistory.storage.log import LogStore
from tests.fake_pynvml import FakeNvml, scenario

HANG_TIMEOUT_S = 0.2  # how long a read waits for a hung call in these tests


def eventually(predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Poll until ``predicate()`` is true (a thread finishing late), bounded."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def fakes() -> Iterator[list[FakeNvml]]:
    """Fakes made by a test; every hung call is released when it ends."""
    made: list[FakeNvml] = []
    yield made
    for nvml in made:
        nvml.release_all()


@pytest.fixture
def make_backend(clock: FakeClock, fakes: list[FakeNvml]) -> Iterator[Callable[..., NvmlBackend]]:
    backends: list[NvmlBackend] = []

    def make(nvml: FakeNvml, **kwargs: object) -> NvmlBackend:
        fakes.append(nvml)
        kwargs.setdefault("timeout_s", HANG_TIMEOUT_S)
        backend = NvmlBackend(nvml=nvml, clock=clock, **kwargs)  # type: ignore[arg-type]
        backends.append(backend)
        return backend

    yield make
    for nvml in fakes:
        nvml.release_all()
    for backend in backends:
        backend.close()


def sampler_on(engine: sa.Engine, clock: FakeClock, backend: NvmlBackend,
               config: Config = DEFAULT_CONFIG) -> Sampler:
    store = LogStore(engine, "testhost")
    pipeline = Pipeline(store, backend.name, lambda: config)
    pipeline.restore(clock.now_ms())
    return Sampler(backend, pipeline, store, clock, interval=1.0)


def events(engine: sa.Engine, kind: str) -> list[tuple[int | None, dict]]:
    with engine.connect() as conn:
        return [(row.gpu_index, row.payload) for row in conn.execute(sa.text(
            "SELECT g.gpu_index, e.payload FROM events e LEFT JOIN gpus g ON g.id = e.gpu_id "
            "WHERE e.kind = :kind ORDER BY e.id"), {"kind": kind})]


def samples(engine: sa.Engine, gpu_index: int, column: str = "state") -> list:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.text(
            f"SELECT s.{column} FROM samples s JOIN gpus g ON g.id = s.gpu_id "
            "WHERE g.gpu_index = :i ORDER BY s.ts_ms"), {"i": gpu_index})]


def parse_payload(payload: object) -> dict:
    import json

    return payload if isinstance(payload, dict) else json.loads(str(payload))


# -- a call that hangs ---------------------------------------------------------------------
def test_hung_call_on_one_gpu_is_bounded_and_the_others_are_read(make_backend) -> None:
    """GPU 2's power read never returns: the read gives up on it after the timeout, reports
    it unavailable naming what hung, and still reads GPUs 0, 1 and 3."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    backend.read()
    nvml.hang(2, "nvmlDeviceGetPowerUsage")
    readings = backend.read()
    assert [r.available for r in readings] == [True, True, False, True]
    assert readings[2].error == f"NVML did not answer within {HANG_TIMEOUT_S:g} s (reading power)"
    assert readings[2].uuid == "GPU-fake-h100-0002"
    health = backend.health()
    assert health.ok and "GPU 2: NVML did not answer" in (health.detail or "")


def test_hung_gpu_is_left_alone_until_its_call_returns_then_read_afresh(make_backend) -> None:
    """While its call hangs, the GPU is not asked again (no thread piles up per tick); once
    the call returns, its handle is acquired afresh and it is read as before."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    backend.read()
    release = nvml.hang(1, "nvmlDeviceGetTemperature")
    for _ in range(5):
        assert [r.available for r in backend.read()] == [True, False, True, True]
    assert nvml.hung_calls["nvmlDeviceGetTemperature"] == 1
    handles = nvml.calls["nvmlDeviceGetHandleByIndex"]
    release.set()
    eventually(lambda: all(r.available for r in backend.read()))
    assert nvml.calls["nvmlDeviceGetHandleByIndex"] == handles + 1  # a fresh handle
    assert "GPU 1" not in (backend.health().detail or "")


def test_every_gpu_hung_a_wedged_driver_stays_bounded(make_backend) -> None:
    """All four GPUs hang: the first read gives up on each in turn; later reads ask none of
    them and return at once with all four unavailable."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    backend.read()
    for i in range(4):
        nvml.hang(i, "nvmlDeviceGetMemoryInfo")
    assert [r.available for r in backend.read()] == [False] * 4
    assert nvml.hung_calls["nvmlDeviceGetMemoryInfo"] == 4
    assert [r.available for r in backend.read()] == [False] * 4
    assert nvml.hung_calls["nvmlDeviceGetMemoryInfo"] == 4  # nobody asked again
    nvml.release_all()
    eventually(lambda: all(r.available for r in backend.read()))


def test_hung_nvml_init_reports_known_gpus_unavailable_then_recovers(make_backend) -> None:
    """NVML shut down under us and the re-init hangs: the known GPUs are reported unavailable
    (not an endless wait), health says why; when nvmlInit returns, reads resume."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    backend.read()
    nvml.refcount = 0  # another user's nvmlShutdown
    release = nvml.hang_init()
    assert {r.error for r in backend.read()} == {"Uninitialized"}
    readings = backend.read()
    assert [r.uuid for r in readings] == [f"GPU-fake-h100-{i:04d}" for i in range(4)]
    assert {r.error for r in readings} == {
        f"nvmlInit did not answer within {HANG_TIMEOUT_S:g} s"}
    assert backend.read()[0].error == readings[0].error  # no second init while one hangs
    assert nvml.calls["nvmlInit"] == 2
    health = backend.health()
    assert not health.ok and "nvmlInit has not returned" in (health.detail or "")
    release.set()
    eventually(lambda: all(r.available for r in backend.read()))
    assert backend.health().ok


def test_first_nvml_init_hangs_then_answers(make_backend) -> None:
    """An init that hangs at start-up: no GPUs yet, health not ok, nothing blocks; the GPUs
    appear once it returns."""
    nvml = scenario("four_h100")
    release = nvml.hang_init()
    backend = make_backend(nvml)
    assert backend.read() == []
    assert backend.identities() == []
    assert not backend.health().ok
    release.set()
    eventually(lambda: len(backend.read()) == 4)


def test_hung_hardware_read_keeps_the_facts_gathered_and_marks_the_gpu(make_backend) -> None:
    """The process list of GPU 1 hangs: facts of GPU 0 come back, GPU 1 is hung for read()
    too, and everything recovers once the call returns."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    backend.read()
    release = nvml.hang(1, "nvmlDeviceGetComputeRunningProcesses_v3")
    facts = backend.read_hardware()
    assert [f.index for f in facts] == [0]
    assert [r.available for r in backend.read()] == [True, False, True, True]
    release.set()
    eventually(lambda: all(r.available for r in backend.read()))
    assert [f.index for f in backend.read_hardware()] == [0, 1, 2, 3]


def test_hang_in_the_hardware_part_of_a_combined_read_keeps_the_readings(
    make_backend,
) -> None:
    """read_with_hardware (one hand-off for a tick's readings and facts): a hang while
    listing GPU 2's processes leaves every reading whole and the facts gathered before it;
    GPU 2 is hung from the next read on, until the call returns."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    backend.read()
    release = nvml.hang(2, "nvmlDeviceGetComputeRunningProcesses_v3")
    readings, facts, error = backend.read_with_hardware()
    assert [r.available for r in readings] == [True] * 4 and error is None
    assert [f.index for f in facts] == [0, 1]
    assert [r.available for r in backend.read()] == [True, True, False, True]
    release.set()
    eventually(lambda: all(r.available for r in backend.read()))
    assert [f.index for f in backend.read_with_hardware()[1]] == [0, 1, 2, 3]


def test_hung_event_set_disables_xid_events_not_sampling(make_backend,
                                                         monkeypatch) -> None:
    """Waiting on the XID event set hangs: XIDs are given up (health says so), GPUs and
    their other facts are still read."""
    nvml = scenario("one_h100")
    backend = make_backend(nvml)
    backend.read_hardware()
    wait = nvml.nvmlEventSetWait_v2
    released = nvml.hang_init()  # any event: set by release_all at the end

    def hanging_wait(event_set: object, timeout_ms: int) -> object:
        released.wait(30)
        return wait(event_set, timeout_ms)

    monkeypatch.setattr(nvml, "nvmlEventSetWait_v2", hanging_wait)
    assert backend.read_hardware() == []
    assert "XID events unavailable: the event set did not answer" in (
        backend.health().detail or "")
    monkeypatch.setattr(nvml, "nvmlEventSetWait_v2", wait)
    assert backend.read()[0].available
    (facts,) = backend.read_hardware()
    assert facts.counters is not None and facts.xids == []


def test_sampler_logs_a_hung_gpu_as_lost_and_found(make_backend, engine, clock) -> None:
    """Through the sampler: the hung GPU turns UNAVAILABLE with gpu_lost (the error names the
    hang), the other three keep their samples, and gpu_found follows once it answers."""
    nvml = scenario("four_h100")
    sampler = sampler_on(engine, clock, make_backend(nvml))
    sampler.tick()
    release = nvml.hang(3, "nvmlDeviceGetClockInfo")
    for _ in range(3):
        clock.advance(1)
        sampler.tick()
    assert samples(engine, 3) == [0, 4, 4, 4]
    assert all(samples(engine, i) == [0, 0, 0, 0] for i in range(3))
    ((index, payload),) = events(engine, "gpu_lost")
    assert index == 3 and "did not answer within" in parse_payload(payload)["error"]
    release.set()
    clock.advance(1)
    eventually(lambda: sampler.tick() and samples(engine, 3)[-1] == 0)
    assert [i for i, _ in events(engine, "gpu_found")] == [3]


# -- absurd values -------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value", "column"), [
    ("temperature", 255, "temperature_c"),
    ("temperature", 0, "temperature_c"),
    ("memory_used", 81560 * 1024 * 1024, "memory_used_mib"),  # more than the card has
    ("utilization", 250, "utilization_pct"),
])
def test_absurd_value_is_stored_null_reported_once_and_never_classified(
    make_backend, engine, clock, field: str, value: int, column: str,
) -> None:
    """An implausible field is NULL in the log, one reading_invalid names it and its value,
    the state does not move on it, and reading_valid follows when it is sane again."""
    nvml = scenario("one_h100")
    device = nvml.devices[0]
    sampler = sampler_on(engine, clock, make_backend(nvml))
    device.temperature = 80  # THROTTLED: garbage must not cool it down, nor heat it up
    sampler.tick()
    good = getattr(device, field)
    setattr(device, field, value)
    for _ in range(3):
        clock.advance(1)
        sampler.tick()
    setattr(device, field, good)
    clock.advance(1)
    sampler.tick()
    stored = samples(engine, 0, column)
    assert stored[1:4] == [None, None, None] and stored[0] is not None and stored[4] is not None
    assert samples(engine, 0) == [2] * 5  # THROTTLED throughout: no transition on garbage
    ((_, invalid),) = events(engine, "reading_invalid")
    expected = value // (1024 * 1024) if field == "memory_used" else value
    assert parse_payload(invalid)["fields"] == {column: expected}
    ((_, valid),) = events(engine, "reading_valid")
    assert parse_payload(valid)["fields"] == [column]
    assert len(events(engine, "state_change")) == 1  # the first state, nothing since


def test_absurd_temperature_holds_the_last_plausible_state(make_backend, engine,
                                                           clock) -> None:
    """A GPU at 90 °C (CRITICAL) whose sensor then says 0 °C stays CRITICAL until a plausible
    reading says otherwise; then it cools through the usual transitions."""
    nvml = scenario("one_h100")
    device = nvml.devices[0]
    sampler = sampler_on(engine, clock, make_backend(nvml))
    device.temperature = 90
    sampler.tick()
    device.temperature = 0
    clock.advance(1)
    sampler.tick()
    assert sampler.pipeline.latest[0].state.name == "CRITICAL"
    device.temperature = 40
    clock.advance(1)
    sampler.tick()
    assert samples(engine, 0) == [3, 3, 0]


# -- the wall clock jumping ----------------------------------------------------------------
def test_clock_jumps_keep_each_gpus_timestamps_increasing_across_a_restart(
    make_backend, engine, clock,
) -> None:
    """Forward an hour, back two, and a restart in between: every GPU's samples stay in
    strictly increasing time, none is lost or duplicated."""
    nvml = scenario("four_h100")
    sampler = sampler_on(engine, clock, make_backend(nvml))
    sampler.tick()
    clock.advance(3600)
    sampler.tick()
    clock.advance(-7200)
    sampler.tick()
    restarted = sampler_on(engine, clock, make_backend(scenario("four_h100")))
    clock.advance(1)
    restarted.tick()
    clock.advance(7300)  # past the newest stamp again: real times resume
    restarted.tick()
    for i in range(4):
        ts = samples(engine, i, "ts_ms")
        assert len(ts) == 5 and all(b > a for a, b in itertools.pairwise(ts))
    assert samples(engine, 0, "ts_ms")[-1] == clock.now_ms()


class SteppedClock(SystemClock):
    """The system clock plus an offset the test steps (what ``date -s`` does)."""

    offset_ms = 0

    def now_ms(self) -> int:
        return super().now_ms() + self.offset_ms


def test_scheduler_keeps_sampling_after_the_wall_clock_steps_back(
    make_backend, engine, monkeypatch,
) -> None:
    """APScheduler times jobs by the wall clock: after a step back of an hour it would wait
    that hour out. The sampler's clock watch notices the step, logs clock_jumped and
    re-times the jobs, so ticks go on within about a second."""
    clock = SteppedClock()

    class SteppedDatetime(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return datetime.now(tz) + timedelta(milliseconds=clock.offset_ms)

    monkeypatch.setattr(apscheduler.schedulers.base, "datetime", SteppedDatetime)
    monkeypatch.setattr(apscheduler.triggers.interval, "datetime", SteppedDatetime)
    nvml = scenario("one_h100")
    store = LogStore(engine, "testhost")
    backend = NvmlBackend(nvml=nvml, clock=clock, timeout_s=5)
    sampler = Sampler(backend, Pipeline(store, "nvml", lambda: DEFAULT_CONFIG), store, clock,
                      interval=0.1)
    sampler.start()
    try:
        eventually(lambda: len(samples(engine, 0)) >= 3)
        clock.offset_ms = -3_600_000
        before = len(samples(engine, 0))
        eventually(lambda: len(samples(engine, 0)) >= before + 5)
    finally:
        sampler.stop()
        backend.close()
    ((_, jump),) = events(engine, "clock_jumped")
    jump = parse_payload(jump)
    assert jump["direction"] == "backwards" and -3601 < jump["seconds"] < -3599
    ts = samples(engine, 0, "ts_ms")
    assert all(b > a for a, b in itertools.pairwise(ts))


# -- the whole service: events, degraded health, recovery ------------------------------------
def test_fault_after_fault_the_service_degrades_and_recovers(
    make_backend, engine, clock, live_api,
) -> None:
    """A field not supported (no fault), then one GPU lost, NVML TIMEOUT and UNKNOWN errors,
    a hang, garbage values, NVML init failing: after each,
    /healthz and /api/system/status say degraded with the reason while the other GPUs keep
    their samples, and say ok again once the fault clears."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    sampler = sampler_on(engine, clock, backend)
    server = live_api(sampler)

    def tick() -> None:
        clock.advance(1)
        sampler.tick()

    def health() -> tuple[str, list[str]]:
        body = requests.get(f"{server.url}/healthz", timeout=10).json()
        system = requests.get(f"{server.url}/api/system/status", timeout=10).json()["health"]
        assert system == {"status": body["status"], "reasons": body["reasons"]}
        return body["status"], body["reasons"]

    def fault(inject: Callable[[], object], clear: Callable[[], object], reason: str,
              one_gpu: bool = True) -> None:
        inject()
        tick()
        status, reasons = health()
        assert status == "degraded" and any(reason in r for r in reasons), reasons
        if one_gpu:  # the three others were sampled as usual
            healthy = [i for i in range(4) if not any(f"GPU {i} " in r for r in reasons)]
            assert len(healthy) == 3 and all(samples(engine, i)[-1] != 4 for i in healthy)
        clear()
        eventually(lambda: (tick(), health())[1] == ("ok", []))

    tick()
    assert health() == ("ok", [])
    nvml.devices[1].errors["nvmlDeviceGetPowerUsage"] = FakeNvml.NVML_ERROR_NOT_SUPPORTED
    tick()  # a field the card does not have is no fault: NULL, and health stays ok
    assert health() == ("ok", []) and samples(engine, 1, "power_dw")[-1] is None
    fault(lambda: nvml.lose(2), lambda: nvml.recover(2), "GPU 2 unavailable: GPU is lost")
    errors = nvml.devices[1].errors
    fault(lambda: errors.update(nvmlDeviceGetUtilizationRates=FakeNvml.NVML_ERROR_TIMEOUT),
          lambda: errors.pop("nvmlDeviceGetUtilizationRates"), "GPU 1 unavailable: Timeout")
    errors = nvml.devices[3].errors
    fault(lambda: errors.update(nvmlDeviceGetTemperature=FakeNvml.NVML_ERROR_UNKNOWN),
          lambda: errors.pop("nvmlDeviceGetTemperature"), "GPU 3 unavailable: Unknown Error")
    release: list = []
    fault(lambda: release.append(nvml.hang(0, "nvmlDeviceGetPerformanceState")),
          lambda: release[0].set(), "GPU 0 unavailable: NVML did not answer")
    fault(lambda: setattr(nvml.devices[3], "temperature", 255),
          lambda: setattr(nvml.devices[3], "temperature", 45),
          "GPU 3 reports implausible temperature_c")

    def init_fails() -> None:
        nvml.refcount = 0
        nvml.fail_init(FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED, times=2)

    fault(init_fails, lambda: clock.advance(5), "backend nvml: NVML init failed", one_gpu=False)
    assert [i for i, _ in events(engine, "gpu_lost")][:4] == [2, 1, 3, 0]
    assert len(events(engine, "gpu_found")) >= 4
    assert len(events(engine, "reading_invalid")) == 1
