"""The NVML backend: the one module that touches ``pynvml`` (nvidia-ml-py).

Init is lazy, locked and done once; handles and identity facts are cached. A field the GPU
answers NOT_SUPPORTED for is None and is not asked again; any other NVML error makes only
that GPU's reading unavailable, and it is retried on the next read. A failing ``nvmlInit``
is retried with exponential backoff on the injected clock. The energy counter is never read
(it costs ~3 ms per call on an H100).
"""

from __future__ import annotations

import contextlib
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


def _text(value: Any) -> str:
    """NVML strings arrive as str from current bindings, as bytes from older ones."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def nvml_library_present(nvml: ModuleType | None = None) -> bool:
    """False only when the NVML library itself is absent (nvmlInit: LIBRARY_NOT_FOUND).

    A present library that fails to initialise (driver not loaded, version mismatch) counts
    as present: the ``auto`` backend must then stay on NVML and report GPUs UNAVAILABLE.
    A successful init is balanced by a shutdown.
    """
    nvml = nvml if nvml is not None else pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return exc.value != nvml.NVML_ERROR_LIBRARY_NOT_FOUND
    except Exception:  # an odd binding failure is not proof that the driver is absent
        return True
    with contextlib.suppress(Exception):
        nvml.nvmlShutdown()
    return True


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


class NvmlBackend:
    """Readings from NVIDIA's management library, one NVML call per field."""

    name = "nvml"

    def __init__(
        self,
        nvml: ModuleType | None = None,
        clock: Clock | None = None,
        init_retry_max_s: float = 60.0,
    ) -> None:
        self.nvml: Any = nvml if nvml is not None else pynvml
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.init_retry_max_s = init_retry_max_s
        self._lock = threading.Lock()
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

    # -- the Backend interface -------------------------------------------------------------
    def read(self) -> list[Reading]:
        """One reading per GPU; a failing GPU is unavailable, the others are read as usual."""
        with self._lock:
            if not self._ensure_init():
                return [self._unavailable(gpu, self._init_error or "NVML not initialised")
                        for gpu in self._gpus]
            now = self.clock.now_ms()
            readings = [self._read_one(i, now) for i in range(len(self._gpus))]
            if self._session_lost:  # NVML was shut down under us (another user's nvmlShutdown)
                self._initialised = self._session_lost = False  # the next read inits again
            return readings

    def identities(self) -> list[GpuIdentity]:
        """The GPUs known now (also while they are unavailable), with their identity facts."""
        with self._lock:
            self._ensure_init()
            return [
                GpuIdentity(index=g.index, uuid=g.uuid, name=g.name,
                            memory_total_mib=g.memory_total_mib, power_limit_w=g.power_limit_w,
                            slowdown_temp_c=g.slowdown_temp_c, shutdown_temp_c=g.shutdown_temp_c)
                for g in self._gpus if g.uuid is not None
            ]

    def health(self) -> BackendHealth:
        """Not ok while NVML cannot be initialised; the detail says why and when it retries."""
        with self._lock:
            if not self._ensure_init():
                wait_s = max(0, (self._retry_at_ms or 0) - self.clock.now_ms()) / 1000
                return BackendHealth(ok=False, detail=f"{self._init_error}; "
                                                      f"retrying in {wait_s:g} s")
            failing = [f"GPU {g.index}: {g.error}" for g in self._gpus if g.error]
            detail = f"NVML: {len(self._gpus)} GPU(s)"
            return BackendHealth(ok=True, detail="; ".join([detail, *failing]))

    def close(self) -> None:
        """Shut NVML down if this backend initialised it; a later read initialises again."""
        with self._lock:
            if self._initialised:
                with contextlib.suppress(Exception):
                    self.nvml.nvmlShutdown()
            self._initialised = False
            self._gpus = []
            self._init_failures = 0
            self._retry_at_ms = None

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

    def _read_one(self, i: int, now: int) -> Reading:
        """Read GPU ``i``; any failure other than an empty field makes it unavailable."""
        gpu = self._gpus[i]
        try:
            if gpu.handle is None:
                gpu = self._gpus[i] = self._attach(gpu, now)
            reading = self._sample(gpu, now)
        except self.nvml.NVMLError as exc:
            if exc.value == self.nvml.NVML_ERROR_GPU_IS_LOST:
                gpu.handle = None  # re-acquire it by index (and check its UUID) next time
            elif exc.value == self.nvml.NVML_ERROR_UNINITIALIZED:
                self._session_lost = True
            return self._unavailable(gpu, str(exc))
        except Exception as exc:  # a binding surprise on one GPU must not sink the others
            return self._unavailable(gpu, f"{type(exc).__name__}: {exc}")
        gpu.error = None
        return reading

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
        member = self._value_members.get(value.valueType)
        if member is None:
            raise ValueError(f"memory temperature has unknown value type {value.valueType}")
        return round(getattr(value.value, member))

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
