"""The NVML backend: the one module that touches ``pynvml`` (nvidia-ml-py).

Init is lazy, locked and done once; handles and identity facts are cached. A field the GPU
answers NOT_SUPPORTED for is None and is not asked again; any other NVML error makes only
that GPU's reading unavailable, and it is retried on the next read. A failing ``nvmlInit``
is retried with exponential backoff on the injected clock. The energy counter is never read
per tick (it costs ~3 ms per call on an H100): only with the hardware facts, once a minute.

``read_hardware`` adds the slower facts (gpuhistory/sampling/hardware.py): the compute
processes (pid and memory from NVML, name and owner from /proc), the cumulative
throttle-time counters (one field-values call) and the critical XID errors pending in an
NVML event set (drained with a 0 ms wait). Each part that a GPU answers NOT_SUPPORTED for
is None and not asked again; where event sets are unsupported, health says so. Slow-moving
error counters (ECC, row remapping, PCIe replays) and the energy counter are read on the
first hardware read and then at most once a minute (``RELIABILITY_EVERY_MS``); the PCI bus
id and the driver version once.

Every NVML call runs on one long-lived worker thread (gpuhistory/sampling/worker.py): a
read is one hand-off, and the caller waits at most ``timeout_s``. A GPU whose call does not
answer in time is *hung*: it is reported unavailable and not asked again until that call
returns (then its handle is acquired afresh), and the other GPUs are read by a fresh worker.
An ``nvmlInit`` that does not answer in time keeps running; until it returns, reads report
the known GPUs unavailable at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

import pynvml

from gpuhistory.clock import Clock, SystemClock
from gpuhistory.domain.reading import GpuIdentity, Reading, unavailable
from gpuhistory.sampling.backend import BackendHealth
from gpuhistory.sampling.hardware import (
    COUNTER_NAMES,
    RELIABILITY_NAMES,
    HardwareFacts,
    ProcessInfo,
    Xid,
)
from gpuhistory.sampling.procinfo import Owner, ProcReader, pid_namespace_is_nested
from gpuhistory.sampling.worker import CallTimedOut, Job, Worker

log = logging.getLogger(__name__)

MIB = 1024 * 1024
POWER_LIMIT_EVERY_MS = 60_000  # the enforced power limit is re-read at most once a minute

# c_nvmlFieldValue_t.valueType → the member of its value union that holds the value.
_VALUE_MEMBERS = {
    "NVML_VALUE_TYPE_DOUBLE": "dVal",
    "NVML_VALUE_TYPE_UNSIGNED_INT": "uiVal",
    "NVML_VALUE_TYPE_UNSIGNED_LONG": "ulVal",
    "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG": "ullVal",
    "NVML_VALUE_TYPE_SIGNED_LONG_LONG": "sllVal",
    "NVML_VALUE_TYPE_SIGNED_INT": "siVal",
    "NVML_VALUE_TYPE_UNSIGNED_SHORT": "usVal",
}

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


def _ecc_total(nvml: Any, handle: Any, error_type: int, counter_type: int) -> Any:
    """One ECC total; the handle comes second, so ``_field`` can pass it to a partial."""
    return nvml.nvmlDeviceGetTotalEccErrors(handle, error_type, counter_type)


_ECC_FALLBACK = {"NVML_MEMORY_ERROR_TYPE_CORRECTED": 0, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED": 1,
                 "NVML_VOLATILE_ECC": 0, "NVML_AGGREGATE_ECC": 1}
HW_SLOWDOWN_BITS = 0x08 | 0x40 | 0x80  # HwSlowdown, HwThermalSlowdown, HwPowerBrakeSlowdown
XID_CRITICAL_ERROR = 0x8  # nvmlEventTypeXidCriticalError
MAX_EVENTS_PER_READ = 256  # a storm of events is drained over several reads
NOT_AVAILABLE_U64 = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE as an unsigned long long
NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId / computeInstanceId outside MIG
DEFAULT_TIMEOUT_S = 5.0  # config key nvml_timeout_seconds
INIT, EVENTS = "init", "events"  # what a job is doing when it is not reading one GPU


def _text(value: Any) -> str:
    """NVML strings arrive as str from current bindings, as bytes from older ones."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def nvml_library_present(nvml: ModuleType | None = None,
                         timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """False only when the NVML library itself is absent (nvmlInit: LIBRARY_NOT_FOUND).

    A present library that fails to initialise (driver not loaded, version mismatch) counts
    as present: the ``auto`` backend must then stay on NVML and report GPUs UNAVAILABLE.
    A successful init is balanced by a shutdown. An init that does not answer within
    ``timeout_s`` counts as present (the library is there, and hangs).
    """
    nvml = nvml if nvml is not None else pynvml

    def probe(_job: Job) -> bool:
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            return exc.value != nvml.NVML_ERROR_LIBRARY_NOT_FOUND
        except Exception:  # an odd binding failure is not proof that the driver is absent
            return True
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
        return True

    worker = Worker("gpuhistory-nvml-probe")
    try:
        return bool(worker.call(probe, timeout_s))
    except CallTimedOut:
        log.warning("nvmlInit did not answer within %g s: assuming the library is present",
                    timeout_s)
        return True
    finally:
        worker.close()


@dataclass
class _Gpu:
    """What the backend knows about the GPU at one index."""

    index: int
    handle: Any = None  # None: (re)acquire the handle and identity on the next read
    uuid: str | None = None
    name: str | None = None
    memory_total_mib: int | None = None
    power_limit_w: float | None = None
    power_limit_read_ms: int | None = None
    slowdown_temp_c: int | None = None
    shutdown_temp_c: int | None = None
    unsupported: set[str] = field(default_factory=set)  # fields never to ask again
    error: str | None = None
    in_call: str = ""  # the field being read now: names what hung when a call does not return
    # read_hardware: the handle XID events were registered with (None: not yet), why XID
    # events are unavailable, the last hardware read's error, the names of the pids seen.
    xid_handle: Any = None
    xid_note: str | None = None
    hardware_error: str | None = None
    process_details: dict[int, tuple[str | None, Owner | None]] = field(default_factory=dict)
    # Error and energy counters last read (RELIABILITY_NAMES), when; the PCI bus id.
    reliability: dict[str, int | None] = field(default_factory=dict)
    reliability_read_ms: int | None = None
    pci_bus_id: str | None = None
    # The throttle-time counters last read, when the slow ones were, the last reasons mask.
    counters: dict[str, int | None] = field(default_factory=dict)
    slow_counters_read_ms: int | None = None
    last_reasons: int | None = None


class NvmlBackend:
    """Readings from NVIDIA's management library, one NVML call per field."""

    name = "nvml"

    def __init__(
        self,
        nvml: ModuleType | None = None,
        clock: Clock | None = None,
        init_retry_max_s: float = 60.0,
        process_names: bool | None = None,
        timeout_s: float | Callable[[], float] = DEFAULT_TIMEOUT_S,
        proc: ProcReader | None = None,
    ) -> None:
        self.nvml: Any = nvml if nvml is not None else pynvml
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.init_retry_max_s = init_retry_max_s
        self._timeout_s = timeout_s  # seconds a read waits for NVML (or a getter of it)
        # Look processes up in /proc (``proc``)? None: unless in a child PID namespace.
        self.process_names = (not pid_namespace_is_nested() if process_names is None
                              else process_names)
        self.proc = proc if proc is not None else ProcReader()
        self._event_set: Any = None
        self._event_set_note: str | None = None  # why there is no event set
        self._driver_version: str | None = None  # read once, with the first hardware facts
        self._lock = threading.Lock()  # one caller at a time (the tick, /healthz, close)
        # Guards what a job shares with its caller once it may have been abandoned: which
        # GPUs are hung, the results handed back, the GPU records.
        self._commit = threading.Lock()
        self._worker: Worker | None = None
        self._hung: dict[int, str] = {}  # index → why: its call has not returned
        self._init_job: Job | None = None  # an nvmlInit that has not returned
        self._init_started_ms = 0
        self._initialised = False
        self._session_lost = False
        self._init_error: str | None = None
        self._init_failures = 0
        self._retry_at_ms: int | None = None
        self._gpus: list[_Gpu] = []
        n = self.nvml
        # Errors that leave one field empty rather than the GPU unavailable.
        self._field_errors = {
            getattr(n, name) for name in (
                "NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_NO_PERMISSION",
                "NVML_ERROR_FUNCTION_NOT_FOUND", "NVML_ERROR_NO_DATA",
            ) if hasattr(n, name)
        }
        self._value_members = {
            getattr(n, name): member for name, member in _VALUE_MEMBERS.items()
            if hasattr(n, name)
        }
        self._counter_fields = [(name, getattr(n, constant, fallback), slow)
                                for name, constant, fallback, slow in _COUNTER_FIELDS]

    # -- the Backend interface -------------------------------------------------------------
    def read(self) -> list[Reading]:
        """One reading per GPU; a failing or hung GPU is unavailable, the others are read."""
        return self._read(hardware=False)[0]

    def read_with_hardware(self) -> tuple[list[Reading], list[HardwareFacts], str | None]:
        """``read`` and ``read_hardware`` in one hand-off to the worker (what a tick that is
        due for hardware facts costs): the readings, the facts, and why the facts could not
        be read (None when they could)."""
        return self._read(hardware=True)

    def _read(self, hardware: bool) -> tuple[list[Reading], list[HardwareFacts], str | None]:
        with self._lock:
            if self._init_job is not None:
                return self._init_hung_readings(), [], None
            results: dict[int, Reading] = {}
            facts: dict[int, HardwareFacts] | None = {} if hardware else None
            failure: list[str] = []
            pending: list[int] | None = None  # None: every GPU, once init has enumerated them
            while True:
                try:
                    if not self._call(functools.partial(
                            self._read_job, pending=pending, results=results, facts=facts,
                            failure=failure)):
                        return [self._unavailable(gpu, self._init_error or "NVML not initialised")
                                for gpu in self._gpus], [], None
                    break
                except CallTimedOut as exc:
                    if exc.job.where == INIT:
                        return self._init_hung_readings(), [], None
                    with self._commit:  # read the rest with a fresh worker
                        pending = [i for i in range(len(self._gpus))
                                   if i not in results and i not in self._hung]
                    if not pending:  # it hung in the hardware part: the readings are whole
                        break
                    facts = None  # no hardware facts after a hang in this read
            readings = [results.get(i) or self._unavailable(gpu, self._hung.get(
                i, "not read")) for i, gpu in enumerate(self._gpus)]
            if self._session_lost:  # NVML was shut down under us (another user's nvmlShutdown)
                self._initialised = self._session_lost = False  # the next read inits again
            with self._commit:
                gathered = [] if facts is None else [facts[i] for i in sorted(facts)]
            return readings, gathered, failure[0] if failure else None

    def identities(self) -> list[GpuIdentity]:
        """The GPUs known now (also while they are unavailable), with their identity facts."""
        self._init_if_needed()
        with self._commit:
            gpus = list(self._gpus)
        return [
            GpuIdentity(index=g.index, uuid=g.uuid, name=g.name,
                        memory_total_mib=g.memory_total_mib, power_limit_w=g.power_limit_w,
                        slowdown_temp_c=g.slowdown_temp_c, shutdown_temp_c=g.shutdown_temp_c)
            for g in gpus if g.uuid is not None
        ]

    def health(self) -> BackendHealth:
        """Not ok while NVML cannot be initialised; the detail says why and when it retries.

        Once NVML is initialised this asks NVML nothing, so it answers at once also while a
        read waits for a hung call.
        """
        self._init_if_needed()
        with self._commit:
            if self._init_job is not None:
                waited_s = (self.clock.now_ms() - self._init_started_ms) / 1000
                return BackendHealth(ok=False, detail=f"nvmlInit has not returned after "
                                                      f"{waited_s:g} s")
            if not self._initialised:
                wait_s = max(0, (self._retry_at_ms or 0) - self.clock.now_ms()) / 1000
                return BackendHealth(ok=False, detail=f"{self._init_error}; "
                                                      f"retrying in {wait_s:g} s")
            gpus = list(self._gpus)
            failing = [f"GPU {g.index}: {self._hung.get(g.index) or g.error}" for g in gpus
                       if g.index in self._hung or g.error]
        notes = [f"GPU {g.index}: hardware facts: {g.hardware_error}"
                 for g in gpus if g.hardware_error and not g.error]
        xid = sorted({g.xid_note for g in gpus if g.xid_note})
        if self._event_set_note:
            notes.append(self._event_set_note)
        elif len(xid) == 1 and all(g.xid_note for g in gpus):
            notes.append(xid[0])
        else:
            notes.extend(f"GPU {g.index}: {g.xid_note}" for g in gpus if g.xid_note)
        detail = f"NVML: {len(gpus)} GPU(s)"
        return BackendHealth(ok=True, detail="; ".join([detail, *failing, *notes]))

    def close(self) -> None:
        """Shut NVML down if this backend initialised it; a later read initialises again."""
        with self._lock:
            if self._initialised and self._init_job is None:
                with contextlib.suppress(Exception):
                    self._call(self._shutdown_job)
            if self._worker is not None:
                self._worker.close()
            self._worker = None
            self._event_set = None
            self._event_set_note = None
            self._initialised = False
            self._gpus = []
            self._hung = {}
            self._init_failures = 0
            self._retry_at_ms = None

    # -- the worker ----------------------------------------------------------------------
    def _timeout(self) -> float:
        value = self._timeout_s() if callable(self._timeout_s) else self._timeout_s
        return float(value)

    def _call(self, fn: Callable[[Job], Any]) -> Any:
        """Run ``fn`` on the worker, waiting at most the timeout (CallTimedOut after it)."""
        if self._worker is None or self._worker.stuck:
            self._worker = Worker()
        timeout = self._timeout()
        return self._worker.call(fn, timeout, lambda job: self._abandoned(job, timeout))

    def _abandoned(self, job: Job, timeout_s: float) -> None:
        """A job did not come back in time: mark what it was doing as hung."""
        with self._commit:
            where = job.where
            if where == INIT:
                self._init_job = job
                self._init_started_ms = self.clock.now_ms()
                self._init_error = f"nvmlInit did not answer within {timeout_s:g} s"
                log.error("%s; reads report the GPUs unavailable until it does",
                          self._init_error)
                job.on_return = self._init_returned
            elif where == EVENTS:
                self._event_set = None
                self._event_set_note = (f"XID events unavailable: the event set did not "
                                        f"answer within {timeout_s:g} s")
                log.error(self._event_set_note)
            elif isinstance(where, int):
                gpu = self._gpus[where]
                why = f"NVML did not answer within {timeout_s:g} s (reading {gpu.in_call})"
                self._hung[where] = why
                # A record of its own, so the late call's changes land on the old one; no
                # handle: it is acquired afresh (and its UUID checked) once the call returns.
                self._gpus[where] = _Gpu(
                    index=gpu.index, uuid=gpu.uuid, name=gpu.name,
                    memory_total_mib=gpu.memory_total_mib, power_limit_w=gpu.power_limit_w,
                    slowdown_temp_c=gpu.slowdown_temp_c, shutdown_temp_c=gpu.shutdown_temp_c,
                    unsupported=set(gpu.unsupported), error=why)
                log.error("GPU %d: %s; the other GPUs are read by a fresh worker", where, why)
                job.on_return = lambda _job: self._gpu_returned(where, why)

    def _init_returned(self, _job: Job) -> None:
        with self._commit:
            self._init_job = None
        log.warning("the hung nvmlInit returned (%s)",
                    "initialised" if self._initialised else self._init_error)

    def _gpu_returned(self, index: int, why: str) -> None:
        with self._commit:
            if self._hung.get(index) == why:
                del self._hung[index]
        log.warning("GPU %d: the hung NVML call returned; the GPU is read again", index)

    def _init_hung_readings(self) -> list[Reading]:
        return [self._unavailable(gpu, self._init_error or "nvmlInit has not returned")
                for gpu in self._gpus]

    def _init_if_needed(self) -> None:
        """Initialise (bounded) unless done, in backoff or already under way."""
        if self._initialised or self._init_job is not None:
            return
        with self._lock:
            if not self._initialised and self._init_job is None:
                with contextlib.suppress(CallTimedOut):
                    self._call(self._init_only)

    def _init_only(self, job: Job) -> bool:
        job.where = INIT
        return self._ensure_init()

    def _shutdown_job(self, job: Job) -> None:
        job.where = EVENTS
        if self._event_set is not None:
            with contextlib.suppress(Exception):
                self.nvml.nvmlEventSetFree(self._event_set)
        job.where = INIT
        with contextlib.suppress(Exception):
            self.nvml.nvmlShutdown()

    def _read_job(self, job: Job, pending: list[int] | None, results: dict[int, Reading],
                  facts: dict[int, HardwareFacts] | None = None,
                  failure: list[str] | None = None) -> bool:
        """On the worker: init if needed, read the GPUs in ``pending`` (None: all), then
        their hardware facts into ``facts`` (unless None; a surprise there goes into
        ``failure`` and leaves the readings whole)."""
        job.where = INIT
        if not self._ensure_init():
            return False
        now = self.clock.now_ms()
        commit = self._commit
        for i in range(len(self._gpus)) if pending is None else pending:
            with commit:
                if job.abandoned:
                    return True
                if i in self._hung:
                    continue
                job.where = i
                gpu = self._gpus[i]
            reading, gpu = self._read_one(gpu, now)
            with commit:
                if job.abandoned:  # came back late: the caller has moved on
                    return True
                job.where = None
                self._gpus[i] = gpu
                results[i] = reading
        if facts is not None:
            try:
                self._hardware_job(job, facts)
            except Exception as exc:  # facts are optional: never sink the readings
                log.exception("reading hardware facts failed")
                facts.clear()
                if failure is not None:
                    failure.append(f"{type(exc).__name__}: {exc}")
        return True

    # -- init --------------------------------------------------------------------------------
    def _ensure_init(self) -> bool:
        """Initialise NVML and enumerate the GPUs, unless a backoff delay is running."""
        if self._initialised:
            return True
        now = self.clock.now_ms()
        if self._retry_at_ms is not None and now < self._retry_at_ms:
            return False
        n = self.nvml
        try:
            n.nvmlInit()
        except Exception as exc:
            self._init_failed(exc, now)
            return False
        try:
            count = n.nvmlDeviceGetCount()
        except Exception as exc:
            with contextlib.suppress(Exception):
                n.nvmlShutdown()
            self._init_failed(exc, now)
            return False
        self._initialised = True
        self._init_error = None
        self._init_failures = 0
        self._retry_at_ms = None
        self._event_set = None  # an event set does not survive a re-init either
        self._event_set_note = None
        known = {gpu.index: gpu for gpu in self._gpus}
        self._gpus = [known.get(i, _Gpu(index=i)) for i in range(count)]
        for i, gpu in enumerate(self._gpus):
            gpu.handle = None  # handles do not survive a re-init
            try:
                self._gpus[i] = self._attach(gpu, now)
            except Exception as exc:  # read() retries it and reports the error
                gpu.error = str(exc)
        log.info("NVML initialised: %d GPU(s)", count)
        return True

    def _init_failed(self, exc: Exception, now: int) -> None:
        self._init_failures += 1
        delay_s = min(self.init_retry_max_s, 2.0 ** min(self._init_failures - 1, 30))
        self._retry_at_ms = now + round(delay_s * 1000)
        self._init_error = f"NVML init failed: {exc}"
        log.warning("%s (attempt %d); retrying in %g s", self._init_error,
                    self._init_failures, delay_s)

    # -- one GPU -----------------------------------------------------------------------------
    def _attach(self, known: _Gpu, now: int) -> _Gpu:
        """Acquire the handle at ``known.index`` and read its identity facts once."""
        n = self.nvml
        known.in_call = "handle and identity"
        handle = n.nvmlDeviceGetHandleByIndex(known.index)
        gpu = _Gpu(index=known.index, handle=handle, uuid=_text(n.nvmlDeviceGetUUID(handle)))
        if known.uuid is not None and known.uuid != gpu.uuid:
            log.warning("GPU %d: UUID is now %s (was %s): another card has this index",
                        gpu.index, gpu.uuid, known.uuid)
        name = self._field(gpu, "name", n.nvmlDeviceGetName)
        gpu.name = None if name is None else _text(name)
        memory = self._field(gpu, "memory", n.nvmlDeviceGetMemoryInfo)
        gpu.memory_total_mib = None if memory is None else int(memory.total) // MIB
        gpu.slowdown_temp_c = self._field(gpu, "slowdown_temp", lambda h: (
            n.nvmlDeviceGetTemperatureThreshold(h, n.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)))
        gpu.shutdown_temp_c = self._field(gpu, "shutdown_temp", lambda h: (
            n.nvmlDeviceGetTemperatureThreshold(h, n.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN)))
        self._read_power_limit(gpu, now)
        return gpu

    def _read_one(self, gpu: _Gpu, now: int) -> tuple[Reading, _Gpu]:
        """Read one GPU; any failure other than an empty field makes it unavailable.

        Returns the reading and the GPU's record (a new one when its handle was acquired).
        """
        try:
            if gpu.handle is None:
                gpu = self._attach(gpu, now)
            reading = self._sample(gpu, now)
        except self.nvml.NVMLError as exc:
            if exc.value == self.nvml.NVML_ERROR_GPU_IS_LOST:
                gpu.handle = None  # re-acquire it by index (and check its UUID) next time
            elif exc.value == self.nvml.NVML_ERROR_UNINITIALIZED:
                self._session_lost = True
            return self._unavailable(gpu, str(exc)), gpu
        except Exception as exc:  # a binding surprise on one GPU must not sink the others
            return self._unavailable(gpu, f"{type(exc).__name__}: {exc}"), gpu
        gpu.error = None
        gpu.last_reasons = reading.clock_event_reasons
        return reading, gpu

    def _sample(self, gpu: _Gpu, now: int) -> Reading:
        n = self.nvml

        def get(name: str, call: Callable[[Any], Any]) -> Any:
            return self._field(gpu, name, call)

        last = gpu.power_limit_read_ms
        if last is None or now - last >= POWER_LIMIT_EVERY_MS:
            self._read_power_limit(gpu, now)
        memory = get("memory", n.nvmlDeviceGetMemoryInfo)
        utilization = get("utilization", n.nvmlDeviceGetUtilizationRates)
        power_mw = get("power", n.nvmlDeviceGetPowerUsage)
        pstate = get("pstate", n.nvmlDeviceGetPerformanceState)
        return Reading(
            index=gpu.index, uuid=gpu.uuid, name=gpu.name,
            temperature_c=get("temperature", lambda h: (
                n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))),
            memory_temperature_c=get("memory_temperature", self._memory_temperature),
            memory_used_mib=None if memory is None else int(memory.used) // MIB,
            memory_total_mib=(gpu.memory_total_mib if memory is None
                              else int(memory.total) // MIB),
            utilization_pct=None if utilization is None else int(utilization.gpu),
            power_w=None if power_mw is None else power_mw / 1000,
            power_limit_w=gpu.power_limit_w,
            sm_clock_mhz=get("sm_clock", lambda h: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
            mem_clock_mhz=get("mem_clock", lambda h: (
                n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM))),
            clock_event_reasons=get("clock_event_reasons", self._clock_event_reasons),
            pstate=None if pstate is None or not 0 <= pstate <= 15 else pstate,  # 32: unknown
            fan_pct=get("fan", n.nvmlDeviceGetFanSpeed),
        )

    def _field(self, gpu: _Gpu, name: str, call: Callable[[Any], Any]) -> Any:
        """One NVML call; None for a field the GPU cannot answer (NOT_SUPPORTED: remembered)."""
        if name in gpu.unsupported:
            return None
        gpu.in_call = name
        try:
            return call(gpu.handle)
        except self.nvml.NVMLError as exc:
            if exc.value not in self._field_errors:
                raise
            if exc.value == self.nvml.NVML_ERROR_NOT_SUPPORTED:
                gpu.unsupported.add(name)
            return None

    def _read_power_limit(self, gpu: _Gpu, now: int) -> None:
        gpu.power_limit_read_ms = now
        limit_mw = self._field(gpu, "power_limit", self.nvml.nvmlDeviceGetEnforcedPowerLimit)
        if limit_mw is not None:  # a transient refusal keeps the last known limit
            gpu.power_limit_w = limit_mw / 1000

    def _memory_temperature(self, handle: Any) -> int:
        n = self.nvml
        value = n.nvmlDeviceGetFieldValues(handle, [n.NVML_FI_DEV_MEMORY_TEMP])[0]
        if value.nvmlReturn != n.NVML_SUCCESS:
            raise n.NVMLError(value.nvmlReturn)
        return round(self._field_value(value, "memory temperature"))

    def _field_value(self, value: Any, what: str) -> float | int:
        """The number in a c_nvmlFieldValue_t, from the union member its valueType names."""
        member = self._value_members.get(value.valueType)
        if member is None:
            raise ValueError(f"{what} has unknown value type {value.valueType}")
        return getattr(value.value, member)

    def _clock_event_reasons(self, handle: Any) -> int:
        n = self.nvml
        if hasattr(n, "nvmlDeviceGetCurrentClocksEventReasons"):
            return int(n.nvmlDeviceGetCurrentClocksEventReasons(handle))
        return int(n.nvmlDeviceGetCurrentClocksThrottleReasons(handle))  # bindings < 12.535

    def _unavailable(self, gpu: _Gpu, error: str) -> Reading:
        """An unavailable reading that still carries the facts the pipeline registers."""
        gpu.error = error
        return replace(unavailable(gpu.index, error, gpu.uuid), name=gpu.name,
                       memory_total_mib=gpu.memory_total_mib, power_limit_w=gpu.power_limit_w)

    # -- hardware facts ----------------------------------------------------------------------
    def read_hardware(self) -> list[HardwareFacts]:
        """Processes, throttle-time counters and pending XIDs of every GPU; never raises.

        A GPU whose facts cannot be read this time reports None for them (its error is in
        ``health``); the GPU itself is still read by ``read``. A call that hangs ends the
        read with the facts gathered so far (and marks its GPU, or the event set, hung).
        """
        with self._lock:
            if self._init_job is not None:
                return []
            facts: dict[int, HardwareFacts] = {}
            with contextlib.suppress(CallTimedOut):
                self._call(lambda job: self._hardware_job(job, facts))
            if self._session_lost:
                self._initialised = self._session_lost = False
            with self._commit:
                return [facts[i] for i in sorted(facts)]

    def _step(self, job: Job, where: str | int) -> bool:
        """Say what the job does next; False once it was abandoned (it must stop)."""
        with self._commit:
            if job.abandoned:
                return False
            job.where = where
            return True

    def _hardware_job(self, job: Job, facts: dict[int, HardwareFacts]) -> None:
        """On the worker: the hardware facts of every GPU that is not hung, into ``facts``."""
        if not self._initialised:
            job.where = INIT
            if not self._ensure_init():
                return
        if not self._step(job, EVENTS):
            return
        self._ensure_event_set()
        for gpu in list(self._gpus):
            if gpu.index in self._hung:
                continue
            if not self._step(job, gpu.index):
                return
            if gpu.handle is not None:
                self._register_xid(gpu)
        if not self._step(job, EVENTS):
            return
        xids = self._drain_xids()
        now = self.clock.now_ms()
        for i, gpu in enumerate(list(self._gpus)):
            if i in self._hung:
                fact = HardwareFacts(index=i, xids=xids.pop(i, []))
            else:
                if not self._step(job, i):
                    return
                fact = self._hardware_one(gpu, xids.pop(i, []), now)
            with self._commit:
                if job.abandoned:
                    return
                job.where = None
                facts[i] = fact
        for index, lost in xids.items():
            log.warning("XID %s on a GPU this backend does not know (index %s)",
                        [x.code for x in lost], index)

    def _hardware_one(self, gpu: _Gpu, xids: list[Xid], now: int) -> HardwareFacts:
        if gpu.handle is None:  # lost or not attached: read() re-acquires it
            return HardwareFacts(index=gpu.index, xids=xids)
        n = self.nvml
        try:
            processes = self._processes(gpu)
            counters = self._counters(gpu, now)
            reliability = self._reliability(gpu, now)
            self._identity_labels(gpu)
        except n.NVMLError as exc:
            if exc.value == n.NVML_ERROR_GPU_IS_LOST:
                gpu.handle = None
            elif exc.value == n.NVML_ERROR_UNINITIALIZED:
                self._session_lost = True
            gpu.hardware_error = str(exc)
            return HardwareFacts(index=gpu.index, xids=xids)
        except Exception as exc:  # a binding surprise: no facts for this GPU this time
            gpu.hardware_error = f"{type(exc).__name__}: {exc}"
            log.warning("GPU %d: reading hardware facts failed: %s", gpu.index,
                        gpu.hardware_error)
            return HardwareFacts(index=gpu.index, xids=xids)
        gpu.hardware_error = None
        return HardwareFacts(index=gpu.index, processes=processes, counters=counters,
                             xids=xids, reliability=reliability,
                             pci_bus_id=gpu.pci_bus_id, driver_version=self._driver_version)

    def _processes(self, gpu: _Gpu) -> list[ProcessInfo] | None:
        """The compute processes on the GPU (v3 of the call where the binding has it)."""
        n = self.nvml
        call = getattr(n, "nvmlDeviceGetComputeRunningProcesses_v3", None) \
            or n.nvmlDeviceGetComputeRunningProcesses
        infos = self._field(gpu, "processes", call)
        if infos is None:
            return None
        details: dict[int, tuple[str | None, Owner | None]] = {}
        out = []
        for info in infos:
            pid = int(info.pid)
            used = info.usedGpuMemory  # bytes; None (or the sentinel) where NVML cannot say
            mib = None if used is None or used >= NOT_AVAILABLE_U64 else int(used) // MIB
            if pid not in details:
                details[pid] = (gpu.process_details[pid] if pid in gpu.process_details
                                else self.proc.process(pid) if self.process_names
                                else (None, None))
            name, owner = details[pid]
            out.append(ProcessInfo(pid, name, mib, owner))
        gpu.process_details = details  # looked up once per pid while it runs
        return out

    def _reliability(self, gpu: _Gpu, now: int) -> dict[str, int | None] | None:
        """ECC, row-remapping, PCIe-replay and energy counters; None when none is known.

        Read when due (the first read, then once a minute); between reads, and after a
        transient refusal, each keeps its last value. NOT_SUPPORTED: None, not asked again.
        """
        last = gpu.reliability_read_ms
        if last is None or now - last >= RELIABILITY_EVERY_MS:
            gpu.reliability_read_ms = now
            n = self.nvml
            found = gpu.reliability
            for name, error_type, counter_type in _ECC:
                kind = getattr(n, error_type, _ECC_FALLBACK[error_type])
                where = getattr(n, counter_type, _ECC_FALLBACK[counter_type])
                value = self._field(gpu, name, functools.partial(
                    _ecc_total, n, error_type=kind, counter_type=where))
                if value is not None:
                    found[name] = int(value)
            rows = self._field(gpu, "remapped_rows", n.nvmlDeviceGetRemappedRows)
            if rows is not None:  # (correctable, uncorrectable, pending, failure occurred)
                corrected, uncorrected, pending, failed = (int(x) for x in rows)
                found.update(remapped_rows_correctable=corrected,
                             remapped_rows_uncorrectable=uncorrected,
                             remapped_rows_pending=pending, remap_failure=failed)
            for name, call in (("pcie_replays", n.nvmlDeviceGetPcieReplayCounter),
                               ("energy_mj", n.nvmlDeviceGetTotalEnergyConsumption)):
                value = self._field(gpu, name, call)
                if value is not None:
                    found[name] = int(value)
        out = {name: gpu.reliability.get(name) for name in RELIABILITY_NAMES}
        return None if all(v is None for v in out.values()) else out

    def _identity_labels(self, gpu: _Gpu) -> None:
        """The PCI bus id of the GPU and the driver version, once (labels for /metrics)."""
        n = self.nvml
        if gpu.pci_bus_id is None:
            info = self._field(gpu, "pci_info", n.nvmlDeviceGetPciInfo)
            if info is not None:
                gpu.pci_bus_id = _text(info.busId) or None
        if self._driver_version is None and "driver_version" not in gpu.unsupported:
            try:
                self._driver_version = _text(n.nvmlSystemGetDriverVersion()) or None
            except n.NVMLError:
                gpu.unsupported.add("driver_version")  # not asked again through this GPU

    def _counters(self, gpu: _Gpu, now: int) -> dict[str, int | None] | None:
        """The throttle-time counters in one field-values call; None when none is known.

        The slow pair (HW thermal, power brake) is asked for only when due; between those
        reads, and after a transient refusal, a counter keeps its last value.
        """
        n = self.nvml
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
                if exc.value not in self._field_errors:
                    raise
                if exc.value == n.NVML_ERROR_NOT_SUPPORTED:
                    gpu.unsupported.update(f"counter:{name}" for name, _, _ in wanted)
                values = None
            for (name, _, _), value in zip(wanted, values or (), strict=True):
                if value.nvmlReturn == n.NVML_SUCCESS:
                    number = int(self._field_value(value, name))
                    gpu.counters[name] = number if 0 <= number < 2**63 else None
                elif value.nvmlReturn == n.NVML_ERROR_NOT_SUPPORTED:
                    gpu.unsupported.add(f"counter:{name}")
        out = {name: None if f"counter:{name}" in gpu.unsupported else gpu.counters.get(name)
               for name in COUNTER_NAMES}
        return None if all(v is None for v in out.values()) else out

    # -- XID errors through an NVML event set ---------------------------------------------------
    def _ensure_event_set(self) -> None:
        if self._event_set is not None or self._event_set_note is not None:
            return
        try:
            self._event_set = self.nvml.nvmlEventSetCreate()
        except Exception as exc:
            self._event_set_note = f"XID events unavailable: event set: {exc}"
            log.warning(self._event_set_note)

    def _register_xid(self, gpu: _Gpu) -> None:
        """Register the GPU's current handle for critical XID errors, once per handle."""
        if self._event_set is None or gpu.xid_handle is gpu.handle or "xid" in gpu.unsupported:
            return
        n = self.nvml
        gpu.xid_handle = gpu.handle  # tried with this handle: not again until re-acquired
        try:
            n.nvmlDeviceRegisterEvents(gpu.handle,
                                       getattr(n, "nvmlEventTypeXidCriticalError",
                                               XID_CRITICAL_ERROR), self._event_set)
        except Exception as exc:
            if isinstance(exc, n.NVMLError) and exc.value == n.NVML_ERROR_NOT_SUPPORTED:
                gpu.unsupported.add("xid")
                gpu.xid_note = "XID events not supported"
            else:
                gpu.xid_note = f"XID events unavailable: {exc}"
            log.info("GPU %d: %s", gpu.index, gpu.xid_note)
            return
        gpu.xid_note = None

    def _drain_xids(self) -> dict[int, list[Xid]]:
        """Every XID pending in the event set (a 0 ms wait each; TIMEOUT: none pending)."""
        if self._event_set is None:
            return {}
        n = self.nvml
        wait = getattr(n, "nvmlEventSetWait_v2", None) or n.nvmlEventSetWait
        xid_type = getattr(n, "nvmlEventTypeXidCriticalError", XID_CRITICAL_ERROR)
        out: dict[int, list[Xid]] = {}
        for _ in range(MAX_EVENTS_PER_READ):
            try:
                data = wait(self._event_set, 0)
            except n.NVMLError as exc:
                if exc.value != n.NVML_ERROR_TIMEOUT:
                    log.warning("waiting for NVML events failed: %s", exc)
                    if exc.value == n.NVML_ERROR_UNINITIALIZED:
                        self._session_lost = True
                break
            if not int(data.eventType) & xid_type:
                continue
            details = {key: int(getattr(data, attr)) for key, attr in (
                ("gpu_instance_id", "gpuInstanceId"),
                ("compute_instance_id", "computeInstanceId"),
            ) if int(getattr(data, attr, NO_INSTANCE)) != NO_INSTANCE}
            index = self._index_of(data.device)
            xid = Xid(int(data.eventData), details)
            log.warning("GPU %s: XID %d", index, xid.code)
            out.setdefault(-1 if index is None else index, []).append(xid)
        return out

    def _index_of(self, device: Any) -> int | None:
        """The index of the GPU an event came from: by handle, else by asking NVML."""
        key = _handle_key(device)
        for gpu in self._gpus:
            if gpu.handle is not None and _handle_key(gpu.handle) == key:
                return gpu.index
        try:
            return int(self.nvml.nvmlDeviceGetIndex(device))
        except Exception:
            return None


def _handle_key(handle: Any) -> Any:
    """What identifies a device handle: the address a ctypes pointer holds, else itself."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return handle
