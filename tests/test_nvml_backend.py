"""The NVML backend against a fake pynvml, one scenario per failure users report."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator

import pytest

from gpuhistory.clock import FakeClock
from gpuhistory.domain.reading import GpuIdentity
from gpuhistory.sampling.nvml import NvmlBackend, nvml_library_present
from tests.fake_pynvml import FakeNvml, LegacyFakeNvml, h100, scenario

NOT_SUPPORTED = FakeNvml.NVML_ERROR_NOT_SUPPORTED
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
    """Bytes become MiB (whole), milliwatts become watts, names and UUIDs are str."""
    (reading,) = make_backend(scenario("one_h100")).read()
    assert reading.available and reading.error is None
    assert (reading.index, reading.uuid, reading.name) == (
        0, "GPU-fake-h100-0000", "NVIDIA H100 80GB HBM3")
    assert (reading.memory_used_mib, reading.memory_total_mib) == (20480, 81559)
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
