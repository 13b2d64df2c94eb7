"""One tick for 8 simulated GPUs: read + classify + persist (DESIGN §6: <= 1 ms)."""

from __future__ import annotations

import tempfile
import time
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
        persist = []
        for _ in range(20 + n):  # the persistence floor: one 1-row transaction, nothing else
            record = sampler.pipeline.process(clock.now_ms(), backend.read()[:1])
            clock.advance(1)
            t0 = time.perf_counter()
            store.write(record)
            persist.append(time.perf_counter() - t0)
        engine.dispose()
    return [latency_figure("tick", "sim tick, 8 GPUs, persisted (SQLite WAL)", times[20:], 1.0,
                           "Sampler.tick(): read + classify + one transaction of 8 rows"),
            latency_figure("tick", "persist one sample (one SQLite transaction)", persist[20:],
                           None, "LogStore.write of a 1-row tick: the persistence cost")]
