"""NVML access: the one module that imports ``pynvml`` (nvidia-ml-py).

An ``NvmlSession`` is one owner's use of the library, and knows no GPU's readings:

- init is lazy and done once; a failing ``nvmlInit`` is retried with exponential backoff on
  the injected clock;
- every call runs on one long-lived worker thread (gpuhistory/sampling/worker.py): the
  caller waits at most the timeout, and a call that does not answer is *hung* (an
  ``nvmlInit`` that hangs is tracked here; what else hung, its owner is told);
- NVML errors are mapped onto what a reader does with them: a field the GPU answers
  NOT_SUPPORTED (or NO_PERMISSION, FUNCTION_NOT_FOUND, NO_DATA) for is empty, and
  NOT_SUPPORTED is remembered so that it is not asked again; any other error fails the
  GPU's read;
- a few calls whose shape differs between drivers or bindings are read here: the memory
  info (v2, as ``nvidia-smi`` shows it, with v1 where the driver lacks v2), the clock event
  reasons, a field value's union member.

The per-GPU reading is gpuhistory/sampling/nvml.py; the hardware facts are
gpuhistory/sampling/nvml_facts.py.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import pynvml

from gpuhistory.clock import Clock
from gpuhistory.sampling.worker import CallTimedOut, Job, Worker

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_TIMEOUT_S = 5.0  # config key nvml_timeout_seconds
INIT, EVENTS = "init", "events"  # what a job is doing when it is not reading one GPU
NOT_AVAILABLE_U64 = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE as an unsigned long long
MEMORY_V2 = "memory_v2"  # in a GPU's unsupported set once its driver refused v2 memory info

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
# Errors that leave one field empty rather than the GPU unavailable.
_FIELD_ERRORS = ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_NO_PERMISSION",
                 "NVML_ERROR_FUNCTION_NOT_FOUND", "NVML_ERROR_NO_DATA")
# Errors with which a driver refuses v2 memory info: v1 is read instead, from then on.
_MEMORY_V2_REFUSALS = ("NVML_ERROR_FUNCTION_NOT_FOUND", "NVML_ERROR_NOT_SUPPORTED",
                       "NVML_ERROR_ARGUMENT_VERSION_MISMATCH")


def text(value: Any) -> str:
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


class Slot(Protocol):
    """What the error mapping needs of a GPU's record."""

    index: int
    handle: Any
    unsupported: set[str]
    in_call: str


@dataclass(frozen=True, slots=True)
class MemoryInfo:
    """A GPU's device memory in bytes, as ``nvidia-smi`` shows it where the driver has v2.

    ``reserved`` is what the driver holds back (None from v1, which counts it as used).
    """

    total: int
    used: int
    free: int
    reserved: int | None


class NvmlSession:
    """NVML for one owner: the binding, its init with backoff, the worker and the hang guard,
    and the error mapping. ``lock`` admits one caller at a time; ``commit`` guards what a job
    shares with its caller once it may have been abandoned."""

    def __init__(self, lib: ModuleType | None, clock: Clock, init_retry_max_s: float,
                 timeout_s: float | Callable[[], float]) -> None:
        self.lib: Any = lib if lib is not None else pynvml
        self.clock = clock
        self.init_retry_max_s = init_retry_max_s
        self._timeout_s = timeout_s  # seconds a call waits for NVML (or a getter of it)
        self.lock = threading.Lock()
        self.commit = threading.Lock()
        self.worker: Worker | None = None
        self.init_job: Job | None = None  # an nvmlInit that has not returned
        self.init_started_ms = 0
        self.initialised = False
        self.lost = False  # NVML was shut down under us: the next read inits again
        self.init_error: str | None = None
        self.init_failures = 0
        self.retry_at_ms: int | None = None
        n = self.lib
        self.field_errors = {getattr(n, name) for name in _FIELD_ERRORS if hasattr(n, name)}
        self._memory_v2_refusals = {getattr(n, name) for name in _MEMORY_V2_REFUSALS
                                    if hasattr(n, name)}
        self._value_members = {getattr(n, name): member
                               for name, member in _VALUE_MEMBERS.items() if hasattr(n, name)}

    # -- the worker and the hang guard ----------------------------------------------------
    def timeout(self) -> float:
        value = self._timeout_s() if callable(self._timeout_s) else self._timeout_s
        return float(value)

    def call(self, fn: Callable[[Job], Any],
             on_hung: Callable[[Job, float], None] | None = None) -> Any:
        """Run ``fn`` on the worker, waiting at most the timeout (CallTimedOut after it).

        A job that does not come back in time while in init is tracked here (``init_job``);
        any other is handed to ``on_hung(job, timeout_s)``, under ``commit``.
        """
        if self.worker is None or self.worker.stuck:
            self.worker = Worker()
        timeout = self.timeout()
        return self.worker.call(fn, timeout,
                                lambda job: self._abandoned(job, timeout, on_hung))

    def _abandoned(self, job: Job, timeout_s: float,
                   on_hung: Callable[[Job, float], None] | None) -> None:
        with self.commit:
            if job.where == INIT:
                self.init_job = job
                self.init_started_ms = self.clock.now_ms()
                self.init_error = f"nvmlInit did not answer within {timeout_s:g} s"
                log.error("%s; reads report the GPUs unavailable until it does",
                          self.init_error)
                job.on_return = self._init_returned
            elif on_hung is not None:
                on_hung(job, timeout_s)

    def _init_returned(self, _job: Job) -> None:
        with self.commit:
            self.init_job = None
        log.warning("the hung nvmlInit returned (%s)",
                    "initialised" if self.initialised else self.init_error)

    def step(self, job: Job, where: str | int) -> bool:
        """Say what the job does next; False once it was abandoned (it must stop)."""
        with self.commit:
            if job.abandoned:
                return False
            job.where = where
            return True

    # -- init and shutdown ------------------------------------------------------------------
    def start(self) -> int | None:
        """On the worker: ``nvmlInit`` and the GPU count, unless a backoff delay is running.

        The count once NVML is initialised now; None when it failed (the backoff grows) or
        the delay runs. The caller checks ``initialised`` first.
        """
        now = self.clock.now_ms()
        if self.retry_at_ms is not None and now < self.retry_at_ms:
            return None
        n = self.lib
        try:
            n.nvmlInit()
        except Exception as exc:
            self._init_failed(exc, now)
            return None
        try:
            count = int(n.nvmlDeviceGetCount())
        except Exception as exc:
            with contextlib.suppress(Exception):
                n.nvmlShutdown()
            self._init_failed(exc, now)
            return None
        self.initialised = True
        self.init_error = None
        self.init_failures = 0
        self.retry_at_ms = None
        return count

    def _init_failed(self, exc: Exception, now: int) -> None:
        self.init_failures += 1
        delay_s = min(self.init_retry_max_s, 2.0 ** min(self.init_failures - 1, 30))
        self.retry_at_ms = now + round(delay_s * 1000)
        self.init_error = f"NVML init failed: {exc}"
        log.warning("%s (attempt %d); retrying in %g s", self.init_error,
                    self.init_failures, delay_s)

    def shutdown(self) -> None:
        """On the worker: ``nvmlShutdown``, whatever it answers."""
        with contextlib.suppress(Exception):
            self.lib.nvmlShutdown()

    def end_read(self) -> None:
        """After a read: if NVML was shut down under us, the next read initialises again."""
        if self.lost:
            self.initialised = self.lost = False

    def close(self) -> None:
        """Let the worker go and forget the init state (a later read initialises again)."""
        if self.worker is not None:
            self.worker.close()
        self.worker = None
        self.initialised = False
        self.init_failures = 0
        self.retry_at_ms = None

    # -- error mapping ----------------------------------------------------------------------
    def field(self, gpu: Slot, name: str, call: Callable[[Any], Any]) -> Any:
        """One NVML call; None for a field the GPU cannot answer (NOT_SUPPORTED: remembered)."""
        if name in gpu.unsupported:
            return None
        gpu.in_call = name
        try:
            return call(gpu.handle)
        except self.lib.NVMLError as exc:
            if exc.value not in self.field_errors:
                raise
            if exc.value == self.lib.NVML_ERROR_NOT_SUPPORTED:
                gpu.unsupported.add(name)
            return None

    def failed(self, gpu: Slot, exc: Exception) -> None:
        """What an NVML error of a GPU's read means beyond it: a lost GPU's handle is
        acquired afresh (and its UUID checked) next time; UNINITIALIZED: NVML was shut down
        under us."""
        if not isinstance(exc, self.lib.NVMLError):
            return
        if exc.value == self.lib.NVML_ERROR_GPU_IS_LOST:
            gpu.handle = None
        elif exc.value == self.lib.NVML_ERROR_UNINITIALIZED:
            self.lost = True

    def field_value(self, value: Any, what: str) -> float | int:
        """The number in a c_nvmlFieldValue_t, from the union member its valueType names."""
        member = self._value_members.get(value.valueType)
        if member is None:
            raise ValueError(f"{what} has unknown value type {value.valueType}")
        return getattr(value.value, member)

    # -- calls whose shape differs between drivers and bindings -------------------------------
    def memory_info(self, gpu: Slot) -> MemoryInfo:
        """The GPU's memory: v2 (used without the driver's reservation, and the reservation
        apart, as ``nvidia-smi`` shows them), else v1 (used includes the reservation).

        A driver or binding without v2 (FUNCTION_NOT_FOUND, NOT_SUPPORTED, a version
        mismatch, no ``version`` parameter) is asked for v1 from then on.
        """
        n = self.lib
        version = getattr(n, "nvmlMemory_v2", None)
        if version is not None and MEMORY_V2 not in gpu.unsupported:
            try:
                v2 = n.nvmlDeviceGetMemoryInfo(gpu.handle, version=version)
            except n.NVMLError as exc:
                if exc.value not in self._memory_v2_refusals:
                    raise
                why = str(exc)
            except TypeError as exc:  # a binding older than the version parameter
                why = str(exc)
            else:
                return MemoryInfo(total=int(v2.total), used=int(v2.used), free=int(v2.free),
                                  reserved=int(v2.reserved))
            gpu.unsupported.add(MEMORY_V2)
            log.info("GPU %d: v2 memory info unavailable (%s): used memory includes what "
                     "the driver reserves", gpu.index, why)
        v1 = n.nvmlDeviceGetMemoryInfo(gpu.handle)
        return MemoryInfo(total=int(v1.total), used=int(v1.used), free=int(v1.free),
                          reserved=None)

    def memory_temperature(self, handle: Any) -> int:
        n = self.lib
        value = n.nvmlDeviceGetFieldValues(handle, [n.NVML_FI_DEV_MEMORY_TEMP])[0]
        if value.nvmlReturn != n.NVML_SUCCESS:
            raise n.NVMLError(value.nvmlReturn)
        return round(self.field_value(value, "memory temperature"))

    def clock_event_reasons(self, handle: Any) -> int:
        n = self.lib
        if hasattr(n, "nvmlDeviceGetCurrentClocksEventReasons"):
            return int(n.nvmlDeviceGetCurrentClocksEventReasons(handle))
        return int(n.nvmlDeviceGetCurrentClocksThrottleReasons(handle))  # bindings < 12.535
