"""Imports on a live host: the running `serve` keeps taking and writing every tick while a
large import holds SQLite's write lock (the ticks wait in the writer, none is lost)."""

from __future__ import annotations

import itertools
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.test_serve import free_port, gpuhistory, wait_ready

INTERVAL_S = 1.0
ROWS = 80_000  # seconds of write lock (several ticks); docs/import.md has the 1 M-row manual run


def write_big_trace(path: Path, rows: int) -> Path:
    gpus = 4
    with open(path, "w") as out:
        out.write("t_s,gpu,temperature_c,memory_used_mib,memory_total_mib\n")
        for i in range(rows // gpus):
            for gpu in range(gpus):
                out.write(f"{i},{gpu},{40 + (i + gpu) % 40},{1000 + i % 500},81559\n")
    return path


def live_times(db: Path, host: str) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [ts for (ts,) in conn.execute(
            "SELECT s.ts_ms FROM samples s JOIN gpus g ON g.id = s.gpu_id "
            "WHERE g.host = ? AND g.gpu_index = 0 ORDER BY s.ts_ms", (host,))]


def test_no_tick_is_lost_while_a_large_import_holds_the_write_lock(tmp_path: Path) -> None:
    """serve (sim, 1 s) runs; an 80k-row trace is imported into the same SQLite file (as
    another host). Every interval during the import has its sample of GPU 0."""
    db = tmp_path / "live.db"
    trace = write_big_trace(tmp_path / "big.csv", ROWS)
    port = free_port()
    serve = subprocess.Popen(
        gpuhistory("serve", "--db", str(db), "--backend", "sim", "--interval", str(INTERVAL_S),
                   "--port", str(port), "--host-name", "live"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", serve, timeout=90)
        began = int(time.time() * 1000)
        done = subprocess.run(
            gpuhistory("import", str(trace), "--db", str(db), "--start",
                       "2026-01-01T00:00:00Z", "--host-name", "recorded"),
            capture_output=True, text=True, timeout=600)
        ended = int(time.time() * 1000)
        assert done.returncode == 0, done.stderr
        assert ended - began > 2 * INTERVAL_S * 1000  # the lock was held across ticks
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the ticks held back are written
            times = live_times(db, "live")
            if times and times[-1] > ended + 2 * INTERVAL_S * 1000:
                break
            time.sleep(0.2)
        during = [t for t in times if began - 2000 <= t <= ended + 2000]
        gaps = [b - a for a, b in itertools.pairwise(during)]
        assert during and max(gaps) < 1.8 * INTERVAL_S * 1000, (
            f"longest gap {max(gaps)} ms during a {ended - began} ms import")
        assert len(during) >= (ended - began) / (INTERVAL_S * 1000) - 1
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=60)
