"""One tick for 8 simulated GPUs: read + classify + persist (DESIGN §6: <= 1 ms)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import Figure, latency_figure
from gpuhistory.clock import FakeClock
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.sampler import Sampler
from gpuhistory.sampling.sim import SimBackend
from gpuhistory.storage.engine import make_engine, upgrade
from gpuhistory.storage.log import LogStore


def run(quick: bool) -> list[Figure]:
    n = 300 if quick else 3000
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(Path(tmp) / "tick.db")
        upgrade(engine)
        clock = FakeClock()
        backend = SimBackend(clock, gpus=8)
        store = LogStore(engine, "bench")
        sampler = Sampler(backend, Pipeline(store, "sim", lambda: DEFAULT_CONFIG), store, clock)
        times: list[float] = []

        def one() -> None:
            sampler.tick()
            clock.advance(1)
            assert sampler.last_tick is not None
            times.append(sampler.last_tick.seconds)

        for _ in range(20 + n):
            one()
        engine.dispose()
    return [latency_figure("tick", "sim tick, 8 GPUs, persisted (SQLite WAL)", times[20:], 1.0,
                           "Sampler.tick(): read + classify + one transaction of 8 rows")]
