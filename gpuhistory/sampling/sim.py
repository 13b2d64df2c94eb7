"""The simulated backend: replays a recorded trace in real time, looping.

For demos, tests and machines without a GPU. Every GPU it reports is stored with backend
``sim`` and a UUID that says so, so nobody mistakes it for hardware. ``gpus`` widens the
trace to more GPUs than it holds by reusing its GPUs with a time offset each.

``read_hardware`` synthesizes the slower facts from the trace: while a GPU is busy and holds
memory above its idle level, one compute process (pid 4200 + index, ``python3``, using the
memory above idle; who runs it and where comes from ``proc``, a /proc tree, when one is
given: tests pass a fake one); and throttle-time counters that accrue the trace's time in each
clock-event reason (SwPowerCap → power_cap_ns, SwThermal, HwThermal, HwPowerBrake), exactly
and continuously, so they do not depend on how often they are read; and an energy counter
that integrates the trace's power the same way. No XIDs, no ECC, remapping or PCIe counters.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import os
from dataclasses import replace
from pathlib import Path

from gpuhistory.clock import Clock
from gpuhistory.domain.reading import GpuIdentity, Reading
from gpuhistory.formats.trace_csv import bundled_trace, read_trace
from gpuhistory.sampling.backend import BackendHealth, BackendUnavailable
from gpuhistory.sampling.hardware import (
    COUNTER_BITS,
    RELIABILITY_NAMES,
    HardwareFacts,
    ProcessInfo,
)
from gpuhistory.sampling.procinfo import ProcReader

SIM_PID_BASE = 4200
SIM_PROCESS_NAME = "python3"
BUSY_MEMORY_MIB = 64  # memory above idle that means a process holds it even at 0 % util

H100_SLOWDOWN_C = 89  # the recorded card's own thresholds (traces/INDEX.md)
H100_SHUTDOWN_C = 95


def _read_timelines(path: Path) -> dict[int, tuple[list[float], list[Reading]]]:
    """Each GPU's row times and readings in the trace."""
    timelines: dict[int, tuple[list[float], list[Reading]]] = {}
    for row in read_trace(path, uuid_prefix=f"GPU-sim-{path.stem}"):
        times, readings = timelines.setdefault(row.reading.index, ([], []))
        times.append(row.t_s)
        readings.append(row.reading)
    return timelines


@functools.lru_cache(maxsize=8)
def _cached_timelines(path: Path, size: int, mtime_ns: int
                      ) -> dict[int, tuple[list[float], list[Reading]]]:
    """The trace parsed once per process for a file of this size and modification time
    (tests build hundreds of backends on one trace); a changed file is read again. The
    lists are shared between backends, which only read them."""
    return _read_timelines(path)


def _timelines(path: Path) -> dict[int, tuple[list[float], list[Reading]]]:
    try:
        stat = path.stat()
    except OSError:  # read_trace says what is wrong with it
        return _read_timelines(path)
    return _cached_timelines(path, stat.st_size, stat.st_mtime_ns)


class SimBackend:
    name = "sim"

    def __init__(
        self,
        clock: Clock,
        trace: str | os.PathLike[str] | None = None,
        gpus: int | None = None,
        loop: bool = True,
        proc: ProcReader | None = None,
    ) -> None:
        path = Path(trace) if trace is not None else bundled_trace()
        self.trace = path
        self.clock = clock
        self.loop = loop
        # Where the simulated processes' owners are read (None: nowhere; their pids are
        # made up, so the real /proc would name unrelated processes).
        self.proc = proc
        try:
            timelines = _timelines(path)
        except ValueError as exc:
            raise BackendUnavailable(str(exc)) from exc
        if not timelines:
            raise BackendUnavailable(f"{path}: the trace holds no rows")
        last = max(times[-1] for times, _ in timelines.values())
        steps = [b - a for times, _ in timelines.values() for a, b in itertools.pairwise(times)
                 if b > a]
        step = sorted(steps)[len(steps) // 2] if steps else 1.0  # the median sampling period
        self.duration_s = last + step
        source = sorted(timelines)
        count = gpus if gpus is not None else len(source)
        if count < 1:
            raise BackendUnavailable("the simulated backend needs at least one GPU")
        self._gpus: list[tuple[int, float, list[float], list[Reading]]] = []
        for index in range(count):
            src = source[index % len(source)]
            offset = (index // len(source)) * 37.0  # copies of a GPU run out of step
            times, readings = timelines[src]
            self._gpus.append((index, offset, times, readings))
        self._throttle = {src: self._throttle_time(*timelines[src]) for src in source}
        self._energy = {src: self._energy_j(*timelines[src]) for src in source}
        self._idle_mib = {src: min((r.memory_used_mib for r in timelines[src][1]
                                    if r.memory_used_mib is not None), default=0)
                          for src in source}
        self._source = [source[index % len(source)] for index in range(count)]
        self.start_ms = clock.now_ms()

    def _name(self, index: int) -> str:
        return f"Simulated GPU {index} (trace {self.trace.name})"

    def _uuid(self, index: int) -> str:
        return f"GPU-sim-{self.trace.stem}-{index}"

    def identities(self) -> list[GpuIdentity]:
        return [
            GpuIdentity(index=index, uuid=self._uuid(index), name=self._name(index),
                        memory_total_mib=readings[0].memory_total_mib,
                        slowdown_temp_c=H100_SLOWDOWN_C, shutdown_temp_c=H100_SHUTDOWN_C)
            for index, _, _, readings in self._gpus
        ]

    def _position(self, offset: float, times: list[float]) -> tuple[int, float]:
        """(whole loops played, seconds into the trace) for a GPU with this offset now."""
        position = (self.clock.now_ms() - self.start_ms) / 1000 + offset
        if not self.loop:
            return 0, min(position, times[-1])
        loops, into = divmod(position, self.duration_s)
        return int(loops), into

    def read(self) -> list[Reading]:
        out = []
        for index, offset, times, readings in self._gpus:
            _, position = self._position(offset, times)
            i = max(0, bisect.bisect_right(times, position) - 1)
            out.append(replace(readings[i], index=index, uuid=self._uuid(index),
                               name=self._name(index)))
        return out

    # -- hardware facts ----------------------------------------------------------------
    def _throttle_time(self, times: list[float], readings: list[Reading]
                       ) -> dict[str, tuple[list[float], list[bool], float]]:
        """Per counter: the seconds accrued before each row, whether each row's reason bit
        is set, and the seconds accrued in one whole play of the trace."""
        out = {}
        for name, bit in COUNTER_BITS.items():
            on = [bool((r.clock_event_reasons or 0) & bit) for r in readings]
            before, total = [], 0.0
            for i, t in enumerate(times):
                before.append(total)
                end = times[i + 1] if i + 1 < len(times) else self.duration_s
                total += (end - t) if on[i] else 0.0
            out[name] = (before, on, total)
        return out

    def _energy_j(self, times: list[float], readings: list[Reading]
                  ) -> tuple[list[float], float]:
        """Joules used before each row (each row's power held until the next), and in one
        whole play of the trace."""
        before, total = [], 0.0
        for i, t in enumerate(times):
            before.append(total)
            end = times[i + 1] if i + 1 < len(times) else self.duration_s
            total += (end - t) * (readings[i].power_w or 0.0)
        return before, total

    def read_hardware(self) -> list[HardwareFacts]:
        out = []
        for (index, offset, times, readings), src in zip(self._gpus, self._source, strict=True):
            loops, position = self._position(offset, times)
            i = max(0, bisect.bisect_right(times, position) - 1)
            reading = readings[i]
            counters: dict[str, int | None] = {}
            for name, (before, on, total) in self._throttle[src].items():
                seconds = loops * total + before[i] + (
                    max(0.0, position - times[i]) if on[i] else 0.0)
                counters[name] = round(seconds * 1e9)
            used = (reading.memory_used_mib or 0) - self._idle_mib[src]
            busy = used > 0 and ((reading.utilization_pct or 0) > 0 or used > BUSY_MEMORY_MIB)
            pid = SIM_PID_BASE + index
            processes = [ProcessInfo(pid, SIM_PROCESS_NAME, used,
                                     self.proc.owner(pid) if self.proc else None)] \
                if busy else []
            before_j, total_j = self._energy[src]
            joules = loops * total_j + before_j[i] + max(0.0, position - times[i]) * (
                reading.power_w or 0.0)
            reliability: dict[str, int | None] = dict.fromkeys(RELIABILITY_NAMES)
            reliability["energy_mj"] = round(joules * 1000)
            out.append(HardwareFacts(index=index, processes=processes, counters=counters,
                                     reliability=reliability))
        return out

    def health(self) -> BackendHealth:
        return BackendHealth(ok=True, detail=f"simulated from {self.trace.name}")

    def close(self) -> None:
        """Nothing to release: the trace is held in memory."""
