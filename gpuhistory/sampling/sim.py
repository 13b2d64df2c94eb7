"""The simulated backend: replays a recorded trace in real time, looping.

For demos, tests and machines without a GPU. Every GPU it reports is stored with backend
``sim`` and a UUID that says so, so nobody mistakes it for hardware. ``gpus`` widens the
trace to more GPUs than it holds by reusing its GPUs with a time offset each.
"""

from __future__ import annotations

import bisect
import itertools
import os
from dataclasses import replace
from pathlib import Path

from gpuhistory.clock import Clock
from gpuhistory.domain.reading import GpuIdentity, Reading
from gpuhistory.formats.trace_csv import bundled_trace, read_trace
from gpuhistory.sampling.backend import BackendHealth, BackendUnavailable

H100_SLOWDOWN_C = 89  # the recorded card's own thresholds (traces/INDEX.md)
H100_SHUTDOWN_C = 95


class SimBackend:
    name = "sim"

    def __init__(
        self,
        clock: Clock,
        trace: str | os.PathLike[str] | None = None,
        gpus: int | None = None,
        loop: bool = True,
    ) -> None:
        path = Path(trace) if trace is not None else bundled_trace()
        self.trace = path
        self.clock = clock
        self.loop = loop
        timelines: dict[int, tuple[list[float], list[Reading]]] = {}
        try:
            for row in read_trace(path, uuid_prefix=f"GPU-sim-{path.stem}"):
                times, readings = timelines.setdefault(row.reading.index, ([], []))
                times.append(row.t_s)
                readings.append(row.reading)
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

    def read(self) -> list[Reading]:
        elapsed = (self.clock.now_ms() - self.start_ms) / 1000
        out = []
        for index, offset, times, readings in self._gpus:
            position = elapsed + offset
            position = position % self.duration_s if self.loop else min(position, times[-1])
            i = max(0, bisect.bisect_right(times, position) - 1)
            out.append(replace(readings[i], index=index, uuid=self._uuid(index),
                               name=self._name(index)))
        return out

    def health(self) -> BackendHealth:
        return BackendHealth(ok=True, detail=f"simulated from {self.trace.name}")

    def close(self) -> None:
        pass
