"""``import`` throughput: a looped recording through parse + classify + persist.

The bundled 4-GPU trace (fleet4_derived.csv) repeated end to end, imported into a fresh
migrated SQLite file in one transaction. DESIGN §6 budget: >= 100,000 samples/s.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import Figure
from gpuhistory.formats.trace_csv import bundled_trace
from gpuhistory.importer import import_file
from gpuhistory.storage.engine import make_engine, upgrade

START_MS = 1_767_225_600_000


def looped_trace(path: Path, loops: int) -> None:
    """The fleet trace repeated ``loops`` times, times shifted so they keep increasing."""
    header, *body = bundled_trace().read_text().splitlines()
    period = 260.2
    with path.open("w") as out:
        out.write(header + "\n")
        for k in range(loops):
            offset = k * period
            for line in body:
                t, rest = line.split(",", 1)
                out.write(f"{float(t) + offset:.3f},{rest}\n")


def run(quick: bool) -> list[Figure]:
    loops, runs = (10, 2) if quick else (97, 3)
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "looped.csv"
        looped_trace(trace, loops)
        for i in range(runs):
            engine = make_engine(Path(tmp) / f"import{i}.db")
            upgrade(engine)
            started = time.perf_counter()
            result = import_file(engine, trace, start_ms=START_MS, host="bench")
            rates.append(result.samples / (time.perf_counter() - started))
            engine.dispose()
    best = max(rates)
    return [Figure("import", "trace import, samples/s (best of runs)", round(best), "samples/s",
                   n=result.samples, budget=">= 100000 samples/s", ok=best >= 100_000,
                   note="runs: " + ", ".join(f"{r:,.0f}" for r in rates)
                        + f"; {result.transitions} transitions, {result.events} events")]
