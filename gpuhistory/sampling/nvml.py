"""The NVML backend: the per-GPU reading (the ``Backend`` interface) over an NVML session.

NVML itself is reached through gpuhistory/sampling/libnvml.py (init with backoff, the
worker and its hang guard, the error mapping: the one module that imports ``pynvml``); the
hardware facts are read by gpuhistory/sampling/nvml_facts.py. Handles and identity facts are
cached. A field the GPU answers NOT_SUPPORTED for is None and is not asked again; any other
NVML error makes only that GPU's reading unavailable, and it is retried on the next read.

Memory is read as ``nvidia-smi`` shows it (NVML's v2 memory info: used without what the
driver reserves, the reservation apart as ``memory_reserved_mib``); a driver without v2 is
read through v1, whose used includes the reservation, and the reservation is then unknown.

``read_hardware`` adds the slower facts (gpuhistory/sampling/hardware.py): the compute
processes (pid and memory from NVML, name and owner from /proc), the throttle-time
counters, the critical XID errors, the error and energy counters (see nvml_facts.py).

Every NVML call runs on the session's one long-lived worker thread: a read is one hand-off,
and the caller waits at most ``timeout_s``. A GPU whose call does not answer in time is
*hung*: it is reported unavailable and not asked again until that call returns (then its
handle is acquired afresh), and the other GPUs are read by a fresh worker. An ``nvmlInit``
that does not answer in time keeps running; until it returns, reads report the known GPUs
unavailable at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import replace
from types import ModuleType
from typing import Any

from gpuhistory.clock import Clock, SystemClock
from gpuhistory.domain.reading import GpuIdentity, Reading, unavailable
from gpuhistory.sampling.backend import BackendHealth
from gpuhistory.sampling.hardware import HardwareFacts, ProcessInfo
from gpuhistory.sampling.libnvml import (
    DEFAULT_TIMEOUT_S,
    EVENTS,
    INIT,
    MIB,
    NOT_AVAILABLE_U64,
    NvmlSession,
    nvml_library_present,
    text,
)
from gpuhistory.sampling.nvml_facts import HardwareReader
from gpuhistory.sampling.nvml_gpu import GpuRecord as _Gpu
from gpuhistory.sampling.procinfo import Owner, ProcReader, pid_namespace_is_nested
from gpuhistory.sampling.worker import CallTimedOut, Job

__all__ = ["DEFAULT_TIMEOUT_S", "NvmlBackend", "nvml_library_present"]

log = logging.getLogger(__name__)

POWER_LIMIT_EVERY_MS = 60_000  # the enforced power limit is re-read at most once a minute


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
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.session = NvmlSession(nvml, self.clock, init_retry_max_s, timeout_s)
        self.nvml: Any = self.session.lib
        # Look processes up in /proc (``proc``)? None: unless in a child PID namespace.
        self.process_names = (not pid_namespace_is_nested() if process_names is None
                              else process_names)
        self.proc = proc if proc is not None else ProcReader()
        self.facts = HardwareReader(self.session)
        self._lock = self.session.lock  # one caller at a time (the tick, /healthz, close)
        # Guards what a job shares with its caller once it may have been abandoned: which
        # GPUs are hung, the results handed back, the GPU records.
        self._commit = self.session.commit
        self._hung: dict[int, str] = {}  # index → why: its call has not returned
        self._gpus: list[_Gpu] = []

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
        session = self.session
        with self._lock:
            if session.init_job is not None:
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
                        return [self._unavailable(gpu, session.init_error
                                                  or "NVML not initialised")
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
            session.end_read()  # NVML shut down under us (another user's nvmlShutdown)?
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
        session = self.session
        with self._commit:
            if session.init_job is not None:
                waited_s = (self.clock.now_ms() - session.init_started_ms) / 1000
                return BackendHealth(ok=False, detail=f"nvmlInit has not returned after "
                                                      f"{waited_s:g} s")
            if not session.initialised:
                wait_s = max(0, (session.retry_at_ms or 0) - self.clock.now_ms()) / 1000
                return BackendHealth(ok=False, detail=f"{session.init_error}; "
                                                      f"retrying in {wait_s:g} s")
            gpus = list(self._gpus)
            failing = [f"GPU {g.index}: {self._hung.get(g.index) or g.error}" for g in gpus
                       if g.index in self._hung or g.error]
        notes = [f"GPU {g.index}: hardware facts: {g.hardware_error}"
                 for g in gpus if g.hardware_error and not g.error]
        xid = sorted({g.xid_note for g in gpus if g.xid_note})
        if self.facts.event_set_note:
            notes.append(self.facts.event_set_note)
        elif len(xid) == 1 and all(g.xid_note for g in gpus):
            notes.append(xid[0])
        else:
            notes.extend(f"GPU {g.index}: {g.xid_note}" for g in gpus if g.xid_note)
        detail = f"NVML: {len(gpus)} GPU(s)"
        return BackendHealth(ok=True, detail="; ".join([detail, *failing, *notes]))

    def close(self) -> None:
        """Shut NVML down if this backend initialised it; a later read initialises again."""
        with self._lock:
            if self.session.initialised and self.session.init_job is None:
                with contextlib.suppress(Exception):
                    self._call(self._shutdown_job)
            self.session.close()
            self.facts.forget_event_set()
            self._gpus = []
            self._hung = {}

    # -- the worker ----------------------------------------------------------------------
    def _call(self, fn: Callable[[Job], Any]) -> Any:
        """Run ``fn`` on the session's worker (CallTimedOut after the timeout)."""
        return self.session.call(fn, self._on_hung)

    def _on_hung(self, job: Job, timeout_s: float) -> None:
        """A job did not come back in time, not in init: mark what it was doing as hung
        (called under ``_commit``)."""
        where = job.where
        if where == EVENTS:
            self.facts.events_hung(timeout_s)
        elif isinstance(where, int):
            gpu = self._gpus[where]
            why = f"NVML did not answer within {timeout_s:g} s (reading {gpu.in_call})"
            self._hung[where] = why
            # A record of its own, so the late call's changes land on the old one; no
            # handle: it is acquired afresh (and its UUID checked) once the call returns.
            self._gpus[where] = gpu.hung_copy(why)
            log.error("GPU %d: %s; the other GPUs are read by a fresh worker", where, why)
            job.on_return = lambda _job: self._gpu_returned(where, why)

    def _gpu_returned(self, index: int, why: str) -> None:
        with self._commit:
            if self._hung.get(index) == why:
                del self._hung[index]
        log.warning("GPU %d: the hung NVML call returned; the GPU is read again", index)

    def _init_hung_readings(self) -> list[Reading]:
        return [self._unavailable(gpu, self.session.init_error or "nvmlInit has not returned")
                for gpu in self._gpus]

    def _init_if_needed(self) -> None:
        """Initialise (bounded) unless done, in backoff or already under way."""
        session = self.session
        if session.initialised or session.init_job is not None:
            return
        with self._lock:
            if not session.initialised and session.init_job is None:
                with contextlib.suppress(CallTimedOut):
                    self._call(self._init_only)

    def _init_only(self, job: Job) -> bool:
        job.where = INIT
        return self._ensure_init()

    def _shutdown_job(self, job: Job) -> None:
        job.where = EVENTS
        self.facts.free_event_set()
        job.where = INIT
        self.session.shutdown()

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
        if self.session.initialised:
            return True
        count = self.session.start()
        if count is None:
            return False
        self.facts.forget_event_set()  # an event set does not survive a re-init either
        now = self.clock.now_ms()
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

    # -- one GPU -----------------------------------------------------------------------------
    def _attach(self, known: _Gpu, now: int) -> _Gpu:
        """Acquire the handle at ``known.index`` and read its identity facts once."""
        n = self.nvml
        known.in_call = "handle and identity"
        handle = n.nvmlDeviceGetHandleByIndex(known.index)
        gpu = _Gpu(index=known.index, handle=handle, uuid=text(n.nvmlDeviceGetUUID(handle)))
        if known.uuid is not None and known.uuid != gpu.uuid:
            log.warning("GPU %d: UUID is now %s (was %s): another card has this index",
                        gpu.index, gpu.uuid, known.uuid)
        name = self._field(gpu, "name", n.nvmlDeviceGetName)
        gpu.name = None if name is None else text(name)
        memory = self._field(gpu, "memory", lambda _h: self.session.memory_info(gpu))
        gpu.memory_total_mib = None if memory is None else memory.total // MIB
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
            self.session.failed(gpu, exc)
            return self._unavailable(gpu, str(exc)), gpu
        except Exception as exc:  # a binding surprise on one GPU must not sink the others
            return self._unavailable(gpu, f"{type(exc).__name__}: {exc}"), gpu
        gpu.error = None
        gpu.last_reasons = reading.clock_event_reasons
        return reading, gpu

    def _sample(self, gpu: _Gpu, now: int) -> Reading:
        n = self.nvml
        session = self.session

        def get(name: str, call: Callable[[Any], Any]) -> Any:
            return self._field(gpu, name, call)

        last = gpu.power_limit_read_ms
        if last is None or now - last >= POWER_LIMIT_EVERY_MS:
            self._read_power_limit(gpu, now)
        memory = get("memory", lambda _h: session.memory_info(gpu))
        utilization = get("utilization", n.nvmlDeviceGetUtilizationRates)
        power_mw = get("power", n.nvmlDeviceGetPowerUsage)
        pstate = get("pstate", n.nvmlDeviceGetPerformanceState)
        return Reading(
            index=gpu.index, uuid=gpu.uuid, name=gpu.name,
            temperature_c=get("temperature", lambda h: (
                n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))),
            memory_temperature_c=get("memory_temperature", session.memory_temperature),
            # MiB as nvidia-smi rounds them: up (615.06 MiB reserved shows as 616)
            memory_used_mib=None if memory is None else -(-memory.used // MIB),
            memory_total_mib=(gpu.memory_total_mib if memory is None
                              else memory.total // MIB),
            memory_reserved_mib=(None if memory is None or memory.reserved is None
                                 else -(-memory.reserved // MIB)),
            utilization_pct=None if utilization is None else int(utilization.gpu),
            power_w=None if power_mw is None else power_mw / 1000,
            power_limit_w=gpu.power_limit_w,
            sm_clock_mhz=get("sm_clock", lambda h: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
            mem_clock_mhz=get("mem_clock", lambda h: (
                n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM))),
            clock_event_reasons=get("clock_event_reasons", session.clock_event_reasons),
            pstate=None if pstate is None or not 0 <= pstate <= 15 else pstate,  # 32: unknown
            fan_pct=get("fan", n.nvmlDeviceGetFanSpeed),
        )

    def _field(self, gpu: _Gpu, name: str, call: Callable[[Any], Any]) -> Any:
        """One NVML call; None for a field the GPU cannot answer (NOT_SUPPORTED: remembered)."""
        return self.session.field(gpu, name, call)

    def _read_power_limit(self, gpu: _Gpu, now: int) -> None:
        gpu.power_limit_read_ms = now
        limit_mw = self._field(gpu, "power_limit", self.nvml.nvmlDeviceGetEnforcedPowerLimit)
        if limit_mw is not None:  # a transient refusal keeps the last known limit
            gpu.power_limit_w = limit_mw / 1000

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
            if self.session.init_job is not None:
                return []
            facts: dict[int, HardwareFacts] = {}
            with contextlib.suppress(CallTimedOut):
                self._call(lambda job: self._hardware_job(job, facts))
            self.session.end_read()
            with self._commit:
                return [facts[i] for i in sorted(facts)]

    def _hardware_job(self, job: Job, facts: dict[int, HardwareFacts]) -> None:
        """On the worker: the hardware facts of every GPU that is not hung, into ``facts``."""
        step = self.session.step
        if not self.session.initialised:
            job.where = INIT
            if not self._ensure_init():
                return
        if not step(job, EVENTS):
            return
        self.facts.ensure_event_set()
        for gpu in list(self._gpus):
            if gpu.index in self._hung:
                continue
            if not step(job, gpu.index):
                return
            if gpu.handle is not None:
                self.facts.register_xid(gpu)
        if not step(job, EVENTS):
            return
        xids = self.facts.drain_xids(self._gpus)
        now = self.clock.now_ms()
        for i, gpu in enumerate(list(self._gpus)):
            if i in self._hung:
                fact = HardwareFacts(index=i, xids=xids.pop(i, []))
            else:
                if not step(job, i):
                    return
                fact = self.facts.read_one(gpu, xids.pop(i, []), now, self._processes)
            with self._commit:
                if job.abandoned:
                    return
                job.where = None
                facts[i] = fact
        for index, lost in xids.items():
            log.warning("XID %s on a GPU this backend does not know (index %s)",
                        [x.code for x in lost], index)

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
