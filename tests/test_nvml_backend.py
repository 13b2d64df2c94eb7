"""The NVML backend against a fake pynvml, one scenario per failure users report."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpuhistory.clock import FakeClock
from gpuhistory.domain.reading import GpuIdentity
from gpuhistory.sampling.nvml import NvmlBackend, nvml_library_present
from gpuhistory.sampling.procinfo import Owner
from tests import fake_pynvml
from tests.fake_proc import DenyingReader, FakeProc
from tests.fake_pynvml import POWER_CAP, FakeNvml, LegacyFakeNvml, h100, scenario

NOT_SUPPORTED = FakeNvml.NVML_ERROR_NOT_SUPPORTED
MIB_BYTES = fake_pynvml.MIB
MakeBackend = Callable[..., NvmlBackend]


@pytest.fixture
def make_backend(clock: FakeClock) -> Iterator[MakeBackend]:
    """Builds backends on the test's fake clock and closes them all afterwards."""
    made: list[NvmlBackend] = []

    def make(nvml: FakeNvml, **kwargs: object) -> NvmlBackend:
        backend = NvmlBackend(nvml=nvml, clock=clock, **kwargs)  # type: ignore[arg-type]
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def test_h100_every_field_read_and_converted(make_backend: MakeBackend) -> None:
    """Bytes become MiB (whole, rounded up as nvidia-smi rounds: 20480 MiB + 123 B is
    20481), milliwatts become watts, names and UUIDs are str."""
    (reading,) = make_backend(scenario("one_h100")).read()
    assert reading.available and reading.error is None
    assert (reading.index, reading.uuid, reading.name) == (
        0, "GPU-fake-h100-0000", "NVIDIA H100 80GB HBM3")
    assert (reading.memory_used_mib, reading.memory_total_mib) == (20481, 81559)
    assert reading.power_w == pytest.approx(312.45)
    assert reading.power_limit_w == 700.0
    assert (reading.temperature_c, reading.memory_temperature_c) == (45, 52)
    assert (reading.utilization_pct, reading.sm_clock_mhz, reading.mem_clock_mhz) == (
        37, 1980, 2619)
    assert (reading.clock_event_reasons, reading.pstate) == (0x4, 0)


def test_fan_not_supported_on_data_centre_card_is_none_and_not_asked_again(
    make_backend: MakeBackend,
) -> None:
    """An H100 has no fan: the field is None, never an error, and costs one call in total."""
    nvml = scenario("one_h100")
    backend = make_backend(nvml)
    readings = [backend.read()[0] for _ in range(3)]
    assert all(r.available and r.fan_pct is None for r in readings)
    assert nvml.calls["nvmlDeviceGetFanSpeed"] == 1
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 3


def test_consumer_card_without_memory_temperature(make_backend: MakeBackend) -> None:
    """A per-value NOT_SUPPORTED from the field-values call is None and not asked again."""
    nvml = scenario("one_rtx4090")
    backend = make_backend(nvml)
    readings = [backend.read()[0] for _ in range(3)]
    assert all(r.available and r.memory_temperature_c is None for r in readings)
    assert (readings[0].fan_pct, readings[0].pstate, readings[0].name) == (
        30, 8, "NVIDIA GeForce RTX 4090")
    assert nvml.calls["nvmlDeviceGetFieldValues"] == 1


@pytest.mark.parametrize(("value_type", "value", "expected"), [
    (FakeNvml.NVML_VALUE_TYPE_UNSIGNED_INT, 52, 52),
    (FakeNvml.NVML_VALUE_TYPE_DOUBLE, 51.6, 52),
    (FakeNvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG, 48, 48),
])
def test_memory_temperature_read_by_its_value_type(
    make_backend: MakeBackend, value_type: int, value: float, expected: int,
) -> None:
    """The field value is taken from the union member its valueType names."""
    device = h100(0)
    device.memory_temperature, device.memory_temperature_type = value, value_type
    (reading,) = make_backend(FakeNvml([device])).read()
    assert reading.memory_temperature_c == expected


def test_one_of_four_gpus_lost_the_other_three_still_read(make_backend: MakeBackend) -> None:
    """GPU_IS_LOST on GPU 2 makes only GPU 2 unavailable; it still carries its identity."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    backend.read()
    nvml.lose(2)
    readings = backend.read()
    assert [r.available for r in readings] == [True, True, False, True]
    lost = readings[2]
    assert (lost.error, lost.uuid, lost.name) == (
        "GPU is lost", "GPU-fake-h100-0002", "NVIDIA H100 80GB HBM3")
    assert (lost.memory_total_mib, lost.power_limit_w, lost.temperature_c) == (81559, 700.0, None)
    assert backend.health().ok
    assert "GPU 2: GPU is lost" in (backend.health().detail or "")


def test_lost_gpu_recovers_through_a_fresh_handle(make_backend: MakeBackend) -> None:
    """A lost GPU is retried each read by re-acquiring its handle; old handles stay dead."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    backend.read()
    nvml.lose(2)
    assert not backend.read()[2].available
    assert not backend.read()[2].available  # still lost: retried, still unavailable
    nvml.recover(2)
    readings = backend.read()
    assert all(r.available for r in readings)
    assert readings[2].uuid == "GPU-fake-h100-0002"
    assert nvml.calls["nvmlDeviceGetHandleByIndex"] == 4 + 2  # two retries after the loss
    assert "GPU 2" not in (backend.health().detail or "")


def test_gpu_lost_before_the_service_started(make_backend: MakeBackend) -> None:
    """A GPU lost at enumeration is unavailable without a UUID and found once it answers."""
    nvml = scenario("four_h100")
    nvml.lose(1)
    backend = make_backend(nvml)
    reading = backend.read()[1]
    assert (reading.available, reading.uuid, reading.error) == (False, None, "GPU is lost")
    assert [i.index for i in backend.identities()] == [0, 2, 3]
    nvml.recover(1)
    assert backend.read()[1].uuid == "GPU-fake-h100-0001"
    assert len(backend.identities()) == 4


def test_lost_gpu_replaced_by_another_card_reports_the_new_uuid(
    make_backend: MakeBackend,
) -> None:
    """After a loss the UUID at that index is checked: another card is a new identity."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    backend.read()
    nvml.lose(1)
    backend.read()
    nvml.devices[1] = h100(99)
    assert backend.read()[1].uuid == "GPU-fake-h100-0099"
    assert backend.identities()[1].uuid == "GPU-fake-h100-0099"


@pytest.mark.parametrize(("code", "text"), [
    (FakeNvml.NVML_ERROR_UNKNOWN, "Unknown Error"),
    (FakeNvml.NVML_ERROR_TIMEOUT, "Timeout"),
])
def test_nvml_unknown_error_or_timeout_on_one_gpu(
    make_backend: MakeBackend, code: int, text: str,
) -> None:
    """An NVML error other than an empty field sinks that GPU's tick only, then it is retried."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    nvml.devices[1].errors["nvmlDeviceGetPowerUsage"] = code
    readings = backend.read()
    assert [r.available for r in readings] == [True, False, True, True]
    assert (readings[1].error, readings[1].uuid) == (text, "GPU-fake-h100-0001")
    del nvml.devices[1].errors["nvmlDeviceGetPowerUsage"]
    assert backend.read()[1].available
    assert nvml.calls["nvmlDeviceGetHandleByIndex"] == 4  # the handle was kept


def test_python_exception_on_one_gpu_is_isolated(make_backend: MakeBackend) -> None:
    """A non-NVML exception (a binding surprise) makes only that GPU unavailable."""
    nvml = scenario("four_h100")
    nvml.devices[3].errors["nvmlDeviceGetClockInfo"] = RuntimeError("binding bug")
    readings = make_backend(nvml).read()
    assert [r.available for r in readings] == [True, True, True, False]
    assert readings[3].error == "RuntimeError: binding bug"


def test_no_permission_is_none_and_asked_again(make_backend: MakeBackend) -> None:
    """NO_PERMISSION empties the field but is not remembered: permissions can change."""
    nvml = scenario("one_h100")
    nvml.devices[0].errors["nvmlDeviceGetPowerUsage"] = FakeNvml.NVML_ERROR_NO_PERMISSION
    backend = make_backend(nvml)
    assert [backend.read()[0].power_w for _ in range(2)] == [None, None]
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 2


def test_unknown_pstate_is_none(make_backend: MakeBackend) -> None:
    """NVML's P-state 32 means unknown, not P32."""
    nvml = scenario("one_h100")
    nvml.devices[0].pstate = 32
    assert make_backend(nvml).read()[0].pstate is None


def test_nvml_init_failing_then_succeeding_backs_off(
    make_backend: MakeBackend, clock: FakeClock,
) -> None:
    """A failing nvmlInit is retried after 1 s, 2 s, 4 s on the clock; reads never raise."""
    nvml = scenario("one_h100")
    nvml.fail_init(FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED, times=3)
    backend = make_backend(nvml)
    attempts = []
    for step_s in (0, 0, 0.999, 0.001, 1.999, 0.001, 3.999, 0.001):
        clock.advance(step_s)
        readings = backend.read()
        attempts.append(nvml.calls["nvmlInit"])
    assert attempts == [1, 1, 1, 2, 2, 3, 3, 4]
    assert len(readings) == 1 and readings[0].available
    assert backend.health().ok


def test_init_failure_reports_why_and_backoff_is_capped(
    make_backend: MakeBackend, clock: FakeClock,
) -> None:
    """Health says why init fails; the retry delay doubles up to init_retry_max_s."""
    nvml = scenario("driver_not_loaded")
    backend = make_backend(nvml, init_retry_max_s=5)
    assert backend.read() == []
    health = backend.health()
    assert not health.ok
    assert "NVML init failed: Driver Not Loaded" in (health.detail or "")
    times = []
    for _ in range(60):
        clock.advance(0.5)
        before = nvml.calls["nvmlInit"]
        backend.read()
        if nvml.calls["nvmlInit"] > before:
            times.append(clock.now_ms())
    gaps = [(b - a) / 1000 for a, b in itertools.pairwise(times)]
    assert gaps[:4] == [2, 4, 5, 5]


def test_no_driver_library_missing(make_backend: MakeBackend) -> None:
    """No NVIDIA driver at all: not present (auto falls back to sim); the backend reads []."""
    nvml = scenario("no_driver")
    assert nvml_library_present(nvml) is False
    backend = make_backend(nvml)
    assert backend.read() == []
    assert backend.identities() == []
    health = backend.health()
    assert not health.ok
    assert "NVML Shared Library Not Found" in (health.detail or "")
    backend.close()
    assert nvml.calls["nvmlShutdown"] == 0


def test_driver_not_loaded_counts_as_library_present() -> None:
    """The library is there but init fails: auto must stay on nvml and show UNAVAILABLE."""
    assert nvml_library_present(scenario("driver_not_loaded")) is True


def test_library_present_leaves_the_ref_count_balanced() -> None:
    """The probe's successful nvmlInit is matched by an nvmlShutdown."""
    nvml = scenario("one_h100")
    assert nvml_library_present(nvml) is True
    assert (nvml.refcount, nvml.calls["nvmlShutdown"]) == (0, 1)


def test_constructor_touches_no_nvml() -> None:
    """Building the backend calls nothing: init waits for the first read."""
    nvml = scenario("one_h100")
    NvmlBackend(nvml=nvml)
    assert not nvml.calls


def test_identities_include_slowdown_and_shutdown_thresholds(make_backend: MakeBackend) -> None:
    """Identity facts are read once, with the card's own temperature thresholds."""
    nvml = scenario("one_rtx4090")
    backend = make_backend(nvml)
    assert backend.identities() == [GpuIdentity(
        index=0, uuid="GPU-fake-4090-0000", name="NVIDIA GeForce RTX 4090",
        memory_total_mib=24564, power_limit_w=450.0, slowdown_temp_c=90, shutdown_temp_c=100,
    )]
    backend.read()
    backend.identities()
    assert nvml.calls["nvmlDeviceGetTemperatureThreshold"] == 2
    assert nvml.calls["nvmlDeviceGetName"] == 1


def test_close_shuts_nvml_down_once(make_backend: MakeBackend) -> None:
    """close() balances the init; a second close does nothing."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    backend.read()
    backend.close()
    backend.close()
    assert (nvml.refcount, nvml.calls["nvmlShutdown"]) == (0, 1)


def test_power_limit_reread_only_once_a_minute(
    make_backend: MakeBackend, clock: FakeClock,
) -> None:
    """The enforced power limit is slow-moving: one call a minute, and a change shows."""
    nvml = scenario("one_h100")
    backend = make_backend(nvml)
    for _ in range(30):
        backend.read()
        clock.advance(1)
    assert nvml.calls["nvmlDeviceGetEnforcedPowerLimit"] == 1
    nvml.devices[0].power_limit_mw = 550_000
    clock.advance(30)
    assert backend.read()[0].power_limit_w == 550.0
    assert backend.identities()[0].power_limit_w == 550.0
    assert nvml.calls["nvmlDeviceGetEnforcedPowerLimit"] == 2


def test_energy_counter_never_read(make_backend: MakeBackend, clock: FakeClock) -> None:
    """The energy counter costs ~3 ms a call on an H100; nothing may ask for it."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    for _ in range(5):
        backend.read()
        backend.identities()
        backend.health()
        clock.advance(61)
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 20
    assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 0


def test_nvml_shut_down_under_us_reinitialises(
    make_backend: MakeBackend, clock: FakeClock,
) -> None:
    """Another user's nvmlShutdown (UNINITIALIZED) makes the backend init again; while
    that fails, the GPUs it knew are reported unavailable, with their UUIDs."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    backend.read()
    nvml.refcount = 0
    nvml.fail_init(FakeNvml.NVML_ERROR_UNKNOWN, times=1)
    assert {r.error for r in backend.read()} == {"Uninitialized"}
    readings = backend.read()
    assert [r.uuid for r in readings] == [f"GPU-fake-h100-{i:04d}" for i in range(4)]
    assert {r.error for r in readings} == {"NVML init failed: Unknown Error"}
    assert not backend.health().ok
    clock.advance(1)
    assert all(r.available for r in backend.read())


def test_old_bindings_bytes_and_throttle_reasons(make_backend: MakeBackend) -> None:
    """Bindings that return bytes and lack ...ClocksEventReasons still give a full reading."""
    nvml = LegacyFakeNvml([h100(0)])
    (reading,) = make_backend(nvml).read()
    assert (reading.uuid, reading.name) == ("GPU-fake-h100-0000", "NVIDIA H100 80GB HBM3")
    assert reading.clock_event_reasons == 0x4
    assert nvml.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 1


def test_concurrent_first_reads_initialise_once(make_backend: MakeBackend) -> None:
    """Init is locked: threads racing for the first read start NVML once."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(len(backend.read())))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [4] * 8
    assert (nvml.calls["nvmlInit"], nvml.calls["nvmlDeviceGetCount"]) == (1, 1)


# -- hardware facts: processes, throttle-time counters, XID errors ---------------------------
def test_read_hardware_processes_counters_and_names(make_backend: MakeBackend) -> None:
    """A process's pid and memory come from NVML (bytes → MiB), its name and user from the
    real /proc (as psutil names them)."""
    import os

    import psutil

    nvml = scenario("h100_busy")
    (facts,) = make_backend(nvml, process_names=True).read_hardware()
    assert facts.index == 0
    me = psutil.Process()
    (p,) = facts.processes or []
    assert (p.pid, p.name, p.used_memory_mib) == (os.getpid(), me.name(), 20000)
    assert p.owner is not None and (p.owner.uid, p.user) == (os.getuid(), me.username())
    assert facts.counters == {"power_cap_ns": 5_000_000_000, "sw_thermal_ns": 0,
                              "hw_thermal_ns": 0, "power_brake_ns": 0}
    assert facts.xids == []
    assert nvml.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1
    assert nvml.calls["nvmlDeviceGetComputeRunningProcesses"] == 0  # v3 where present
    assert nvml.field_requests == [list(fake_pynvml.COUNTER_FIELDS)]  # one call for all four
    assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1  # the first read has it


def test_process_memory_unknown_and_names_off(make_backend: MakeBackend) -> None:
    """NVML's 'not available' memory is None; without names (a child PID namespace) the
    name is None and /proc is not read; an unknown pid has no name either."""
    nvml = scenario("one_h100")
    nvml.devices[0].processes = [(4_000_000, None)]
    (facts,) = make_backend(nvml, process_names=True).read_hardware()
    assert facts.processes == [(4_000_000, None, None, None)]  # no such pid here: no name
    nvml.devices[0].processes = [(1, 512 * MIB_BYTES)]
    (facts,) = make_backend(nvml, process_names=False).read_hardware()
    assert facts.processes == [(1, None, 512, None)]


def test_process_name_looked_up_once_per_pid(make_backend: MakeBackend,
                                             tmp_path: Path) -> None:
    """Names and owners are cached while the pid keeps appearing; a pid that left is
    read again from /proc."""
    asked: list[int] = []
    proc = FakeProc(tmp_path / "proc")
    proc.add(7, name="train")
    proc.add(8, name="train")

    class Counting(DenyingReader):
        def process(self, pid: int) -> tuple[str | None, Owner | None]:
            asked.append(pid)
            return super().process(pid)

    nvml = scenario("one_h100")
    nvml.devices[0].processes = [(7, MIB_BYTES), (8, MIB_BYTES)]
    backend = make_backend(nvml, process_names=True,
                           proc=Counting(proc.root, proc.denied, proc.users))
    for _ in range(3):
        backend.read_hardware()
    nvml.devices[0].processes = [(8, MIB_BYTES)]
    backend.read_hardware()
    nvml.devices[0].processes = [(7, MIB_BYTES), (8, MIB_BYTES)]
    (facts,) = backend.read_hardware()
    assert asked == [7, 8, 7]
    assert [p.name for p in facts.processes or []] == ["train", "train"]


def test_counters_not_supported_are_none_and_not_asked_again(
    make_backend: MakeBackend, clock: FakeClock,
) -> None:
    """Per-value NOT_SUPPORTED: that counter is None and dropped from later calls; a card
    with none of them answers None and is not asked at all any more."""
    nvml = scenario("one_h100")
    del nvml.devices[0].counters[fake_pynvml.POWER_BRAKE]
    backend = make_backend(nvml)
    first = backend.read_hardware()[0].counters
    clock.advance(60)
    second = backend.read_hardware()[0].counters
    assert first == second == {"power_cap_ns": 0, "sw_thermal_ns": 0, "hw_thermal_ns": 0,
                               "power_brake_ns": None}
    assert nvml.field_requests == [list(fake_pynvml.COUNTER_FIELDS),
                                   list(fake_pynvml.COUNTER_FIELDS[:3])]
    consumer = scenario("one_rtx4090")  # no counters at all
    backend = make_backend(consumer)
    assert [backend.read_hardware()[0].counters for _ in range(3)] == [None] * 3
    assert consumer.calls["nvmlDeviceGetFieldValues"] == 1


def test_slow_counters_read_once_a_minute_or_while_hw_slowdown(
    make_backend: MakeBackend, clock: FakeClock,
) -> None:
    """HW thermal and power brake cost ~650 µs on an H100: asked for once a minute (keeping
    their last value between), and at every read while the GPU reports an HW slowdown."""
    nvml = scenario("one_h100")
    device = nvml.devices[0]
    backend = make_backend(nvml)
    cheap, every = list(fake_pynvml.COUNTER_FIELDS[:2]), list(fake_pynvml.COUNTER_FIELDS)
    backend.read()
    backend.read_hardware()
    device.counters[fake_pynvml.HW_THERMAL] = 5
    device.counters[POWER_CAP] = 7
    clock.advance(59)
    facts = backend.read_hardware()[0].counters
    assert facts == {"power_cap_ns": 7, "sw_thermal_ns": 0, "hw_thermal_ns": 0,
                     "power_brake_ns": 0}  # the slow ones keep their last value
    clock.advance(1)
    assert backend.read_hardware()[0].counters["hw_thermal_ns"] == 5  # type: ignore[index]
    device.clock_event_reasons = 0x40  # HwThermalSlowdown: now they are read every time
    backend.read()
    device.counters[fake_pynvml.HW_THERMAL] = 9
    assert backend.read_hardware()[0].counters["hw_thermal_ns"] == 9  # type: ignore[index]
    assert nvml.field_requests == [[FakeNvml.NVML_FI_DEV_MEMORY_TEMP], every, cheap, every,
                                   [FakeNvml.NVML_FI_DEV_MEMORY_TEMP], every]


def test_processes_not_supported_is_none_and_not_asked_again(make_backend: MakeBackend) -> None:
    nvml = scenario("one_h100")
    nvml.devices[0].errors["nvmlDeviceGetComputeRunningProcesses_v3"] = NOT_SUPPORTED
    backend = make_backend(nvml)
    assert [backend.read_hardware()[0].processes for _ in range(3)] == [None] * 3
    assert nvml.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1


def test_pending_xid_is_reported_once_without_blocking(make_backend: MakeBackend) -> None:
    """XID 79 (fallen off the bus) pending in the event set: reported on its GPU, drained."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    assert all(f.xids == [] for f in backend.read_hardware())
    nvml.xid(2, 79)
    nvml.xid(2, 48)
    nvml.xid(0, 13)
    facts = backend.read_hardware()
    assert [[x.code for x in f.xids] for f in facts] == [[13], [], [79, 48], []]
    assert facts[2].xids[0].details == {}  # no MIG instance to name
    assert all(f.xids == [] for f in backend.read_hardware())
    assert nvml.calls["nvmlEventSetCreate"] == 1
    assert nvml.calls["nvmlDeviceRegisterEvents"] == 4  # once per handle
    assert "XID" not in (backend.health().detail or "")


def test_event_sets_not_supported_health_says_so_and_facts_go_on(
    make_backend: MakeBackend,
) -> None:
    nvml = scenario("no_event_sets")
    nvml.devices[0].processes = [(1234, 100 * MIB_BYTES)]
    backend = make_backend(nvml)
    for _ in range(3):
        (facts,) = backend.read_hardware()
        assert facts.processes is not None and facts.processes[0].pid == 1234
        assert facts.counters is not None and facts.xids == []
    assert nvml.calls["nvmlDeviceRegisterEvents"] == 1
    health = backend.health()
    assert health.ok and "XID events not supported" in (health.detail or "")
    assert backend.read()[0].available


def test_event_set_creation_failing_is_reported(make_backend: MakeBackend) -> None:
    nvml = scenario("one_h100")

    def refuse() -> None:
        raise fake_pynvml.NVMLError(FakeNvml.NVML_ERROR_NO_PERMISSION)

    nvml.nvmlEventSetCreate = refuse  # type: ignore[method-assign]
    backend = make_backend(nvml)
    (facts,) = backend.read_hardware()
    assert facts.counters is not None
    assert "XID events unavailable: event set: Insufficient Permissions" in (
        backend.health().detail or "")


def test_lost_gpu_during_hardware_read_is_isolated(make_backend: MakeBackend) -> None:
    """GPU_IS_LOST in read_hardware: no facts for that GPU (None, not []), no exception."""
    nvml = scenario("four_h100")
    backend = make_backend(nvml)
    backend.read()
    nvml.lose(1)
    facts = backend.read_hardware()
    assert [f.processes is None for f in facts] == [False, True, False, False]
    assert facts[1].counters is None
    assert "GPU 1: hardware facts: GPU is lost" in (backend.health().detail or "")
    nvml.recover(1)
    assert backend.read()[1].available
    facts = backend.read_hardware()
    assert facts[1].processes == []
    assert nvml.calls["nvmlDeviceRegisterEvents"] == 5  # the new handle registered too


def test_binding_surprise_in_hardware_read_is_contained(make_backend: MakeBackend) -> None:
    nvml = scenario("one_h100")
    nvml.devices[0].errors["nvmlDeviceGetComputeRunningProcesses_v3"] = RuntimeError("odd")
    backend = make_backend(nvml)
    (facts,) = backend.read_hardware()
    assert facts.processes is None
    assert "RuntimeError: odd" in (backend.health().detail or "")


def test_old_bindings_without_v3_use_the_plain_call(make_backend: MakeBackend) -> None:
    nvml = LegacyFakeNvml([h100(0)])
    nvml.devices[0].processes = [(99, 3 * MIB_BYTES)]
    (facts,) = make_backend(nvml, process_names=False).read_hardware()
    assert facts.processes == [(99, None, 3, None)]


def test_close_frees_the_event_set(make_backend: MakeBackend) -> None:
    nvml = scenario("one_h100")
    backend = make_backend(nvml)
    backend.read_hardware()
    backend.close()
    assert nvml.event_sets[0].freed
    assert (nvml.refcount, nvml.calls["nvmlShutdown"]) == (0, 1)


def test_read_hardware_while_init_fails_returns_nothing(make_backend: MakeBackend) -> None:
    assert make_backend(scenario("driver_not_loaded")).read_hardware() == []


# -- error and energy counters, PCI bus id, driver version ----------------------------------
def test_error_and_energy_counters_read_once_a_minute(
    make_backend: MakeBackend, clock: FakeClock,
) -> None:
    """ECC totals, remapped rows, PCIe replays and energy come with the first hardware read
    and then at most once a minute (energy costs ~3 ms a call); in between each keeps its
    value. The PCI bus id and the driver version are asked for once."""
    nvml = scenario("four_h100")
    nvml.devices[2].ecc = {(0, 0): 3, (1, 0): 1, (0, 1): 40, (1, 1): 2}
    nvml.devices[2].remapped_rows = (5, 1, 1, 0)
    nvml.devices[2].pcie_replays = 17
    backend = make_backend(nvml)
    facts = backend.read_hardware()
    assert facts[2].reliability == {
        "ecc_volatile_corrected": 3, "ecc_volatile_uncorrected": 1,
        "ecc_aggregate_corrected": 40, "ecc_aggregate_uncorrected": 2,
        "remapped_rows_correctable": 5, "remapped_rows_uncorrectable": 1,
        "remapped_rows_pending": 1, "remap_failure": 0, "pcie_replays": 17,
        "energy_mj": 123_456_789}
    assert [f.pci_bus_id for f in facts] == [f"00000000:{b}:00.0" for b in ("1B", "1C", "1D", "1E")]
    assert {f.driver_version for f in facts} == {"580.95.05"}
    for _ in range(59):
        clock.advance(1)
        nvml.devices[2].energy_mj += 1000
        assert backend.read_hardware()[2].reliability["energy_mj"] == 123_456_789
    assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 4  # one per GPU
    assert nvml.calls["nvmlDeviceGetTotalEccErrors"] == 16
    clock.advance(1)
    assert backend.read_hardware()[2].reliability["energy_mj"] == 123_456_789 + 59_000
    assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 8
    assert nvml.calls["nvmlDeviceGetPciInfo"] == 4
    assert nvml.calls["nvmlSystemGetDriverVersion"] == 1


def test_unsupported_error_counters_are_absent_and_not_asked_again(
    make_backend: MakeBackend, clock: FakeClock,
) -> None:
    """A card without ECC or row remapping (NOT_SUPPORTED) reports those as None, never an
    error, and they are not asked again; a card with none of them has no reliability."""
    nvml = scenario("one_rtx4090")
    backend = make_backend(nvml)
    (facts,) = backend.read_hardware()
    assert facts.reliability == {
        "ecc_volatile_corrected": None, "ecc_volatile_uncorrected": None,
        "ecc_aggregate_corrected": None, "ecc_aggregate_uncorrected": None,
        "remapped_rows_correctable": None, "remapped_rows_uncorrectable": None,
        "remapped_rows_pending": None, "remap_failure": None, "pcie_replays": None,
        "energy_mj": 123_456_789}
    nvml.devices[0].energy_mj = None
    nvml.devices[0].errors["nvmlDeviceGetPciInfo"] = FakeNvml.NVML_ERROR_NOT_SUPPORTED
    clock.advance(61)
    backend2 = make_backend(nvml)
    (facts,) = backend2.read_hardware()
    assert facts.reliability is None and facts.pci_bus_id is None
    assert backend2.read()[0].available
    clock.advance(61)
    backend2.read_hardware()
    assert nvml.calls["nvmlDeviceGetTotalEccErrors"] == 8  # 4 each backend, then never
    assert nvml.calls["nvmlDeviceGetRemappedRows"] == 2
