"""A fake ``pynvml`` module for tests, driven by named scenarios.

It exposes only the names ``NvmlBackend`` uses. Results are the real binding's ctypes
structures (``c_nvmlMemory_t``, ``c_nvmlFieldValue_t``...), so the backend is tested against
their real layout; errors are ``NVMLError`` with ``.value`` and the real binding's texts.
Devices are configured per index; ``calls`` counts every function called.

Hardware facts: a device's ``processes`` (pid, used bytes or None), its throttle-time
``counters`` (field id → ns; a counter field absent answers NOT_SUPPORTED), and XID errors
queued with ``FakeNvml.xid`` onto every event set its handle is registered with. Event
sets are refused where ``event_sets_supported`` is False (register: NOT_SUPPORTED).

Error and energy counters: a device's ``ecc`` totals, ``remapped_rows``, ``pcie_replays``
and ``energy_mj`` (None: NOT_SUPPORTED, as a consumer card answers for ECC and remapping),
its ``pci_bus_id``; ``driver_version`` is the module's.

Memory: ``memory_used`` is what ``nvidia-smi`` shows as used and ``memory_reserved`` what the
driver holds back. v2 memory info (``version=nvmlMemory_v2``) reports them apart; v1 counts
the reservation as used, as real drivers do. A device with ``memory_v2`` set to an error
code refuses v2 with it (an older driver: FUNCTION_NOT_FOUND); a module made with
``memory_v2_binding=False`` has neither ``nvmlMemory_v2`` nor the ``version`` parameter (a
binding older than v2). ``memory_versions`` counts the calls of each version.

Hangs: ``FakeNvml.hang(index, function)`` makes that function block for that GPU (and
``hang_init()`` makes nvmlInit block) until the returned event is set, as a wedged driver
does; a blocked call gives up by itself after ``HANG_LIMIT_S`` so no test leaks a thread.
"""

from __future__ import annotations

import os
import threading
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml

MIB = 1024 * 1024
HANG_LIMIT_S = 30.0  # a hung call returns by itself after this, whatever the test does
NOT_AVAILABLE = pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value  # usedGpuMemory: unknown
POWER_CAP = pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP
SW_THERMAL = pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN
HW_THERMAL = pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN
POWER_BRAKE = pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN
COUNTER_FIELDS = (POWER_CAP, SW_THERMAL, HW_THERMAL, POWER_BRAKE)
_VALUE_MEMBERS = {  # c_nvmlFieldValue_t.valueType → the union member that holds the value
    pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}


class NVMLError(Exception):
    """An NVML error code, printed as pynvml prints it."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return pynvml.NVMLError._errcode_to_string.get(
            self.value, f"NVML Error with code {self.value}")


@dataclass
class FakeDevice:
    """One GPU's answers.

    ``errors`` maps an NVML function name to the error code it raises for this device (or
    to any other exception, raised as is); ``field_errors`` maps a field id to the per-value
    return of ``nvmlDeviceGetFieldValues``.
    """

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    memory_total: int = 81559 * MIB
    memory_used: int = 20480 * MIB + 123
    memory_reserved: int = 0  # held back by the driver (nvidia-smi's "Reserved")
    memory_v2: int | None = None  # an NVML error code: v2 memory info refused with it
    temperature: int = 45
    memory_temperature: float = 52
    memory_temperature_type: int = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    utilization: int = 37
    power_mw: int = 312_450
    power_limit_mw: int = 700_000
    sm_clock: int = 1980
    mem_clock: int = 2619
    clock_event_reasons: int = 0x4  # SwPowerCap
    pstate: int = 0
    fan: int = 41
    slowdown_c: int = 89
    shutdown_c: int = 95
    errors: dict[str, int | Exception] = field(default_factory=dict)
    field_errors: dict[int, int] = field(default_factory=dict)
    lost: bool = False  # every call for it raises GPU_IS_LOST
    generation: int = 0  # bumped on recovery: handles taken before it are stale
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, bytes)
    counters: dict[int, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_FIELDS, 0))
    hangs: dict[str, threading.Event] = field(default_factory=dict)  # function → released
    # Error and energy counters; None: the card answers NOT_SUPPORTED. ``ecc`` maps
    # (memory error type, counter type) to the count (ECC disabled: None).
    ecc: dict[tuple[int, int], int] | None = field(default_factory=lambda: {
        (0, 0): 0, (1, 0): 0, (0, 1): 12, (1, 1): 0})
    remapped_rows: tuple[int, int, int, int] | None = (2, 0, 0, 0)  # corr, unc, pend, fail
    pcie_replays: int | None = 0
    energy_mj: int | None = 123_456_789
    pci_bus_id: str = "00000000:1B:00.0"


@dataclass(frozen=True)
class FakeHandle:
    index: int
    device: FakeDevice
    generation: int


@dataclass
class FakeEventSet:
    handles: list[FakeHandle] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)
    freed: bool = False


def h100(index: int) -> FakeDevice:
    """A data-centre card: no fan to report."""
    return FakeDevice(uuid=f"GPU-fake-h100-{index:04d}",
                      pci_bus_id=f"00000000:{0x1B + index:02X}:00.0",
                      errors={"nvmlDeviceGetFanSpeed": pynvml.NVML_ERROR_NOT_SUPPORTED})


def rtx4090(index: int) -> FakeDevice:
    """A consumer card: a fan, but no memory temperature."""
    return FakeDevice(
        uuid=f"GPU-fake-4090-{index:04d}", name="NVIDIA GeForce RTX 4090",
        memory_total=24564 * MIB, memory_used=1200 * MIB, power_mw=35_120,
        power_limit_mw=450_000, sm_clock=210, mem_clock=405, clock_event_reasons=0x1,
        pstate=8, fan=30, slowdown_c=90, shutdown_c=100,
        field_errors={pynvml.NVML_FI_DEV_MEMORY_TEMP: pynvml.NVML_ERROR_NOT_SUPPORTED},
        counters={},  # no throttle-time counters
        ecc=None, remapped_rows=None, pcie_replays=None,  # no ECC, no row remapping
    )


class FakeNvml(types.ModuleType):
    """Stands in for the ``pynvml`` module."""

    NVML_SUCCESS = pynvml.NVML_SUCCESS
    NVML_ERROR_UNINITIALIZED = pynvml.NVML_ERROR_UNINITIALIZED
    NVML_ERROR_INVALID_ARGUMENT = pynvml.NVML_ERROR_INVALID_ARGUMENT
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION
    NVML_ERROR_DRIVER_NOT_LOADED = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_TIMEOUT = pynvml.NVML_ERROR_TIMEOUT
    NVML_ERROR_LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_FUNCTION_NOT_FOUND = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
    NVML_ERROR_NO_DATA = pynvml.NVML_ERROR_NO_DATA
    NVML_ERROR_UNKNOWN = pynvml.NVML_ERROR_UNKNOWN
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_TEMPERATURE_THRESHOLD_SHUTDOWN = pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN
    NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM
    NVML_FI_DEV_MEMORY_TEMP = pynvml.NVML_FI_DEV_MEMORY_TEMP
    NVML_VALUE_TYPE_DOUBLE = pynvml.NVML_VALUE_TYPE_DOUBLE
    NVML_VALUE_TYPE_UNSIGNED_INT = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    NVML_VALUE_TYPE_UNSIGNED_LONG = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
    NVML_VALUE_TYPE_SIGNED_LONG_LONG = pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG
    NVML_VALUE_TYPE_SIGNED_INT = pynvml.NVML_VALUE_TYPE_SIGNED_INT
    NVML_VALUE_TYPE_UNSIGNED_SHORT = pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT
    NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP = POWER_CAP
    NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN = SW_THERMAL
    NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN = HW_THERMAL
    NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN = POWER_BRAKE
    nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError
    NVMLError = NVMLError
    NVML_MEMORY_ERROR_TYPE_CORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC
    NVML_AGGREGATE_ECC = pynvml.NVML_AGGREGATE_ECC

    def __init__(self, devices: list[FakeDevice] | None = None, *,
                 library_missing: bool = False, strings_as_bytes: bool = False,
                 memory_v2_binding: bool = True) -> None:
        super().__init__("fake_pynvml")
        self.memory_v2_binding = memory_v2_binding
        if memory_v2_binding:
            self.nvmlMemory_v2 = pynvml.nvmlMemory_v2
        self.memory_versions: Counter[int] = Counter()  # 1 and 2: calls of each version
        self.devices = list(devices or [])
        self.library_missing = library_missing
        self.strings_as_bytes = strings_as_bytes
        self.init_error: int | None = None
        self.init_failures_left: int | None = 0  # None: fail for ever
        self.refcount = 0
        self.calls: Counter[str] = Counter()
        self.event_sets_supported = True
        self.event_sets: list[FakeEventSet] = []
        self.field_requests: list[list[int]] = []  # the ids of each field-values call
        self.init_hang: threading.Event | None = None
        self.hung_calls: Counter[str] = Counter()  # calls that blocked (once each)
        self.driver_version = "580.95.05"

    # -- scenario controls ---------------------------------------------------------------
    def fail_init(self, code: int, times: int | None = None) -> None:
        """nvmlInit raises ``code`` the next ``times`` calls (for ever if None)."""
        self.init_error, self.init_failures_left = code, times

    def lose(self, index: int) -> None:
        """The GPU falls off the bus: every call for it raises GPU_IS_LOST."""
        self.devices[index].lost = True

    def recover(self, index: int) -> None:
        """The GPU answers again, but only through a freshly acquired handle."""
        self.devices[index].lost = False
        self.devices[index].generation += 1

    def hang(self, index: int, function: str) -> threading.Event:
        """``function`` blocks for GPU ``index`` until the returned event is set."""
        release = self.devices[index].hangs[function] = threading.Event()
        return release

    def hang_init(self) -> threading.Event:
        """nvmlInit blocks until the returned event is set."""
        self.init_hang = threading.Event()
        return self.init_hang

    def release_all(self) -> None:
        """Let every hung call return (tests do this before they end)."""
        for device in self.devices:
            for release in device.hangs.values():
                release.set()
        if self.init_hang is not None:
            self.init_hang.set()

    @staticmethod
    def _block(release: threading.Event) -> None:
        release.wait(HANG_LIMIT_S)

    def xid(self, index: int, code: int, event_type: int | None = None) -> None:
        """The driver reports XID ``code`` on GPU ``index`` to every set watching it."""
        for event_set in self.event_sets:
            for handle in event_set.handles:
                if handle.index == index and not event_set.freed:
                    event_set.pending.append(types.SimpleNamespace(
                        device=handle, eventData=code,
                        eventType=(self.nvmlEventTypeXidCriticalError if event_type is None
                                   else event_type),
                        gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF))

    # -- plumbing --------------------------------------------------------------------------
    def _begin(self, function: str) -> None:
        self.calls[function] += 1
        if self.refcount == 0:
            raise NVMLError(self.NVML_ERROR_UNINITIALIZED)

    def _device(self, function: str, handle: FakeHandle) -> FakeDevice:
        self._begin(function)
        device = handle.device
        if device.lost or handle.generation != device.generation or (
                self.devices[handle.index] is not device):
            raise NVMLError(self.NVML_ERROR_GPU_IS_LOST)
        release = device.hangs.get(function)
        if release is not None and not release.is_set():
            self.hung_calls[function] += 1
            self._block(release)
        error = device.errors.get(function)
        if isinstance(error, Exception):
            raise error
        if error is not None:
            raise NVMLError(error)
        return device

    def _text(self, value: str) -> str | bytes:
        return value.encode() if self.strings_as_bytes else value

    # -- the functions NvmlBackend calls ----------------------------------------------------
    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_hang is not None and not self.init_hang.is_set():
            self.hung_calls["nvmlInit"] += 1
            self._block(self.init_hang)
        if self.library_missing:
            raise NVMLError(self.NVML_ERROR_LIBRARY_NOT_FOUND)
        if self.init_error is not None and self.init_failures_left != 0:
            if self.init_failures_left is not None:
                self.init_failures_left -= 1
            raise NVMLError(self.init_error)
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        self._begin("nvmlShutdown")
        self.refcount -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._begin("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._begin("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.devices):
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        device = self.devices[index]
        release = device.hangs.get("nvmlDeviceGetHandleByIndex")
        if release is not None and not release.is_set():
            self.hung_calls["nvmlDeviceGetHandleByIndex"] += 1
            self._block(release)
        if device.lost:
            raise NVMLError(self.NVML_ERROR_GPU_IS_LOST)
        return FakeHandle(index, device, device.generation)

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str | bytes:
        return self._text(self._device("nvmlDeviceGetUUID", handle).uuid)

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str | bytes:
        return self._text(self._device("nvmlDeviceGetName", handle).name)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle, *args: Any, **kwargs: Any) -> Any:
        """v1 (no version: used includes the reservation) or v2 (``version=``, as pynvml
        takes it: the reservation apart); a binding without v2 takes no version at all."""
        if not self.memory_v2_binding and (args or kwargs):
            raise TypeError("nvmlDeviceGetMemoryInfo() takes 1 positional argument")
        version = kwargs.get("version", args[0] if args else None)
        device = self._device("nvmlDeviceGetMemoryInfo", handle)
        total, used, reserved = device.memory_total, device.memory_used, device.memory_reserved
        if not version:
            self.memory_versions[1] += 1
            return pynvml.c_nvmlMemory_t(total=total, used=used + reserved,
                                         free=total - used - reserved)
        self.memory_versions[2] += 1
        if device.memory_v2 is not None:
            raise NVMLError(device.memory_v2)
        if version != pynvml.nvmlMemory_v2:
            raise NVMLError(self.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        return pynvml.c_nvmlMemory_v2_t(version=version, total=total, reserved=reserved,
                                        used=used, free=total - used - reserved)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        return self._device("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw

    def nvmlDeviceGetTemperatureThreshold(self, handle: FakeHandle, threshold: int) -> int:
        device = self._device("nvmlDeviceGetTemperatureThreshold", handle)
        if threshold == self.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN:
            return device.slowdown_c
        if threshold == self.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN:
            return device.shutdown_c
        raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        device = self._device("nvmlDeviceGetTemperature", handle)
        if sensor != self.NVML_TEMPERATURE_GPU:
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return device.temperature

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, field_ids: list[int]) -> Any:
        device = self._device("nvmlDeviceGetFieldValues", handle)
        self.field_requests.append(list(field_ids))
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for value, field_id in zip(values, field_ids, strict=True):
            value.fieldId = field_id
            supported = field_id == self.NVML_FI_DEV_MEMORY_TEMP or field_id in device.counters
            value.nvmlReturn = device.field_errors.get(
                field_id, self.NVML_SUCCESS if supported else self.NVML_ERROR_NOT_SUPPORTED)
            if value.nvmlReturn != self.NVML_SUCCESS:
                continue
            if field_id == self.NVML_FI_DEV_MEMORY_TEMP:
                value.valueType = device.memory_temperature_type
                member = _VALUE_MEMBERS[device.memory_temperature_type]
                setattr(value.value, member, device.memory_temperature)
            else:  # throttle time, as the driver gives it: unsigned long long nanoseconds
                value.valueType = self.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                value.value.ullVal = device.counters[field_id]
        return values

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> pynvml.c_nvmlUtilization_t:
        device = self._device("nvmlDeviceGetUtilizationRates", handle)
        return pynvml.c_nvmlUtilization_t(gpu=device.utilization, memory=device.utilization // 2)

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        return self._device("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, clock: int) -> int:
        device = self._device("nvmlDeviceGetClockInfo", handle)
        return {self.NVML_CLOCK_SM: device.sm_clock, self.NVML_CLOCK_MEM: device.mem_clock}[clock]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        return self._device("nvmlDeviceGetCurrentClocksEventReasons",
                            handle).clock_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        return self._device("nvmlDeviceGetCurrentClocksThrottleReasons",
                            handle).clock_event_reasons

    def nvmlDeviceGetPerformanceState(self, handle: FakeHandle) -> int:
        return self._device("nvmlDeviceGetPerformanceState", handle).pstate

    def nvmlDeviceGetFanSpeed(self, handle: FakeHandle) -> int:
        return self._device("nvmlDeviceGetFanSpeed", handle).fan

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: FakeHandle) -> list[Any]:
        """As the binding returns them: friendly objects, usedGpuMemory None when unknown."""
        device = self._device("nvmlDeviceGetComputeRunningProcesses_v3", handle)
        out = []
        for pid, used in device.processes:
            info = pynvml.nvmlStructToFriendlyObject(pynvml.c_nvmlProcessInfo_v3_t(
                pid=pid, usedGpuMemory=NOT_AVAILABLE if used is None else used,
                gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF))
            if info.usedGpuMemory == NOT_AVAILABLE:
                info.usedGpuMemory = None
            out.append(info)
        return out

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[Any]:
        self.calls["nvmlDeviceGetComputeRunningProcesses"] += 1
        return self.nvmlDeviceGetComputeRunningProcesses_v3(handle)

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:
        self._device("nvmlDeviceGetIndex", handle)
        return handle.index

    def nvmlEventSetCreate(self) -> FakeEventSet:
        self._begin("nvmlEventSetCreate")
        event_set = FakeEventSet()
        self.event_sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(self, handle: FakeHandle, event_types: int,
                                 event_set: FakeEventSet) -> None:
        self._device("nvmlDeviceRegisterEvents", handle)
        if not self.event_sets_supported:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        assert event_types == self.nvmlEventTypeXidCriticalError
        event_set.handles.append(handle)

    def nvmlEventSetWait_v2(self, event_set: FakeEventSet, timeout_ms: int) -> Any:
        self._begin("nvmlEventSetWait_v2")
        assert timeout_ms == 0, "a tick must never block on the event set"
        if event_set.freed:
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        if not event_set.pending:
            raise NVMLError(self.NVML_ERROR_TIMEOUT)
        return event_set.pending.pop(0)

    def nvmlEventSetFree(self, event_set: FakeEventSet) -> None:
        self._begin("nvmlEventSetFree")
        event_set.freed = True

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeHandle) -> int:
        """Millijoules since the driver loaded (~3 ms a call on an H100: read rarely)."""
        return _supported(self._device("nvmlDeviceGetTotalEnergyConsumption", handle).energy_mj)

    def nvmlDeviceGetTotalEccErrors(self, handle: FakeHandle, error_type: int,
                                    counter_type: int) -> int:
        device = self._device("nvmlDeviceGetTotalEccErrors", handle)
        return _supported(None if device.ecc is None
                          else device.ecc[(error_type, counter_type)])

    def nvmlDeviceGetRemappedRows(self, handle: FakeHandle) -> tuple[int, int, int, int]:
        return _supported(self._device("nvmlDeviceGetRemappedRows", handle).remapped_rows)

    def nvmlDeviceGetPcieReplayCounter(self, handle: FakeHandle) -> int:
        return _supported(self._device("nvmlDeviceGetPcieReplayCounter", handle).pcie_replays)

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> Any:
        device = self._device("nvmlDeviceGetPciInfo", handle)
        return pynvml.nvmlPciInfo_t(busId=device.pci_bus_id.encode())  # as the binding does

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        self._begin("nvmlSystemGetDriverVersion")
        return self._text(self.driver_version)


def _supported(value: Any) -> Any:
    """The value, or NOT_SUPPORTED where the card has none."""
    if value is None:
        raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    return value


class LegacyFakeNvml(FakeNvml):
    """Bindings older than 12.535: bytes for strings, no ``...ClocksEventReasons``."""

    def __init__(self, devices: list[FakeDevice] | None = None) -> None:
        super().__init__(devices, strings_as_bytes=True)

    @property
    def nvmlDeviceGetCurrentClocksEventReasons(self) -> Any:  # type: ignore[override]
        raise AttributeError("module 'pynvml' has no attribute "
                             "'nvmlDeviceGetCurrentClocksEventReasons'")

    @property
    def nvmlDeviceGetComputeRunningProcesses_v3(self) -> Any:  # type: ignore[override]
        raise AttributeError("module 'pynvml' has no attribute "
                             "'nvmlDeviceGetComputeRunningProcesses_v3'")

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[Any]:
        device = self._device("nvmlDeviceGetComputeRunningProcesses", handle)
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=used)
                for pid, used in device.processes]


def _no_event_sets() -> FakeNvml:
    nvml = FakeNvml([h100(0)])
    nvml.event_sets_supported = False
    return nvml


def _h100_busy() -> FakeNvml:
    """One H100 running this test process (so psutil finds its name), power-capped."""
    device = h100(0)
    device.processes = [(os.getpid(), 20000 * MIB)]
    device.counters[POWER_CAP] = 5_000_000_000
    return FakeNvml([device])


def _driver_not_loaded() -> FakeNvml:
    nvml = FakeNvml()
    nvml.fail_init(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    return nvml


SCENARIOS: dict[str, Callable[[], FakeNvml]] = {
    "one_h100": lambda: FakeNvml([h100(0)]),
    "four_h100": lambda: FakeNvml([h100(i) for i in range(4)]),
    "one_rtx4090": lambda: FakeNvml([rtx4090(0)]),
    "old_bindings_h100": lambda: LegacyFakeNvml([h100(0)]),
    "no_driver": lambda: FakeNvml(library_missing=True),
    "driver_not_loaded": _driver_not_loaded,
    "h100_busy": _h100_busy,
    "no_event_sets": _no_event_sets,
}


def scenario(name: str) -> FakeNvml:
    """A fresh fake for one of ``SCENARIOS``."""
    return SCENARIOS[name]()
