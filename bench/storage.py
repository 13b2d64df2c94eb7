"""Bytes per sample row on disk (DESIGN §6 budget: <= 32 B), measured with dbstat."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from bench.common import Figure
from gpuhistory.clock import FakeClock
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.sim import SimBackend
from gpuhistory.storage.engine import make_engine, upgrade
from gpuhistory.storage.log import LogStore, TickRecord


def build_log(path: Path, gpus: int, seconds: int) -> None:
    """A 1 Hz log of ``gpus`` simulated GPUs through the real pipeline and write path."""
    engine = make_engine(path)
    upgrade(engine)
    clock = FakeClock()
    backend = SimBackend(clock, gpus=gpus)
    store = LogStore(engine, "bench")
    pipeline = Pipeline(store, "sim", lambda: DEFAULT_CONFIG)
    identities = {i.uuid: i for i in backend.identities()}
    record = TickRecord()
    for _ in range(seconds):
        pipeline.process(clock.now_ms(), backend.read(), identities, record=record)
        clock.advance(1)
        if len(record.samples) >= 50_000:
            store.write(record)
            record = TickRecord()
    store.write(record)
    engine.dispose()


def run(quick: bool) -> list[Figure]:
    seconds = 1800 if quick else 6 * 3600
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "size.db"
        build_log(path, 8, seconds)
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            rows = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
            size, payload, unused = conn.execute(
                "SELECT sum(pgsize), sum(payload), sum(unused) FROM dbstat WHERE name='samples'"
            ).fetchone()
        file_size = os.path.getsize(path)
    per_row = size / rows
    return [
        Figure("storage", "samples table bytes per row (key included)", round(per_row, 2), "B",
               n=rows, budget="<= 32 B", ok=per_row <= 32,
               note=f"payload {payload / rows:.1f} B + page slack {unused / rows:.1f} B "
                    f"+ cell overhead; 8 GPUs at 1 Hz from the H100 traces"),
        Figure("storage", "whole file bytes per sample", round(file_size / rows, 2), "B", n=rows,
               note="all tables and indexes, after a WAL checkpoint"),
    ]
