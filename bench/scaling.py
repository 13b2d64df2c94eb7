"""Query latency versus log size: the same questions on logs of 1, 7, 30 and 90 days.

8 GPUs at 1 Hz (bench/month.py). The 1-, 7- and 30-day logs are built through the real
pipeline (``month_log``); the 90-day log is the 30-day file with two copies of its samples
and transitions appended in SQL, shifted by 30 and 60 days, then rollups and incident
detection brought up to date (``bench.analytics.catch_up``). --quick: 1 and 7 days only.

Each question is asked over HTTP (``bench.analytics.Api``: waitress, keep-alive
``http.client``) with now = the log's end, in 5 rounds that each take every question and
every log in turn, so drift in the rest of the machine's work lands on all sizes alike.
What should not grow with the log: the 5-minute and 24-hour trends (a key range; whole
minutes from the 1-minute rollups), a 1-day history and the status of all GPUs (a seek per
GPU). A whole-log history grows only with the rollup tier it reads (1-minute rows up to 500
hours, hourly rows beyond).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.analytics import Api, catch_up, iso
from bench.common import Figure, latency_figure, percentile, time_calls
from bench.month import DATA, GPUS, START_MS, month_log

DAY_MS = 86_400_000
SHIFT_MS = 30 * DAY_MS  # the 90-day log: the 30-day log, then twice more shifted by 30 days
ROUNDS = 5  # questions interleaved over the logs in this many rounds
FLAT_RATIO = 2.0  # a "flat" question's p50 on the largest log within this factor of the 1-day


@dataclass(frozen=True)
class Question:
    name: str
    path: Callable[[int, int], str]  # (log start ms, log end ms) -> request path
    budget_ms: Callable[[int], float | None]  # log days -> DESIGN §6 budget, where one is set
    flat: bool  # should not grow with the log


def _history(since_ms: int, until_ms: int) -> str:
    return (f"/api/gpu/metrics/history?gpu_id=1&resolution=auto&points=500"
            f"&since={iso(since_ms)}&until={iso(until_ms)}")


QUESTIONS = (
    Question("trend 5 min", lambda _s, _e: "/api/gpu/temperature/trend?gpu_id=1"
             "&duration_minutes=5", lambda _d: 1.0, True),
    Question("trend 24 h", lambda _s, _e: "/api/gpu/temperature/trend?gpu_id=1"
             "&duration_minutes=1440", lambda _d: 5.0, True),
    Question("history 1 day, 500 points", lambda _s, e: _history(e - DAY_MS, e),
             lambda _d: 5.0, True),
    Question("history whole log, 500 points", lambda s, e: _history(s, e),
             lambda d: 5.0 if d <= 1 else 15.0 if d <= 30 else None, False),
    Question("status of all GPUs", lambda _s, _e: "/api/gpu/status/all", lambda _d: 1.0, True),
)


# -- the logs -----------------------------------------------------------------------------
def holders(db: Path) -> list[str]:
    """Processes (this one included) that have ``db`` or its WAL/SHM open."""
    names = {str(db.resolve()), f"{db.resolve()}-wal", f"{db.resolve()}-shm"}
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        with contextlib.suppress(psutil.Error):
            if any(f.path in names for f in proc.open_files()):
                found.append(f"{proc.info['pid']} {proc.info['name']}")
    return found


def wait_unused(db: Path, timeout_s: float = 600) -> None:
    """Wait until no process has ``db`` open (one building or changing it)."""
    deadline = time.monotonic() + timeout_s
    while busy := holders(db):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{db.name} is still open by {busy} after {timeout_s:.0f} s")
        print(f"waiting for {db.name} to be closed by {busy}", file=sys.stderr, flush=True)
        time.sleep(10)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def build_90(path: Path) -> dict[str, float]:
    """The 90-day log from the 30-day one: copy the file, append two shifted copies of its
    samples and transitions, then catch the rollups and incident detection up."""
    from gpuhistory.clock import FakeClock
    from gpuhistory.config.layers import load_static
    from gpuhistory.config.store import ConfigStore
    from gpuhistory.storage.engine import make_engine, upgrade

    source = DATA / f"log-30d-{GPUS}gpu.db"
    if not source.exists():
        source = month_log(30)
    end_30 = START_MS + 30 * DAY_MS
    part = path.with_name(path.stem + ".part.db")
    for p in (part, Path(f"{part}-wal"), Path(f"{part}-shm")):
        p.unlink(missing_ok=True)
    started = time.perf_counter()
    wait_unused(source)
    shutil.copyfile(source, part)
    wal = Path(f"{source}-wal")
    if wal.exists() and wal.stat().st_size:  # left by a process that did not close cleanly
        shutil.copyfile(wal, f"{part}-wal")
    copied = time.perf_counter() - started
    with contextlib.closing(sqlite3.connect(part, isolation_level=None)) as conn:
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB
        gpu_ids = [r[0] for r in conn.execute("SELECT id FROM gpus ORDER BY id")]
        for gpu_id in gpu_ids:
            lo, hi = conn.execute("SELECT min(ts_ms), max(ts_ms) FROM samples WHERE gpu_id=?",
                                  (gpu_id,)).fetchone()
            if lo is None or lo < START_MS or hi >= end_30:
                raise RuntimeError(f"{source.name}: GPU {gpu_id} has samples {lo}..{hi}, "
                                   f"not within the 30 days from {START_MS}")
        cols = _columns(conn, "samples")
        shifted = ", ".join("ts_ms + :shift" if c == "ts_ms" else c for c in cols)
        insert = (f"INSERT INTO samples ({', '.join(cols)}) SELECT {shifted} FROM samples "
                  f"WHERE gpu_id = :gpu AND ts_ms >= :lo AND ts_ms < :hi")
        tcols = [c for c in _columns(conn, "transitions") if c != "id"]
        tshifted = ", ".join("ts_ms + :shift" if c == "ts_ms" else c for c in tcols)
        for k in (1, 2):
            for day in range(30):
                lo = START_MS + day * DAY_MS
                conn.execute("BEGIN")
                for gpu_id in gpu_ids:
                    conn.execute(insert, {"shift": k * SHIFT_MS, "gpu": gpu_id, "lo": lo,
                                          "hi": lo + DAY_MS})
                conn.execute("COMMIT")
            # The initial transition of each GPU (from nothing) happens once, not per copy.
            conn.execute(
                f"INSERT INTO transitions ({', '.join(tcols)}) SELECT {tshifted} "
                f"FROM transitions WHERE ts_ms >= :lo AND ts_ms < :hi "
                f"AND from_state IS NOT NULL ORDER BY ts_ms, id",
                {"shift": k * SHIFT_MS, "lo": START_MS, "hi": end_30})
            print(f"90-day log: copy {k} of the 30 days appended", file=sys.stderr, flush=True)
        conn.execute("BEGIN")
        for gpu_id in gpu_ids:
            conn.execute("UPDATE gpus SET last_seen_ms = (SELECT max(ts_ms) FROM samples "
                         "WHERE gpu_id = :g) WHERE id = :g", {"g": gpu_id})
        conn.execute("COMMIT")
    appended = time.perf_counter() - started - copied
    end_90 = START_MS + 90 * DAY_MS
    engine = make_engine(part)
    upgrade(engine)
    clock = FakeClock(end_90)
    times = catch_up(engine, clock, ConfigStore(engine, load_static(environ={}), clock))
    engine.dispose()
    with contextlib.closing(sqlite3.connect(part)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm"):
        Path(f"{part}{suffix}").unlink(missing_ok=True)
    part.rename(path)
    return {"copy_s": copied, "append_s": appended, **times}


def log_for(days: int) -> tuple[Path, str]:
    """The cached log of ``days`` days, and how it was made."""
    if days != 90:
        path = DATA / f"log-{days:g}d-{GPUS}gpu.db"
        if days == 30 and path.exists():  # never rebuilt from here (~15 min)
            return path, "pipeline build (cached)"
        existed = path.exists()
        if existed:  # month_log takes any existing file as built: not one being built now
            wait_unused(path)
        return month_log(days), "pipeline build" + (" (cached)" if existed else "")
    path = DATA / f"log-90d-{GPUS}gpu.db"
    if path.exists() and not os.environ.get("GPUHISTORY_BENCH_REBUILD"):
        return path, "30-day log + 2 shifted copies (cached)"
    t = build_90(path)
    how = (f"30-day log + 2 shifted copies: copy {t['copy_s']:.0f} s, append "
           f"{t['append_s']:.0f} s, rollups {t['rollups_s']:.0f} s, incidents "
           f"{t['incidents_s']:.0f} s")
    print(f"built {path.name}: {how}", file=sys.stderr, flush=True)
    return path, how


# -- the run ------------------------------------------------------------------------------
def _label(days: int) -> str:
    return f"log {days:02d} d"


def run(quick: bool) -> list[Figure]:
    sizes = (1, 7) if quick else (1, 7, 30, 90)
    n = 50 if quick else 300
    made = {days: log_for(days) for days in sizes}  # all built before any is opened
    results: dict[tuple[str, int], list[float]] = {(q.name, d): [] for q in QUESTIONS
                                                   for d in sizes}
    logs: list[Figure] = []
    apis: dict[int, Api] = {}
    try:
        for days in sizes:
            db, how = made[days]
            others = [h for h in holders(db) if not h.startswith(f"{os.getpid()} ")]
            api = apis[days] = Api(db, START_MS + days * DAY_MS)
            logs.append(log_figure(days, db, how, api, others))
        # Rounds, each asking every question of every log in turn, so drift in what else
        # the machine does is spread over all sizes instead of landing on one.
        others_before = _others_busy()
        for r in range(ROUNDS):
            for q in QUESTIONS:
                for days in sizes:
                    path = q.path(START_MS, START_MS + days * DAY_MS)
                    api = apis[days]
                    if r == 0:
                        api.get(path)  # fails loudly on a non-200 answer
                    results[q.name, days] += time_calls(lambda p=path, a=api: a.get(p),
                                                        n // ROUNDS, warmup=10 if r == 0 else 2)
        others = _others_busy(others_before)
    finally:
        for api in apis.values():
            api.close()
    figures = list(logs)
    for q in QUESTIONS:
        for days in sizes:
            figures.append(latency_figure("scaling", f"{q.name} (HTTP), {_label(days)}",
                                          results[q.name, days], q.budget_ms(days)))
    figures.append(matrix_figure(results, sizes, quick, others))
    return figures


def _others_busy(since: tuple[float, float, float] | None = None
                 ) -> tuple[float, float, float]:
    """(wall s, machine busy CPU s, this process's CPU s); with ``since``: (0, share of all
    cores busy with other processes over the interval, 0)."""
    t = psutil.cpu_times()
    own = psutil.Process().cpu_times()
    now = (time.monotonic(), t.user + t.system + t.nice + getattr(t, "steal", 0.0),
           own.user + own.system)
    if since is None:
        return now
    wall = (now[0] - since[0]) * (os.cpu_count() or 1)
    return 0.0, max(0.0, (now[1] - since[1]) - (now[2] - since[2])) / wall, 0.0


def log_figure(days: int, db: Path, how: str, api: Api, others: list[str]) -> Figure:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as raw:
        gpu_ids = [g for (g,) in raw.execute("SELECT id FROM gpus")]
        rows = sum(raw.execute("SELECT count(*) FROM samples WHERE gpu_id=?", (g,))
                   .fetchone()[0] for g in gpu_ids)
        count = {t: raw.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                 for t in ("samples_1m", "samples_1h", "transitions")}
    size = db.stat().st_size
    caught = api.catch_up["rollups_s"] + api.catch_up["incidents_s"]
    return Figure(
        "scaling", f"{_label(days)}: samples", round(rows / 1e6, 2), "M samples", n=rows,
        note=f"{size / 1e9:.2f} GB; {count['samples_1m']:,} 1-min and "
             f"{count['samples_1h']:,} hourly rollup rows, {count['transitions']:,} "
             f"transitions; {how}; catch-up at open {caught:.1f} s"
             + (f"; also open by {others}" if others else ""))


def matrix_figure(results: dict[tuple[str, int], list[float]], sizes: tuple[int, ...],
                  quick: bool, others: tuple[float, float, float]) -> Figure:
    """p50/p99 per question and size in the note; the value: the worst p50 growth, largest
    log over the 1-day log, among the questions that should be flat."""
    p50 = {k: percentile(v, 0.5) * 1000 for k, v in results.items()}
    p99 = {k: percentile(v, 0.99) * 1000 for k, v in results.items()}
    width = max(len(q.name) for q in QUESTIONS)
    head = "p50 / p99 ms".ljust(width) + "".join(f"{f'{d} d':>16}" for d in sizes) + "   growth"
    lines = [head]
    worst = 0.0
    for q in QUESTIONS:
        growth = p50[q.name, sizes[-1]] / p50[q.name, sizes[0]]
        if q.flat:
            worst = max(worst, growth)
        cells = "".join(f"{f'{p50[q.name, d]:.2f} / {p99[q.name, d]:.1f}':>16}" for d in sizes)
        lines.append(q.name.ljust(width) + cells
                     + f"   {growth:.2f}x{'' if q.flat else ' (grows with the tier)'}")
    shared = (f"all {os.cpu_count()} cores {others[1] * 100:.0f} % busy with other processes "
              f"while timing")
    if (os.cpu_count() or 0) <= 2:
        shared = f"2-core dev machine, shared with other work: {shared}"
    lines.append(f"growth: p50 on the {sizes[-1]}-day log / on the {sizes[0]}-day log; "
                 f"{shared}" + ("; --quick: 1 and 7 days only" if quick else ""))
    return Figure("scaling", f"worst p50 growth {sizes[0]} d -> {sizes[-1]} d, flat questions",
                  round(worst, 2), "x", budget=f"<= {FLAT_RATIO:g}x", ok=worst <= FLAT_RATIO,
                  note="\n    " + "\n    ".join(lines))
