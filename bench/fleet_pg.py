"""A fleet on one PostgreSQL database: ingest from many samplers, and the analytics queries
on a month of data beside the same queries on SQLite.

    python -m bench.fleet_pg                       # 8 samplers x 8 GPUs, 60 s; 30-day log
    python -m bench.fleet_pg --seconds 10 --days 1 # a quick run
    python -m bench.fleet_pg --skip-analytics      # ingest only

**Ingest.** ``--samplers`` processes (8), each the ``gpuhistory sampler`` role
(``Service(role="sampler")``, the object the CLI command runs) with its own host name and
``--gpus`` simulated GPUs (8), sample at ``--interval`` (1 s) into one fresh PostgreSQL
database for ``--seconds`` (60) once all of them are ticking. They migrate the database
themselves, all at once. Each worker records its sampler's own timing of every tick
(``Sampler.last_tick``: read and classify, the figure ``/metrics`` reports as
``gpuhistory_tick_duration_seconds``) and of every tick's write (``LogStore.write`` in the
sampler's writer thread: waiting for its one connection, the insert and the commit). Rows
per second are counted in the database; a lost tick is a gap of more than 1.5 intervals
between a GPU's consecutive samples, or a failed tick.

**Analytics.** The bench/month.py log (``--days`` 30: 8 GPUs at 1 Hz, 20.7 M samples),
caught up (rollups, incidents) on SQLite, is copied table by table into a fresh PostgreSQL
database with ``COPY ... FROM STDIN`` (psycopg's ``write_row``, rows read with sqlite3),
then ``ANALYZE``d. The analytics questions of bench/analytics.py are then asked over HTTP
(waitress, keep-alive) of the same app on each database, alternating between the two in
rounds so that both see the same load.

The PostgreSQL server is ``--pg-url`` (default: GPUHISTORY_TEST_POSTGRES, else the local
server); the bench creates its databases there and drops them at the end (``--keep`` keeps
the month copy for another run; ``--reuse`` then asks it again without copying).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa

from bench.common import Figure, latency_figure, machine, time_calls

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
COPY_BATCH = 20_000
ROUNDS = 5  # the analytics questions alternate between the databases in rounds


# -- databases -----------------------------------------------------------------------------
def _admin(pg_url: str) -> sa.Engine:
    return sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def create_database(pg_url: str, name: str) -> str:
    """A new empty database ``name`` (dropped first if it exists); its URL."""
    admin = _admin(pg_url)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return sa.make_url(pg_url).set(database=name).render_as_string(False)


def drop_database(pg_url: str, name: str) -> None:
    admin = _admin(pg_url)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


def database_bytes(url: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        size = conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar()
    engine.dispose()
    return int(size or 0)


# -- ingest: one worker per host ------------------------------------------------------------
@dataclass
class TickLog:
    """What one sampler did, as it timed it: each tick's read and classify
    (``Sampler.last_tick``), each tick's committed write (``LogStore.write``: waiting for
    the connection, the transaction, the commit), and what failed."""

    ticks: list[tuple[int, float]] = field(default_factory=list)  # (tick ms, seconds)
    writes: list[tuple[int, float]] = field(default_factory=list)  # (tick ms, seconds)
    errors: list[str] = field(default_factory=list)  # ticks that raised
    write_errors: list[str] = field(default_factory=list)  # writes refused (kept, retried)

    def to_dict(self) -> dict[str, Any]:
        return {"ticks": self.ticks, "writes": self.writes, "errors": self.errors,
                "write_errors": self.write_errors}


def record_ticks(service: Any) -> TickLog:
    """Time every tick of ``service``'s sampler and every write of a tick into its log
    (wrapping ``Sampler.tick`` and ``LogStore.write`` before the service starts)."""
    sampler, store = service.sampler, service.store
    assert sampler is not None
    record = TickLog()
    tick, write = sampler.tick, store.write

    def timed_tick(*args: Any, **kwargs: Any) -> Any:
        try:
            result = tick(*args, **kwargs)
        except Exception as exc:
            record.errors.append(f"{type(exc).__name__}: {exc}")
            raise
        stats = sampler.last_tick
        if stats is not None:
            record.ticks.append((stats.ts_ms, stats.seconds))
        return result

    def timed_write(tick_record: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            ids = write(tick_record, *args, **kwargs)
        except Exception as exc:
            record.write_errors.append(f"{type(exc).__name__}: {exc}")
            raise
        if tick_record.samples:
            record.writes.append((tick_record.samples[0]["ts_ms"],
                                  time.perf_counter() - started))
        return ids

    sampler.tick = timed_tick
    store.write = timed_write
    return record


def worker(db: str, host: str, gpus: int, interval: float, out: Path) -> None:
    """One sampler process (the ``gpuhistory sampler`` role) until SIGTERM; writes the
    sampler's own timing of each tick to ``out``."""
    from gpuhistory.service import ServeSettings, Service

    service = Service(ServeSettings(db=db, backend="sim", sim_gpus=gpus, interval=interval,
                                    host_name=host), role="sampler")
    ticks = record_ticks(service)
    try:
        service.run()
    finally:
        out.write_text(json.dumps({"host": host, **ticks.to_dict()}))


def _spawn(db: str, host: str, gpus: int, interval: float, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.fleet_pg", "--worker", host, "--db", db,
         "--gpus", str(gpus), "--interval", str(interval), "--worker-out", str(out)],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)


def _hosts_sampling(url: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(
                "SELECT count(DISTINCT g.host) FROM gpus g WHERE EXISTS "
                "(SELECT 1 FROM samples s WHERE s.gpu_id = g.id)")).scalar() or 0)
    except sa.exc.ProgrammingError:  # not migrated yet
        return 0
    finally:
        engine.dispose()


def ingest(pg_url: str, samplers: int, gpus: int, seconds: float, interval: float,
           workdir: Path) -> list[Figure]:
    name = f"gpuhistory_bench_fleet_{os.getpid()}"
    url = create_database(pg_url, name)
    procs: dict[str, subprocess.Popen] = {}
    outs = {f"bench-host-{i}": workdir / f"ticks-{i}.json" for i in range(samplers)}
    try:
        started = time.monotonic()
        for host, out in outs.items():
            procs[host] = _spawn(url, host, gpus, interval, out)
        while _hosts_sampling(url) < samplers:
            for host, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{host} exited: {proc.stderr.read()}")  # type: ignore[union-attr]
            if time.monotonic() - started > 120:
                raise RuntimeError("the samplers did not all start within 120 s")
            time.sleep(0.2)
        startup_s = time.monotonic() - started
        cpu_before = {h: cpu_seconds(p.pid) for h, p in procs.items()}
        window_start = int(time.time() * 1000)
        time.sleep(seconds)  # the measured window: the samplers run on their own clocks
        window_end = int(time.time() * 1000)
        cpu_used = {h: cpu_seconds(p.pid) - cpu_before[h] for h, p in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        stderrs = {h: p.communicate(timeout=60)[1] for h, p in procs.items()}
    try:
        failed = {h: p.returncode for h, p in procs.items() if p.returncode != 0}
        if failed:
            raise RuntimeError(f"samplers failed: {failed}: "
                               f"{[stderrs[h][-2000:] for h in failed]}")
        reports = {h: json.loads(out.read_text()) for h, out in outs.items()}
        return _ingest_figures(url, reports, cpu_used, window_start, window_end, samplers,
                               gpus, interval, startup_s)
    finally:
        drop_database(pg_url, name)


def cpu_seconds(pid: int) -> float:
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return 0.0


def _ingest_figures(url: str, reports: dict[str, Any], cpu_used: dict[str, float],
                    start_ms: int, end_ms: int, samplers: int, gpus: int, interval: float,
                    startup_s: float) -> list[Figure]:
    window_s = (end_ms - start_ms) / 1000
    durations = [seconds for r in reports.values() for ts, seconds in r["ticks"]
                 if start_ms <= ts < end_ms]
    commits = [seconds for r in reports.values() for ts, seconds in r["writes"]
               if start_ms <= ts < end_ms]
    errors = sum(len(r["errors"]) for r in reports.values())
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT g.host, g.gpu_index, s.ts_ms FROM samples s JOIN gpus g ON g.id = s.gpu_id "
            "WHERE s.ts_ms >= :a AND s.ts_ms < :b ORDER BY g.host, g.gpu_index, s.ts_ms"),
            {"a": start_ms, "b": end_ms}).all()
        events = conn.execute(sa.text(
            "SELECT count(*) FROM events WHERE ts_ms >= :a AND ts_ms < :b"),
            {"a": start_ms, "b": end_ms}).scalar()
    engine.dispose()
    per_gpu: dict[tuple[str, int], list[int]] = {}
    for host, index, ts in rows:
        per_gpu.setdefault((host, index), []).append(ts)
    lost = 0
    for times in per_gpu.values():
        for a, b in itertools.pairwise(times):
            if b - a > 1.5 * interval * 1000:
                lost += round((b - a) / (interval * 1000)) - 1
    missing_gpus = samplers * gpus - len(per_gpu)
    expected_ticks = window_s / interval
    tick_counts = [len(t) for t in per_gpu.values()]
    cpu_pct = [100 * used / window_s for used in cpu_used.values()]
    bench = "fleet_pg"
    where = f"{samplers} samplers x {gpus} sim GPUs, {interval:g} s interval, {window_s:.0f} s"
    return [
        latency_figure(bench, f"tick (read + classify), {where}",
                       durations, None,
                       f"the sampler's own timing of {len(durations)} ticks; max "
                       f"{max(durations) * 1000:.2f} ms" if durations else "no ticks"),
        latency_figure(bench, f"tick commit (wait for the connection + write), {where}",
                       commits, None,
                       f"LogStore.write of {len(commits)} ticks, in the sampler's writer "
                       f"thread; max {max(commits) * 1000:.2f} ms" if commits else "no writes"),
        Figure(bench, "sample rows written per second", round(len(rows) / window_s, 1),
               "rows/s", n=len(rows),
               note=f"{samplers * gpus} GPUs; {events} events in the window; "
                    f"{min(tick_counts, default=0)}-{max(tick_counts, default=0)} samples "
                    f"per GPU for {expected_ticks:.1f} expected"),
        Figure(bench, "lost ticks (gaps > 1.5 intervals, failed ticks, GPUs never seen)",
               lost + errors + missing_gpus, "ticks", budget="== 0",
               ok=lost + errors + missing_gpus == 0,
               note=f"gaps {lost}, failed ticks {errors}, GPUs without samples "
                    f"{missing_gpus}"),
        Figure(bench, "sampler CPU per process", round(statistics.fmean(cpu_pct), 2),
               "% of a core", note=f"max {max(cpu_pct):.2f} %; start-up (imports, "
                                   f"migration race, first tick) {startup_s:.1f} s for all"),
    ]


# -- analytics: the month on both databases -------------------------------------------------
def copy_to_postgres(sqlite_path: Path, url: str) -> dict[str, Any]:
    """Every table of the log copied with COPY; sequences moved past the copied ids."""
    from gpuhistory.storage.engine import make_engine, upgrade
    from gpuhistory.storage.schema import metadata

    engine = make_engine(url)
    upgrade(engine)
    source = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    present = {n for (n,) in source.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    counts: dict[str, int] = {}
    started = time.perf_counter()
    raw = engine.raw_connection()
    try:
        pg = raw.driver_connection
        for table in metadata.sorted_tables:  # parents before children
            if table.name not in present:
                continue
            columns = [c.name for c in table.columns]
            cursor = source.execute(f"SELECT {', '.join(columns)} FROM {table.name}")
            n = 0
            with pg.cursor() as cur, cur.copy(
                    f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                while batch := cursor.fetchmany(COPY_BATCH):
                    for row in batch:
                        copy.write_row(row)
                    n += len(batch)
            counts[table.name] = n
        with pg.cursor() as cur:
            for table in metadata.sorted_tables:
                if "id" in table.columns and table.c.id.autoincrement is True:
                    cur.execute(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                f"coalesce(max(id), 0) + 1, false) FROM {table.name}")
        pg.commit()
        copied = time.perf_counter() - started
        with pg.cursor() as cur:
            pg.autocommit = True
            cur.execute("ANALYZE")
        analyzed = time.perf_counter() - started - copied
    finally:
        raw.close()
        source.close()
        engine.dispose()
    return {"rows": counts, "copy_s": copied, "analyze_s": analyzed}


QUESTIONS = (  # (name, path, calls); {end}/{day}/{month}/{incident} filled in below
    ("status of all GPUs", "/api/gpu/status/all", 200),
    ("trend over 5 min", "/api/gpu/temperature/trend?gpu_id=1&duration_minutes=5", 200),
    ("trend over 24 h", "/api/gpu/temperature/trend?gpu_id=1&duration_minutes=1440", 200),
    ("status of all GPUs at a past time", "/api/gpu/status/all?at={past}", 100),
    ("500-point history over 1 day", "/api/gpu/metrics/history?gpu_id=1&resolution=auto"
     "&points=500&since={day}&until={end}", 100),
    ("500-point history over the whole log", "/api/gpu/metrics/history?gpu_id=1"
     "&resolution=auto&points=500&since={start}&until={end}", 100),
    ("incident list", "/api/gpu/incidents?limit=1000", 100),
    ("post-mortem of an incident", "/api/gpu/incidents/{incident}", 30),
)


def _existing_copy(pg_url: str, name: str, samples: int) -> str | None:
    """The URL of a kept copy of the log (``--keep``) that holds all its samples, if any."""
    url = sa.make_url(pg_url).set(database=name).render_as_string(False)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.text("SELECT count(*) FROM samples")).scalar()
    except sa.exc.OperationalError:  # no such database
        return None
    finally:
        engine.dispose()
    return url if found == samples else None


def analytics(pg_url: str, days: float, keep: bool, reuse: bool) -> list[Figure]:
    from bench.analytics import Api
    from bench.month import GPUS, START_MS, month_log
    from gpuhistory.clock import iso_utc

    db = month_log(days)
    end_ms = START_MS + round(days * 86_400_000)
    t0 = time.perf_counter()
    Api(db, end_ms).close()  # rollups and incidents brought up to date on SQLite (once)
    caught_up = time.perf_counter() - t0
    name = f"gpuhistory_bench_month_{days:g}d".replace(".", "_")
    with sqlite3.connect(db) as conn:
        samples = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    url = _existing_copy(pg_url, name, samples) if reuse else None
    figures: list[Figure] = []
    bench = "fleet_pg"
    try:
        if url is None:
            url = create_database(pg_url, name)
            copied = copy_to_postgres(db, url)
            figures.append(Figure(
                bench, f"copy the {days:g}-day log into PostgreSQL (COPY)",
                round(copied["copy_s"], 1), "s", n=sum(copied["rows"].values()),
                note=f"{samples:,} samples, {samples / copied['copy_s']:,.0f} rows/s with "
                     f"the primary key in place; ANALYZE {copied['analyze_s']:.1f} s; "
                     f"PostgreSQL database {database_bytes(url) / 1e9:.2f} GB, SQLite file "
                     f"{db.stat().st_size / 1e9:.2f} GB; SQLite catch-up before it "
                     f"{caught_up:.0f} s"))
        else:
            print(f"reusing the kept copy {name}", file=sys.stderr)
        with sqlite3.connect(db) as conn:
            incident = conn.execute(
                "SELECT i.id FROM incidents i JOIN gpus g ON g.id = i.gpu_id "
                "WHERE g.gpu_index = 1 ORDER BY i.start_ms DESC LIMIT 1").fetchone()
        values = {"end": iso_utc(end_ms), "day": iso_utc(end_ms - 86_400_000),
                  "start": iso_utc(START_MS), "past": iso_utc(end_ms - 43_200_000),
                  "incident": incident[0] if incident else 1}
        apis = {"sqlite": Api(db, end_ms), "postgresql": Api(url, end_ms)}  # type: ignore[arg-type]
        try:
            for question, path, calls in QUESTIONS:
                if "{incident}" in path and incident is None:
                    continue
                filled = path.format(**values)
                # Alternate the two in rounds, so both see the same load on a shared machine.
                timings: dict[str, list[float]] = {backend: [] for backend in apis}
                for _ in range(ROUNDS):
                    for backend, api in apis.items():
                        timings[backend] += time_calls(lambda p=filled, a=api: a.get(p),
                                                       max(1, calls // ROUNDS), warmup=2)
                for backend, seconds in timings.items():
                    figures.append(latency_figure(bench, f"{question} (HTTP, {backend})",
                                                  seconds, None, f"{days:g} d x {GPUS} GPUs"))
        finally:
            for api in apis.values():
                api.close()
    finally:
        if not keep:
            drop_database(pg_url, name)
    return figures


# -- the command ---------------------------------------------------------------------------
def render(figures: list[Figure]) -> str:
    from bench.__main__ import render as table

    return table(figures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_pg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-url", default=os.environ.get("GPUHISTORY_TEST_POSTGRES",
                                                           DEFAULT_PG))
    parser.add_argument("--samplers", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=8, help="simulated GPUs per sampler")
    parser.add_argument("--seconds", type=float, default=60, help="the ingest window")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--days", type=float, default=30, help="size of the analytics log")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-analytics", action="store_true")
    parser.add_argument("--keep", action="store_true",
                        help="keep the PostgreSQL copy of the month log")
    parser.add_argument("--reuse", action="store_true",
                        help="ask a copy kept by --keep instead of copying again")
    parser.add_argument("--out", type=Path, help="JSON results (default: bench/results/)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.db, args.worker, args.gpus, args.interval, args.worker_out)
        return 0
    started = datetime.now(UTC)
    figures: list[Figure] = []
    if not args.skip_ingest:
        workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"fleet-pg-{os.getpid()}"
        workdir.mkdir(parents=True, exist_ok=True)
        figures += ingest(args.pg_url, args.samplers, args.gpus, args.seconds, args.interval,
                          workdir)
    if not args.skip_analytics:
        figures += analytics(args.pg_url, args.days, args.keep, args.reuse)
    print(render(figures))
    engine = sa.create_engine(args.pg_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        server = conn.execute(sa.text("SELECT version()")).scalar()
    engine.dispose()
    result = {"date": started.isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "machine": {**machine(), "postgresql": server},
              "figures": [f.to_dict() for f in figures]}
    out = args.out or Path("bench/results") / f"fleet-pg-{started:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
