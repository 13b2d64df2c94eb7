"""A host of four fake-NVML H100s served over real HTTP, for lease placement and accounting.

The fake pynvml is the only fake: each card's temperature and compute processes (pid,
bytes) are set between ticks, and the FakeClock moves time, so a test steps through heat,
cooldowns and processes that grow past their leases without sleeping.
"""

from __future__ import annotations

from typing import Any

import requests
import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.config.layers import load_static
from gpuhistory.sampling.nvml import NvmlBackend
from gpuhistory.storage.schema import events, leases
from tests.fake_pynvml import MIB, FakeNvml, h100

HOST = "testhost"
TOTAL = 81559  # the fake H100's memory, MiB
CAPACITY = TOTAL - 512  # less memory_reserve_mb
COOL_C, THROTTLED_C, CRITICAL_C = 45, 80, 88  # OPTIMAL, THROTTLED, CRITICAL by default


class Rig:
    """Four GPUs, a sampler ticked by hand, the API on a real HTTP server."""

    def __init__(self, engine: sa.Engine, clock: FakeClock, environ: dict[str, str] | None = None,
                 gpus: int = 4, proc: Any = None) -> None:
        from tests.conftest import LiveServer, build_parts

        self.engine, self.clock = engine, clock
        self.nvml = FakeNvml([h100(i) for i in range(gpus)])
        for device in self.nvml.devices:
            device.temperature = COOL_C
        # ``proc``: a fake /proc reader (tests/fake_proc.py) for the processes' owners
        self.backend = NvmlBackend(nvml=self.nvml, clock=clock,  # type: ignore[arg-type]
                                   process_names=proc is not None, proc=proc)
        # built as ``serve`` builds it, the sampler ticked by hand
        self.parts = build_parts(engine, clock, "both", static=load_static(environ=environ or {}),
                                 backend=self.backend, host_name=HOST)
        self.config, self.store = self.parts.config, self.parts.store
        self.sampler, self.leases = self.parts.sampler, self.parts.leases
        self.context = self.parts.context
        self.sampler.tick()
        self.server = LiveServer(self.parts.app)
        self.url = self.server.url

    def _sampler(self) -> Any:
        from gpuhistory.sampling.pipeline import Pipeline
        from gpuhistory.sampling.sampler import Sampler

        pipeline = Pipeline(self.store, "nvml", self.config)
        return Sampler(self.backend, pipeline, self.store, self.clock,
                       interval=lambda: self.config().monitor_interval)

    def restart_sampler(self) -> None:
        """A new sampler over the same log (as after a restart of the service)."""
        self.sampler = self.context.sampler = self._sampler()

    def tick(self, seconds: float = 1.0, times: int = 1) -> None:
        for _ in range(times):
            self.clock.advance(seconds)
            self.sampler.tick()

    def heat(self, index: int, celsius: int) -> None:
        self.nvml.devices[index].temperature = celsius

    def run(self, index: int, *processes: tuple[int, int]) -> None:
        """The compute processes on GPU ``index`` from now: (pid, MiB) each."""
        self.nvml.devices[index].processes = [(pid, mib * MIB) for pid, mib in processes]

    def uuid(self, index: int) -> str:
        return self.nvml.devices[index].uuid

    def allocate(self, body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.url}/api/gpu/memory/allocate", json=body, timeout=30)

    def events(self, kind: str) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.url}/api/gpu/events", params={"kind": kind},
                              timeout=10).json()
        return answer["events"]

    def rows(self) -> tuple[int, int]:
        """(lease rows, event rows): what a refused request must leave as it was."""
        with self.engine.connect() as conn:
            return (conn.execute(sa.select(sa.func.count()).select_from(leases)).scalar_one(),
                    conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one())

    def close(self) -> None:
        self.server.close()
        self.backend.close()
