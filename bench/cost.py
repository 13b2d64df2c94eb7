"""The cost of running: ``gpuhistory serve`` (sim backend, 8 GPUs, 1 s interval).

A real ``serve`` subprocess on a fresh SQLite file for 5 minutes (30 s with --quick). Every
second its CPU time (``psutil`` ``cpu_times()``: user + system, waited-for children and
live children included) and RSS are read from outside; the first 20 s are a warm-up (imports,
migrations, the first jobs) and excluded from the CPU figure. DESIGN §6 budgets: CPU <= 0.5 %
of one core, RSS <= 80 MB. ``/healthz`` is polled every 10 s for the last tick's duration
(polling costs the service a little CPU of its own: measured after the window and stated).

Database growth: the file (WAL included, after a checkpoint) once ``serve`` has stopped,
less an empty migrated file, per GPU-day at 1 Hz. Steady state with retention and rollups
on is computed from row sizes measured with ``dbstat`` on the 30-day bench log: raw samples
for ``retention_raw_days``, 1-minute rollups for ``retention_rollup_days``, hourly rollups
(and transitions, events, incidents) forever.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import Figure
from bench.month import DATA, GPUS, START_MS, month_log
from gpuhistory.domain.config import DEFAULT_CONFIG

WARMUP_S = 20.0
HEALTH_EVERY_S = 10.0
SIM_GPUS = 8
DAY_S = 86_400
MINUTES_PER_DAY = 1_440
HOURS_PER_DAY = 24
FOREVER_TABLES = ("transitions", "events", "incidents")  # kept forever beside samples_1h


# -- the serve subprocess -----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(db: Path, port: int) -> list[str]:
    """``gpuhistory serve ...`` (the venv's console script, else ``python -m``)."""
    script = Path(sys.executable).with_name("gpuhistory")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "gpuhistory.cli.main"]
    return [*base, "serve", "--db", str(db), "--port", str(port), "--backend", "sim",
            "--sim-gpus", str(SIM_GPUS), "--interval", "1"]


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of ``proc``, its waited-for children and its live ones."""
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return total


def rss_bytes(proc: psutil.Process) -> int:
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total


class Health:
    """GET /healthz on one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self) -> dict[str, Any]:
        self.conn.request("GET", "/healthz")
        response = self.conn.getresponse()
        return json.loads(response.read())

    def close(self) -> None:
        self.conn.close()


def _wait_ready(proc: subprocess.Popen, port: int, timeout: float = 60) -> Health:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode} before it was ready")
        health = Health(port)
        try:
            if (health.get().get("last_sample") or {}).get("timestamp"):
                return health
        except (OSError, http.client.HTTPException, ValueError):
            pass
        health.close()
        time.sleep(0.1)
    raise RuntimeError("serve did not start")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- database sizes -----------------------------------------------------------------------
def checkpointed_size(db: Path) -> int:
    """File size with its WAL, after a TRUNCATE checkpoint (nothing else may have it open)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(os.path.getsize(p) for p in (db, Path(f"{db}-wal")) if p.exists())


def empty_size() -> int:
    """The size of a freshly migrated, empty database (the fixed part of every file)."""
    from gpuhistory.storage.engine import make_engine, upgrade

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "empty.db"
        engine = make_engine(db)
        upgrade(engine)
        engine.dispose()
        return checkpointed_size(db)


def table_bytes(conn: sqlite3.Connection, name: str) -> int:
    """Pages of a table and its indexes (dbstat, aggregated per b-tree)."""
    names = [name, *(r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type='index' AND tbl_name=?", (name,)))]
    total = 0
    for n in names:
        row = conn.execute("SELECT pgsize FROM dbstat('main', 1) WHERE name=?", (n,)).fetchone()
        total += row[0] if row and row[0] else 0
    return total


def _open_readonly(db: Path) -> sqlite3.Connection:
    """A connection that cannot write ``db`` (no checkpoint on close either)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
        return conn
    except sqlite3.OperationalError:
        return sqlite3.connect(f"file:{db}?immutable=1", uri=True)


def _rolled_up(conn: sqlite3.Connection, end_ms: int) -> bool:
    """Are both rollup tiers complete up to the last hour of the log, for every GPU?"""
    try:
        rows = conn.execute("SELECT gpu_id, resolution, done_until_ms FROM rollup_progress"
                            ).fetchall()
        gpus = conn.execute("SELECT count(*) FROM gpus").fetchone()[0]
    except sqlite3.OperationalError:
        return False
    done = {(g, r): d for g, r, d in rows}
    return (gpus > 0 and len(done) == 2 * gpus
            and all(d >= end_ms - 3_600_000 for d in done.values()))


def row_sizes(log: Path, days: float) -> dict[str, Any]:
    """Bytes per row of samples, samples_1m, samples_1h (and the forever tables per GPU-day)
    on a bench log, with its rollups; rollups are made on a copy when the log has none."""
    end_ms = START_MS + round(days * DAY_S * 1000)
    with contextlib.closing(_open_readonly(log)) as conn:
        source = "the log itself"
        if _rolled_up(conn, end_ms):
            return _measure_rows(conn, days) | {"source": source}
    # No (complete) rollups yet: roll up a copy, never the original.
    from gpuhistory.analytics.rollups import RollupJob
    from gpuhistory.clock import FakeClock
    from gpuhistory.storage.engine import make_engine, upgrade

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "rollup-copy.db"
        with contextlib.closing(_open_readonly(log)) as src, \
                contextlib.closing(sqlite3.connect(copy)) as dst:
            src.backup(dst)
        engine = make_engine(copy)
        upgrade(engine)
        job = RollupJob(engine, FakeClock(end_ms))
        while job.run(max_seconds=60):
            pass
        engine.dispose()
        with contextlib.closing(sqlite3.connect(copy)) as conn:
            return _measure_rows(conn, days) | {"source": "a rolled-up copy"}


def _measure_rows(conn: sqlite3.Connection, days: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    gpus = conn.execute("SELECT count(*) FROM gpus").fetchone()[0]
    for table in ("samples", "samples_1m", "samples_1h"):
        rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        size = table_bytes(conn, table)
        out[table] = {"rows": rows, "bytes": size, "per_row": size / rows if rows else 0.0}
    forever = {t: table_bytes(conn, t) for t in FOREVER_TABLES}
    out["forever"] = forever
    out["forever_per_gpu_day"] = sum(forever.values()) / (gpus * days) if gpus else 0.0
    out["gpus"] = gpus
    return out


# -- the run ------------------------------------------------------------------------------
def measure(seconds: float) -> dict[str, Any]:
    """Run serve for ``seconds`` (warm-up included) and read it from outside."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "cost.db"
        port = _free_port()
        errors = (Path(tmp) / "serve.log").open("wb")  # a file: a full pipe would block it
        started = time.monotonic()
        proc = subprocess.Popen(serve_command(db, port), stdout=subprocess.DEVNULL,
                                stderr=errors)
        health: Health | None = None
        try:
            ps = psutil.Process(proc.pid)
            health = _wait_ready(proc, port)
            ready_s = time.monotonic() - started
            samples: list[tuple[float, float, int]] = []  # (t, cpu s, rss)
            ticks: list[float] = []
            next_health = time.monotonic()
            deadline = started + seconds
            machine_busy: float | None = None
            while True:
                now = time.monotonic()
                samples.append((now - started, cpu_seconds(ps), rss_bytes(ps)))
                if machine_busy is None and now - started >= WARMUP_S:
                    machine_busy = 0.0
                    psutil.cpu_percent(interval=None)  # starts the machine-wide count
                if now >= next_health:
                    tick = health.get().get("last_tick")
                    if tick and tick.get("duration_ms") is not None:
                        ticks.append(tick["duration_ms"])
                    next_health += HEALTH_EVERY_S
                if now >= deadline or proc.poll() is not None:
                    break
                time.sleep(max(0.0, min(1.0 - (time.monotonic() - now), deadline - now)))
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited early ({proc.returncode})")
            machine_busy = psutil.cpu_percent(interval=None)  # all cores, since the warm-up
            # What one /healthz costs the service, to state what our polling added.
            polls = 100
            cpu_before = cpu_seconds(ps)
            for _ in range(polls):
                health.get()
            health_cpu_ms = (cpu_seconds(ps) - cpu_before) / polls * 1000
        finally:
            if health is not None:
                health.close()
            _stop(proc)
            errors.close()
        if proc.returncode not in (0, -signal.SIGTERM):
            tail = (Path(tmp) / "serve.log").read_text(errors="replace")[-500:]
            raise RuntimeError(f"serve exited with {proc.returncode}: {tail}")
        size = checkpointed_size(db)
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
            samples_bytes = table_bytes(conn, "samples")
            span = conn.execute("SELECT min(ts_ms), max(ts_ms) FROM samples").fetchone()
    return {"samples": samples, "ticks": ticks, "ready_s": ready_s, "size": size,
            "rows": rows, "samples_bytes": samples_bytes, "span_ms": span,
            "health_cpu_ms": health_cpu_ms, "seconds": seconds, "machine_busy": machine_busy,
            "load": os.getloadavg()}


def run(quick: bool) -> list[Figure]:
    seconds = 30.0 if quick else 300.0
    m = measure(seconds)
    window = [s for s in m["samples"] if s[0] >= WARMUP_S]
    if len(window) < 2:
        raise RuntimeError("no samples after the warm-up")
    (t0, c0, _), (t1, c1, _) = window[0], window[-1]
    cpu_pct = (c1 - c0) / (t1 - t0) * 100
    # CPU % in 30 s windows (the rollup job runs every 30 s), to show the spread.
    parts = []
    i = 0
    while i < len(window) - 1:
        j = i
        while j < len(window) - 1 and window[j][0] - window[i][0] < 30:
            j += 1
        if window[j][0] - window[i][0] >= 5:
            parts.append((window[j][1] - window[i][1]) / (window[j][0] - window[i][0]) * 100)
        i = j
    rss_all = [s[2] for s in m["samples"]]
    rss_window = [s[2] for s in window]
    peak_mb, mean_mb = max(rss_all) / 1e6, statistics.fmean(rss_window) / 1e6
    health_pct = m["health_cpu_ms"] / 1000 / HEALTH_EVERY_S * 100
    shared = (f"all {os.cpu_count()} cores {m['machine_busy']:.0f} % busy over the window "
              f"(serve and this harness included; load average {m['load'][0]:.2f} at the end)")
    if (os.cpu_count() or 0) <= 2:
        shared = f"2-core dev machine, shared with other work: {shared}"
    figures = [
        Figure("cost", "serve CPU, % of one core", round(cpu_pct, 3), "%",
               n=len(window), budget="<= 0.5 %", ok=cpu_pct <= 0.5,
               note=f"{c1 - c0:.2f} CPU s over {t1 - t0:.0f} s after a {WARMUP_S:.0f} s "
                    f"warm-up (ready after {m['ready_s']:.1f} s); 30 s windows "
                    f"{min(parts, default=cpu_pct):.2f}-{max(parts, default=cpu_pct):.2f} %; "
                    f"includes /healthz polled every {HEALTH_EVERY_S:.0f} s "
                    f"(~{m['health_cpu_ms']:.1f} ms CPU each = {health_pct:.3f} % of a core); "
                    f"{shared}"),
        Figure("cost", "serve RSS, peak", round(peak_mb, 1), "MB", n=len(rss_all),
               budget="<= 80 MB", ok=peak_mb <= 80,
               note=f"process RSS (children included) read every second, warm-up included; "
                    f"first/last after warm-up {rss_window[0] / 1e6:.1f}/"
                    f"{rss_window[-1] / 1e6:.1f} MB"),
        Figure("cost", "serve RSS, mean after warm-up", round(mean_mb, 1), "MB",
               n=len(rss_window), budget="<= 80 MB", ok=mean_mb <= 80),
    ]
    if m["ticks"]:
        ticks = sorted(m["ticks"])
        figures.append(Figure(
            "cost", "tick duration (healthz last_tick)", round(statistics.median(ticks), 3),
            "ms", p50=round(statistics.median(ticks), 3), p99=round(ticks[-1], 3),
            n=len(ticks), budget="<= 1 ms", ok=statistics.median(ticks) <= 1.0,
            note=f"the last tick's duration_ms read every {HEALTH_EVERY_S:.0f} s; "
                 f"value and p50 are the median, p99 column is the max seen"))
    figures += growth_figures(m)
    return figures


def growth_figures(m: dict[str, Any]) -> list[Figure]:
    rows = m["rows"]
    base = empty_size()
    added = m["size"] - base
    gpu_seconds = rows  # one sample per GPU per second at 1 Hz
    per_gpu_day = added / gpu_seconds * DAY_S
    samples_row = m["samples_bytes"] / rows
    figures = [Figure(
        "cost", "database growth per GPU-day (from the run, no retention)",
        round(per_gpu_day / 1e6, 2), "MB", n=rows,
        note=f"{m['size']:,} B after {rows:,} samples ({rows / SIM_GPUS:.0f} s x {SIM_GPUS} "
             f"GPUs), less {base:,} B of an empty migrated file = {added:,} B; "
             f"/ {gpu_seconds:,} GPU-s x 86,400 (to a 4 KB page); samples table alone "
             f"{samples_row:.1f} B/row (partly filled pages of a short run)")]
    log = DATA / f"log-30d-{GPUS}gpu.db"
    days = 30.0
    if not log.exists():
        log, days = month_log(1), 1.0
    sizes = row_sizes(log, days)
    raw_days = DEFAULT_CONFIG.retention_raw_days
    minute_days = DEFAULT_CONFIG.retention_rollup_days
    s, m1, h1 = (sizes[t]["per_row"] for t in ("samples", "samples_1m", "samples_1h"))
    raw_b = raw_days * s * DAY_S
    minute_b = minute_days * m1 * MINUTES_PER_DAY
    hour_day = h1 * HOURS_PER_DAY
    forever_day = sizes["forever_per_gpu_day"]
    first_days = s * DAY_S + m1 * MINUTES_PER_DAY + hour_day + forever_day
    mid_days = m1 * MINUTES_PER_DAY + hour_day + forever_day
    steady = hour_day + forever_day
    footprint = raw_b + minute_b
    source = (f"dbstat on {log.name} ({days:g} d, {sizes['gpus']} GPUs, "
              f"rollups from {sizes['source']})")
    figures.append(Figure(
        "cost", "steady-state footprint per GPU (retention on)", round(footprint / 1e6, 1),
        "MB",
        note=f"{raw_days:g} d raw x {s:.2f} B/row x 86,400 = {raw_b / 1e6:.1f} MB + "
             f"{minute_days:g} d of 1-min rollups x {m1:.2f} B/row x 1,440 = "
             f"{minute_b / 1e6:.1f} MB = {footprint / 1e6:.1f} MB, reached after "
             f"{minute_days:g} d and then constant (freed pages are reused; the file does not "
             f"shrink); row sizes: {source}"))
    figures.append(Figure(
        "cost", "steady-state growth per GPU-day (retention on)", round(steady / 1e3, 2), "KB",
        note=f"hourly rollups forever: 24 x {h1:.2f} B/row = {hour_day:,.0f} B, + "
             f"transitions/events/incidents {forever_day:,.0f} B per GPU-day on that log = "
             f"{steady:,.0f} B/GPU-day once past {minute_days:g} d; before that: days 1-"
             f"{raw_days:g} grow {first_days / 1e6:.2f} MB/GPU-day (raw {s * DAY_S / 1e6:.2f} "
             f"+ 1-min {m1 * MINUTES_PER_DAY / 1e3:.0f} KB + the rest), days {raw_days:g}-"
             f"{minute_days:g} {mid_days / 1e3:.0f} KB/GPU-day"))
    return figures
