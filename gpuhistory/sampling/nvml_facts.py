"""The hardware facts of NVML GPUs (gpuhistory/sampling/hardware.py), read through a session.

The cumulative throttle-time counters (one field-values call), the critical XID errors
pending in an NVML event set (drained with a 0 ms wait), the slow-moving error counters (ECC,
row remapping, PCIe replays) and the energy counter, the PCI bus id and the driver version;
the compute processes are the backend's to read and are handed in. Each part that a GPU
answers NOT_SUPPORTED for is None and not asked again; where event sets are unsupported,
health says so. The error and energy counters are read on the first hardware read and then
at most once a minute (``RELIABILITY_EVERY_MS``; the energy counter costs ~3 ms per call on
an H100); the PCI bus id and the driver version once.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable
from typing import Any

from gpuhistory.sampling.hardware import (
    COUNTER_NAMES,
    RELIABILITY_NAMES,
    HardwareFacts,
    ProcessInfo,
    Xid,
)
from gpuhistory.sampling.libnvml import NvmlSession, text
from gpuhistory.sampling.nvml_gpu import GpuRecord

log = logging.getLogger(__name__)

# Throttle-time counters: (column, pynvml constant, its field id where the binding lacks it,
# slow). Cumulative nanoseconds; NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP is the older
# NVML_FI_DEV_PERF_POLICY_POWER. nvmlDeviceGetViolationStatus is deprecated: not used.
# Measured on an H100 (driver 580): power cap and SW thermal cost ~3 µs; asking for HW
# thermal or power brake (either or both) costs ~650 µs, so those two ("slow") are read at
# most once a minute, and at every hardware read while the GPU reports an HW slowdown.
_COUNTER_FIELDS = (
    ("power_cap_ns", "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP", 74, False),
    ("sw_thermal_ns", "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN", 269, False),
    ("hw_thermal_ns", "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN", 270, True),
    ("power_brake_ns", "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN", 271, True),
)
assert tuple(name for name, _, _, _ in _COUNTER_FIELDS) == COUNTER_NAMES
SLOW_COUNTERS_EVERY_MS = 60_000
RELIABILITY_EVERY_MS = 60_000  # ECC, row remapping, PCIe replays and energy: once a minute
# ECC totals: (reliability name, NVML memory error type, NVML counter type) by constant name.
_ECC = (
    ("ecc_volatile_corrected", "NVML_MEMORY_ERROR_TYPE_CORRECTED", "NVML_VOLATILE_ECC"),
    ("ecc_volatile_uncorrected", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", "NVML_VOLATILE_ECC"),
    ("ecc_aggregate_corrected", "NVML_MEMORY_ERROR_TYPE_CORRECTED", "NVML_AGGREGATE_ECC"),
    ("ecc_aggregate_uncorrected", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", "NVML_AGGREGATE_ECC"),
)
_ECC_FALLBACK = {"NVML_MEMORY_ERROR_TYPE_CORRECTED": 0, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED": 1,
                 "NVML_VOLATILE_ECC": 0, "NVML_AGGREGATE_ECC": 1}
HW_SLOWDOWN_BITS = 0x08 | 0x40 | 0x80  # HwSlowdown, HwThermalSlowdown, HwPowerBrakeSlowdown
XID_CRITICAL_ERROR = 0x8  # nvmlEventTypeXidCriticalError
MAX_EVENTS_PER_READ = 256  # a storm of events is drained over several reads
NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId outside MIG


def _ecc_total(nvml: Any, handle: Any, error_type: int, counter_type: int) -> Any:
    """One ECC total; the handle comes second, so ``field`` can pass it to a partial."""
    return nvml.nvmlDeviceGetTotalEccErrors(handle, error_type, counter_type)


def _handle_key(handle: Any) -> Any:
    """What identifies a device handle: the address a ctypes pointer holds, else itself."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return handle


class HardwareReader:
    """The hardware facts of the GPUs of one NVML session; runs on the session's worker."""

    def __init__(self, session: NvmlSession) -> None:
        self.session = session
        self.event_set: Any = None
        self.event_set_note: str | None = None  # why there is no event set
        self.driver_version: str | None = None  # read once, with the first hardware facts
        n = session.lib
        self._counter_fields = [(name, getattr(n, constant, fallback), slow)
                                for name, constant, fallback, slow in _COUNTER_FIELDS]

    def forget_event_set(self) -> None:
        """An event set does not survive a re-init or a close: make one afresh."""
        self.event_set = None
        self.event_set_note = None

    def free_event_set(self) -> None:
        """On the worker, before ``nvmlShutdown``: free the event set, whatever it answers."""
        if self.event_set is not None:
            try:
                self.session.lib.nvmlEventSetFree(self.event_set)
            except Exception as exc:  # shutting down anyway
                log.debug("freeing the NVML event set failed: %s", exc)

    def events_hung(self, timeout_s: float) -> None:
        """The event set did not answer in time: XID events are unavailable from now on."""
        self.event_set = None
        self.event_set_note = (f"XID events unavailable: the event set did not "
                               f"answer within {timeout_s:g} s")
        log.error(self.event_set_note)

    # -- one GPU ------------------------------------------------------------------------------
    def read_one(self, gpu: GpuRecord, xids: list[Xid], now: int,
                 processes: Callable[[GpuRecord], list[ProcessInfo] | None]) -> HardwareFacts:
        """The facts of one GPU (its ``processes`` read by the given callable); only its
        XIDs when its handle is lost or a call fails (the error is in ``hardware_error``)."""
        if gpu.handle is None:  # lost or not attached: read() re-acquires it
            return HardwareFacts(index=gpu.index, xids=xids)
        try:
            found = processes(gpu)
            counters = self._counters(gpu, now)
            reliability = self._reliability(gpu, now)
            self._identity_labels(gpu)
        except self.session.lib.NVMLError as exc:
            self.session.failed(gpu, exc)
            gpu.hardware_error = str(exc)
            return HardwareFacts(index=gpu.index, xids=xids)
        except Exception as exc:  # a binding surprise: no facts for this GPU this time
            gpu.hardware_error = f"{type(exc).__name__}: {exc}"
            log.warning("GPU %d: reading hardware facts failed: %s", gpu.index,
                        gpu.hardware_error)
            return HardwareFacts(index=gpu.index, xids=xids)
        gpu.hardware_error = None
        return HardwareFacts(index=gpu.index, processes=found, counters=counters,
                             xids=xids, reliability=reliability,
                             pci_bus_id=gpu.pci_bus_id, driver_version=self.driver_version)

    def _reliability(self, gpu: GpuRecord, now: int) -> dict[str, int | None] | None:
        """ECC, row-remapping, PCIe-replay and energy counters; None when none is known.

        Read when due (the first read, then once a minute); between reads, and after a
        transient refusal, each keeps its last value. NOT_SUPPORTED: None, not asked again.
        """
        last = gpu.reliability_read_ms
        if last is None or now - last >= RELIABILITY_EVERY_MS:
            gpu.reliability_read_ms = now
            session = self.session
            n = session.lib
            found = gpu.reliability
            for name, error_type, counter_type in _ECC:
                kind = getattr(n, error_type, _ECC_FALLBACK[error_type])
                where = getattr(n, counter_type, _ECC_FALLBACK[counter_type])
                value = session.field(gpu, name, functools.partial(
                    _ecc_total, n, error_type=kind, counter_type=where))
                if value is not None:
                    found[name] = int(value)
            rows = session.field(gpu, "remapped_rows", n.nvmlDeviceGetRemappedRows)
            if rows is not None:  # (correctable, uncorrectable, pending, failure occurred)
                corrected, uncorrected, pending, failed = (int(x) for x in rows)
                found.update(remapped_rows_correctable=corrected,
                             remapped_rows_uncorrectable=uncorrected,
                             remapped_rows_pending=pending, remap_failure=failed)
            for name, call in (("pcie_replays", n.nvmlDeviceGetPcieReplayCounter),
                               ("energy_mj", n.nvmlDeviceGetTotalEnergyConsumption)):
                value = session.field(gpu, name, call)
                if value is not None:
                    found[name] = int(value)
        out = {name: gpu.reliability.get(name) for name in RELIABILITY_NAMES}
        return None if all(v is None for v in out.values()) else out

    def _identity_labels(self, gpu: GpuRecord) -> None:
        """The PCI bus id of the GPU and the driver version, once (labels for /metrics)."""
        n = self.session.lib
        if gpu.pci_bus_id is None:
            info = self.session.field(gpu, "pci_info", n.nvmlDeviceGetPciInfo)
            if info is not None:
                gpu.pci_bus_id = text(info.busId) or None
        if self.driver_version is None and "driver_version" not in gpu.unsupported:
            try:
                self.driver_version = text(n.nvmlSystemGetDriverVersion()) or None
            except n.NVMLError:
                gpu.unsupported.add("driver_version")  # not asked again through this GPU

    def _counters(self, gpu: GpuRecord, now: int) -> dict[str, int | None] | None:
        """The throttle-time counters in one field-values call; None when none is known.

        The slow pair (HW thermal, power brake) is asked for only when due; between those
        reads, and after a transient refusal, a counter keeps its last value.
        """
        session = self.session
        n = session.lib
        last = gpu.slow_counters_read_ms
        slow_due = (last is None or now - last >= SLOW_COUNTERS_EVERY_MS
                    or bool((gpu.last_reasons or 0) & HW_SLOWDOWN_BITS))
        wanted = [(name, fid, slow) for name, fid, slow in self._counter_fields
                  if f"counter:{name}" not in gpu.unsupported and (slow_due or not slow)]
        if slow_due and any(slow for _, _, slow in wanted):
            gpu.slow_counters_read_ms = now
        if wanted:
            try:
                values = n.nvmlDeviceGetFieldValues(gpu.handle, [fid for _, fid, _ in wanted])
            except n.NVMLError as exc:
                if exc.value not in session.field_errors:
                    raise
                if exc.value == n.NVML_ERROR_NOT_SUPPORTED:
                    gpu.unsupported.update(f"counter:{name}" for name, _, _ in wanted)
                values = None
            for (name, _, _), value in zip(wanted, values or (), strict=True):
                if value.nvmlReturn == n.NVML_SUCCESS:
                    number = int(session.field_value(value, name))
                    gpu.counters[name] = number if 0 <= number < 2**63 else None
                elif value.nvmlReturn == n.NVML_ERROR_NOT_SUPPORTED:
                    gpu.unsupported.add(f"counter:{name}")
        out = {name: None if f"counter:{name}" in gpu.unsupported else gpu.counters.get(name)
               for name in COUNTER_NAMES}
        return None if all(v is None for v in out.values()) else out

    # -- XID errors through an NVML event set -------------------------------------------------
    def ensure_event_set(self) -> None:
        if self.event_set is not None or self.event_set_note is not None:
            return
        try:
            self.event_set = self.session.lib.nvmlEventSetCreate()
        except Exception as exc:
            self.event_set_note = f"XID events unavailable: event set: {exc}"
            log.warning(self.event_set_note)

    def register_xid(self, gpu: GpuRecord) -> None:
        """Register the GPU's current handle for critical XID errors, once per handle."""
        if self.event_set is None or gpu.xid_handle is gpu.handle or "xid" in gpu.unsupported:
            return
        n = self.session.lib
        gpu.xid_handle = gpu.handle  # tried with this handle: not again until re-acquired
        try:
            n.nvmlDeviceRegisterEvents(gpu.handle,
                                       getattr(n, "nvmlEventTypeXidCriticalError",
                                               XID_CRITICAL_ERROR), self.event_set)
        except Exception as exc:
            if isinstance(exc, n.NVMLError) and exc.value == n.NVML_ERROR_NOT_SUPPORTED:
                gpu.unsupported.add("xid")
                gpu.xid_note = "XID events not supported"
            else:
                gpu.xid_note = f"XID events unavailable: {exc}"
            log.info("GPU %d: %s", gpu.index, gpu.xid_note)
            return
        gpu.xid_note = None

    def drain_xids(self, gpus: list[GpuRecord]) -> dict[int, list[Xid]]:
        """Every XID pending in the event set (a 0 ms wait each; TIMEOUT: none pending), by
        the index of its GPU among ``gpus`` (-1: unknown)."""
        if self.event_set is None:
            return {}
        n = self.session.lib
        wait = getattr(n, "nvmlEventSetWait_v2", None) or n.nvmlEventSetWait
        xid_type = getattr(n, "nvmlEventTypeXidCriticalError", XID_CRITICAL_ERROR)
        out: dict[int, list[Xid]] = {}
        for _ in range(MAX_EVENTS_PER_READ):
            try:
                data = wait(self.event_set, 0)
            except n.NVMLError as exc:
                if exc.value != n.NVML_ERROR_TIMEOUT:
                    log.warning("waiting for NVML events failed: %s", exc)
                    if exc.value == n.NVML_ERROR_UNINITIALIZED:
                        self.session.lost = True
                break
            if not int(data.eventType) & xid_type:
                continue
            details = {key: int(getattr(data, attr)) for key, attr in (
                ("gpu_instance_id", "gpuInstanceId"),
                ("compute_instance_id", "computeInstanceId"),
            ) if int(getattr(data, attr, NO_INSTANCE)) != NO_INSTANCE}
            index = self._index_of(data.device, gpus)
            xid = Xid(int(data.eventData), details)
            log.warning("GPU %s: XID %d", index, xid.code)
            out.setdefault(-1 if index is None else index, []).append(xid)
        return out

    def _index_of(self, device: Any, gpus: list[GpuRecord]) -> int | None:
        """The index of the GPU an event came from: by handle, else by asking NVML."""
        key = _handle_key(device)
        for gpu in gpus:
            if gpu.handle is not None and _handle_key(gpu.handle) == key:
                return gpu.index
        try:
            return int(self.session.lib.nvmlDeviceGetIndex(device))
        except Exception:
            return None
