"""A fleet at scale on one PostgreSQL database: 125 hosts x 8 GPUs = 1,000 GPUs at 1 Hz.

    python -m bench.fleet_scale --pgbouncer                # the full run: 600 s, 1,000 GPUs
    python -m bench.fleet_scale --hosts 20 --seconds 30    # a small run (160 GPUs, direct)
    python -m bench.fleet_scale --hosts 4 --gpus 2 --processes 2 --seconds 5   # a smoke run

**The fleet.** ``--hosts`` simulated hosts (125), ``--gpus`` simulated GPUs each (8),
sample at ``--interval`` (1 s) into one fresh PostgreSQL database for ``--seconds`` (600)
once every host is ticking. The hosts run several to a process (``--processes``, 5): each
host is its own ``Service(role="sampler")`` — the object ``gpuhistory sampler`` runs — with
its own host name, sampler claim, scheduler, engine (one connection) and share of the
fleet's maintenance, run by ``Service.run`` in a thread of its process. So the database
sees exactly what ``--hosts`` separate ``gpuhistory sampler`` processes would send; only
their CPU is pooled into fewer interpreters. The bench migrates the database first.

With ``--pgbouncer`` every process (the samplers and the API) connects through Debian's
``pgbouncer``, started by the bench on a loopback port in transaction mode with
``--pool-size`` (20) server connections; PostgreSQL's ``max_connections`` is left as it is.
Without it every sampler holds its own connection, and the bench refuses to start when the
server has too few left.

**What it reports.** Rows per second (counted in the database); each sampler's own timing of
its ticks: read + classify (``Sampler.last_tick``) and the commit (``LogStore.write`` in
its writer thread: waiting for its one connection, insert, commit); lost ticks (a gap of
more than 1.5 intervals between a GPU's consecutive samples, or at the window's edges, a
tick that raised, a GPU never seen: goal 0); PostgreSQL CPU (psutil over the server
processes of the bench database, and over the whole server) and WAL bytes per second
(``pg_current_wal_lsn`` before and after: the whole server); disk per GPU-day (bytes of
``samples`` with its indexes, every partition when it is partitioned, per row, times the
rows a GPU writes in a day); the latency of ``GET /api/gpu/status/all?host=*`` and
``GET /api/fleet/hosts`` (and ``?gpus=true``, what the dashboard's map polls) from a
``gpuhistory api`` process on the same database, asked every ``--api-every`` seconds
during the window; the peak of ``pg_stat_activity`` on the bench database; each
maintenance job's run time and that each ran once per period (``maintenance_runs`` read
every second: runs grouped by period, periods without a run); the samplers' CPU and
threads per process.

Prints a table and writes JSON to docs/results/ (``--out`` for another path). The database
is dropped at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa

from bench.common import Figure, latency_figure, machine, percentile
from bench.fleet_pg import (
    DEFAULT_PG,
    RESULTS,
    cpu_seconds,
    create_database,
    drop_database,
    record_ticks,
    render,
)
from bench.pgbouncer import PgBouncer, free_port
from bench.pgbouncer import binary as pgbouncer_binary

BENCH = "fleet_scale"
HOST_PREFIX = "scale-host-"
API_HOST = "scale-api"
API_POOL = 2  # the api process's connections (--db-pool-size), and its HTTP threads x 2
API_PATHS = ("/api/gpu/status/all?host=*", "/api/fleet/hosts", "/api/fleet/hosts?gpus=true")
POLL_S = 1.0  # pg_stat_activity, maintenance_runs and the server's CPU are read this often


def host_names(hosts: int) -> list[str]:
    return [f"{HOST_PREFIX}{i:03d}" for i in range(hosts)]


def split(names: list[str], processes: int) -> list[list[str]]:
    """``names`` dealt into ``processes`` groups of nearly equal size (none empty)."""
    groups = [names[i::processes] for i in range(min(processes, len(names)))]
    return [g for g in groups if g]


# -- a worker: several hosts, each its own sampler service ------------------------------------
def worker(db: str, hosts: list[str], gpus: int, interval: float, out: Path) -> None:
    """Run one ``Service(role="sampler")`` per host in this process until SIGTERM; write each
    sampler's timing of its ticks, the maintenance runs done here and this process's thread
    count to ``out``."""
    from gpuhistory.service import ServeSettings, Service

    services: dict[str, Service] = {}
    logs = {}
    for host in hosts:  # one after another: each opens its engine and checks the schema
        service = Service(ServeSettings(db=db, backend="sim", sim_gpus=gpus,
                                        interval=interval, host_name=host), role="sampler")
        services[host] = service
        logs[host] = record_ticks(service)
    crashed: dict[str, str] = {}

    def run(host: str, service: Service) -> None:
        try:
            service.run()
        except Exception as exc:  # reported, and counted as lost by the main process
            crashed[host] = f"{type(exc).__name__}: {exc}"

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = [threading.Thread(target=run, args=(h, s), name=h, daemon=True)
               for h, s in services.items()]
    for thread in threads:
        thread.start()
    stop.wait()
    peak_threads = threading.active_count()
    for service in services.values():
        service.stop()
    for thread in threads:
        thread.join(timeout=60)
    ran: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for service in services.values():
        ran.update(service.maintenance.ran)
        failed.update(service.maintenance.failed)
    out.write_text(json.dumps({
        "hosts": {h: log.to_dict() for h, log in logs.items()}, "crashed": crashed,
        "maintenance_ran": dict(ran), "maintenance_failed": dict(failed),
        "threads": peak_threads, "unsaved": {h: s.unsaved for h, s in services.items()
                                             if s.unsaved}}))


def _spawn_worker(db: str, hosts: list[str], gpus: int, interval: float, out: Path,
                  log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.fleet_scale", "--worker", ",".join(hosts),
             "--db", db, "--gpus", str(gpus), "--interval", str(interval),
             "--worker-out", str(out)],
            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=err)


def _spawn_api(db: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "gpuhistory.cli.main", "api", "--db", db,
             "--host-name", API_HOST, "--port", str(port), "--threads", str(API_POOL * 2),
             "--db-pool-size", str(API_POOL)],
            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=err)


# -- watching the server during the window ------------------------------------------------------
def samples_bytes(conn: sa.Connection) -> int:
    """``samples`` with its indexes and TOAST; the sum over its partitions when it is
    partitioned (the parent of a partitioned table has no storage of its own)."""
    kind = conn.execute(sa.text(
        "SELECT relkind FROM pg_class WHERE oid = 'samples'::regclass")).scalar()
    if kind == "p":
        size = conn.execute(sa.text(
            "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('samples')"
        )).scalar()
    else:
        size = conn.execute(sa.text("SELECT pg_total_relation_size('samples')")).scalar()
    return int(size or 0)


def _proc_cpu(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


class ServerCpu:
    """CPU seconds of the PostgreSQL server on this machine: the postmaster with every
    process it forked, living (their own times) or ended (the times it reaped)."""

    def __init__(self, backend_pid: int) -> None:
        self.postmaster: psutil.Process | None = None
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(backend_pid).parent()
            if parent is not None and "postgres" in parent.name():
                self.postmaster = parent

    def seconds(self) -> float | None:
        if self.postmaster is None:
            return None
        try:
            t = self.postmaster.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for child in self.postmaster.children():
                total += _proc_cpu(child) or 0.0
        except psutil.Error:
            return None
        return total


@dataclass
class Watch:
    """What a thread reads every POLL_S on one direct connection: the bench database's
    connections (peak), its server processes' CPU, the maintenance_runs rows."""

    url: str
    peak_connections: int = 0
    peak_server_connections: int = 0
    backend_cpu: dict[int, list[float]] = field(default_factory=dict)  # pid → [first, last]
    runs: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    # maintenance_runs.runs by job at the window's start and at the last read
    counted_first: dict[str, int] = field(default_factory=dict)
    counted_last: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    claims: int = 0  # sampler claims held by the bench's hosts at the last read

    def __post_init__(self) -> None:
        self.engine = sa.create_engine(self.url, poolclass=sa.pool.StaticPool)
        self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self.backend_pid = int(self.conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
                               or 0)
        self.server = ServerCpu(self.backend_pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="watch", daemon=True)

    def scalar(self, sql: str) -> Any:
        return self.conn.execute(sa.text(sql)).scalar()

    def poll(self) -> None:
        rows = self.conn.execute(sa.text(
            "SELECT pid, datname = current_database() AS ours, backend_type "
            "FROM pg_stat_activity WHERE pid <> pg_backend_pid()")).all()
        ours = [r.pid for r in rows if r.ours]
        self.peak_connections = max(self.peak_connections,
                                    sum(1 for r in rows if r.ours
                                        and r.backend_type == "client backend"))
        self.peak_server_connections = max(
            self.peak_server_connections,
            sum(1 for r in rows if r.backend_type == "client backend"))
        for pid in ours:
            with contextlib.suppress(psutil.Error):
                cpu = _proc_cpu(psutil.Process(pid))
                if cpu is not None:
                    self.backend_cpu.setdefault(pid, [cpu, cpu])[1] = cpu
        for r in self.conn.execute(sa.text(
                "SELECT name, holder, runs, period_ms, started_ms, finished_ms, last_error "
                "FROM maintenance_runs")).mappings():
            self.runs[(r["name"], r["started_ms"])] = dict(r)
            self.counted_last[r["name"]] = r["runs"]
        self.claims = int(self.conn.execute(sa.text(
            "SELECT count(*) FROM sampler_claims WHERE host LIKE :p"),
            {"p": f"{HOST_PREFIX}%"}).scalar() or 0)

    def start(self) -> None:
        self.backend_cpu.clear()
        self.poll()
        self.counted_first = dict(self.counted_last)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.poll()
            except sa.exc.SQLAlchemyError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.poll()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.conn.close()
        self.engine.dispose()


class Asker:
    """Asks the API each of API_PATHS every ``every`` seconds (one keep-alive connection)."""

    def __init__(self, port: int, every: float) -> None:
        self.port = port
        self.every = every
        self.timings: dict[str, list[float]] = {p: [] for p in API_PATHS}
        self.failures: Counter[str] = Counter()
        self._stop = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._loop, name="asker", daemon=True)

    def get(self, path: str) -> tuple[int, bytes]:
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            self._conn.request("GET", path)
            response = self._conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self._conn.close()
            self._conn = None
            raise

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            for path in API_PATHS:
                t0 = time.perf_counter()
                try:
                    status, _body = self.get(path)
                except (OSError, http.client.HTTPException) as exc:
                    self.failures[f"{path}: {type(exc).__name__}"] += 1
                    continue
                if status == 200:
                    self.timings[path].append(time.perf_counter() - t0)
                else:
                    self.failures[f"{path}: HTTP {status}"] += 1
            self._stop.wait(max(0.0, self.every - (time.monotonic() - started)))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        if self._conn is not None:
            self._conn.close()


def wait_api(asker: Asker, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the api process exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if asker.get("/api/fleet/hosts")[0] == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the api did not answer within {timeout:g} s")


# -- the run ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    pg_url: str
    hosts: int
    gpus: int
    processes: int
    seconds: float
    interval: float
    pgbouncer: bool
    pool_size: int
    api_every: float
    keep: bool

    def where(self) -> str:
        via = f"via PgBouncer ({self.pool_size} server connections)" if self.pgbouncer \
            else "direct connections"
        return (f"{self.hosts} hosts x {self.gpus} GPUs in {self.processes} processes, "
                f"{self.interval:g} s interval, {via}")


def connection_check(conn: sa.Connection, s: Settings) -> dict[str, int]:
    """The server's connection limit and use; SystemExit when a direct run cannot fit."""
    limit = int(conn.execute(sa.text("SHOW max_connections")).scalar() or 0)
    reserved = int(conn.execute(sa.text("SHOW superuser_reserved_connections")).scalar() or 0)
    used = int(conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity "
                                    "WHERE backend_type = 'client backend'")).scalar() or 0)
    need = (s.pool_size if s.pgbouncer else s.hosts + API_POOL) + 2  # + the bench's own
    if need > limit - used:
        raise SystemExit(
            f"fleet_scale: needs {need} connections, the server has {limit - used} of "
            f"max_connections = {limit} free ({used} in use); run with --pgbouncer"
            + (" and a smaller --pool-size" if s.pgbouncer else ""))
    return {"max_connections": limit, "superuser_reserved_connections": reserved,
            "in_use_before": used}


def _hosts_sampling(conn: sa.Connection) -> int:
    return int(conn.execute(sa.text(
        "SELECT count(DISTINCT g.host) FROM gpus g WHERE g.host LIKE :p AND EXISTS "
        "(SELECT 1 FROM samples s WHERE s.gpu_id = g.id)"), {"p": f"{HOST_PREFIX}%"}).scalar()
               or 0)


class Fleet:
    """The samplers' worker processes, the ``api`` process and (``--pgbouncer``) the
    pooler in front of the database, started on entering and stopped (SIGTERM) on leaving;
    then ``reports()`` reads what each worker wrote."""

    def __init__(self, s: Settings, url: str, workdir: Path) -> None:
        self.s = s
        self.url = url
        self.workdir = workdir
        self.bouncer: PgBouncer | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.api: subprocess.Popen[bytes] | None = None
        self.groups = split(host_names(s.hosts), s.processes)
        self.outs = {f"worker-{i}": workdir / f"worker-{i}.json" for i in range(len(self.groups))}
        self.logs = {w: workdir / f"{w}.log" for w in self.outs}
        self.port = free_port()

    def __enter__(self) -> Fleet:
        try:
            if self.s.pgbouncer:
                self.bouncer = PgBouncer(self.url, self.workdir / "pgbouncer",
                                         self.s.pool_size,
                                         max_client_conn=self.s.hosts + API_POOL + 50)
            client_url = self.bouncer.url() if self.bouncer else self.url
            for (w, out), hosts in zip(self.outs.items(), self.groups, strict=True):
                self.procs[w] = _spawn_worker(client_url, hosts, self.s.gpus,
                                              self.s.interval, out, self.logs[w])
            self.api = _spawn_api(client_url, self.port, self.workdir / "api.log")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_sampling(self, conn: sa.Connection) -> float:
        """Seconds until every host has written a sample (RuntimeError when a worker dies
        or they take too long)."""
        started = time.monotonic()
        while _hosts_sampling(conn) < self.s.hosts:
            for w, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{w} exited: {self.logs[w].read_text()[-3000:]}")
            if time.monotonic() - started > 120 + 2 * self.s.hosts:
                raise RuntimeError(f"the {self.s.hosts} hosts did not all start sampling")
            time.sleep(0.5)
        return time.monotonic() - started

    def cpu(self) -> tuple[dict[str, float], float]:
        """CPU seconds so far of each worker, and of the api process."""
        assert self.api is not None
        return {w: cpu_seconds(p.pid) for w, p in self.procs.items()}, cpu_seconds(self.api.pid)

    def shape(self) -> tuple[dict[str, int], dict[str, int]]:
        """Threads and resident bytes of each worker process now."""
        threads, rss = {}, {}
        for w, proc in self.procs.items():
            with contextlib.suppress(psutil.Error):
                ps = psutil.Process(proc.pid)
                threads[w] = ps.num_threads()
                rss[w] = ps.memory_info().rss
        return threads, rss

    def stop(self) -> None:
        everyone = [*self.procs.values(), *([self.api] if self.api is not None else [])]
        for proc in everyone:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in everyone:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.bouncer is not None:
            self.bouncer.stop()

    def reports(self) -> dict[str, Any]:
        failed = {w: p.returncode for w, p in self.procs.items() if p.returncode != 0}
        if failed:
            raise RuntimeError(f"workers failed: {failed}: "
                               f"{[self.logs[w].read_text()[-2000:] for w in failed]}")
        return {w: json.loads(out.read_text()) for w, out in self.outs.items()}


def run(s: Settings, workdir: Path) -> tuple[list[Figure], dict[str, Any]]:
    """Make the database, run the fleet, measure the window, stop, work out the figures;
    the database is dropped at the end unless ``keep``."""
    from gpuhistory.storage.engine import make_engine, upgrade

    admin = sa.create_engine(s.pg_url, poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        limits = connection_check(conn, s)  # before anything is made
    admin.dispose()
    name = f"gpuhistory_bench_fleet_scale_{os.getpid()}"
    url = create_database(s.pg_url, name)
    try:
        engine = make_engine(url)
        upgrade(engine)  # once, before the fleet starts
        engine.dispose()
        with contextlib.closing(Watch(url)) as watch:
            with Fleet(s, url, workdir) as fleet:
                startup_s = fleet.wait_sampling(watch.conn)
                asker = Asker(fleet.port, s.api_every)
                assert fleet.api is not None
                wait_api(asker, fleet.api, workdir / "api.log", timeout=60)
                load_before = os.getloadavg()
                workers_before, api_before = fleet.cpu()
                lsn_before = watch.scalar("SELECT pg_current_wal_lsn()::text")
                server_before = watch.server.seconds()
                watch.start()
                asker.start()
                window_start = int(time.time() * 1000)
                time.sleep(s.seconds)  # the measured window
                window_end = int(time.time() * 1000)
                asker.stop()
                watch.stop()
                server_after = watch.server.seconds()
                wal = int(watch.scalar(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), "
                                       f"'{lsn_before}')") or 0)
                workers_after, api_after = fleet.cpu()
                threads, rss = fleet.shape()
                load_after = os.getloadavg()
            observed = Observed(
                start_ms=window_start, end_ms=window_end, startup_s=startup_s,
                reports=fleet.reports(), watch=watch, asker=asker, wal_bytes=wal,
                limits=limits,
                server_cpu=None if server_before is None or server_after is None
                else server_after - server_before,
                worker_cpu={w: workers_after[w] - workers_before[w] for w in workers_after},
                worker_threads=threads, worker_rss=rss, api_cpu=api_after - api_before,
                load=(load_before, load_after))
            return figures(s, watch.conn, observed)
    finally:
        if s.keep:
            print(f"kept the database {name}", file=sys.stderr)
        else:
            drop_database(s.pg_url, name)


# -- the figures ----------------------------------------------------------------------------------
@dataclass
class Observed:
    start_ms: int
    end_ms: int
    startup_s: float
    reports: dict[str, Any]
    watch: Watch
    asker: Asker
    wal_bytes: int
    limits: dict[str, int]
    server_cpu: float | None
    worker_cpu: dict[str, float]
    worker_threads: dict[str, int]
    worker_rss: dict[str, int]
    api_cpu: float
    load: tuple[tuple[float, float, float], tuple[float, float, float]]

    @property
    def window_s(self) -> float:
        return (self.end_ms - self.start_ms) / 1000


LOST_SQL = """
WITH w AS (
    SELECT s.gpu_id, s.ts_ms,
           s.ts_ms - lag(s.ts_ms) OVER (PARTITION BY s.gpu_id ORDER BY s.ts_ms) AS gap
    FROM samples s WHERE s.ts_ms >= :a AND s.ts_ms < :b)
SELECT g.host, g.gpu_index, count(w.ts_ms) AS n, min(w.ts_ms) AS first, max(w.ts_ms) AS last,
       coalesce(sum(CASE WHEN w.gap > :limit THEN round(w.gap / :i) - 1 END), 0) AS gaps
FROM gpus g LEFT JOIN w ON w.gpu_id = g.id
WHERE g.host LIKE :hosts
GROUP BY g.host, g.gpu_index
"""


def lost_ticks(conn: sa.Connection, start_ms: int, end_ms: int, interval: float
               ) -> dict[str, Any]:
    """Gaps of more than 1.5 intervals between a GPU's samples in the window, or between
    the window's edges and its first and last sample, as ticks missing; GPUs seen."""
    i = interval * 1000
    rows = conn.execute(sa.text(LOST_SQL), {"a": start_ms, "b": end_ms, "limit": 1.5 * i,
                                            "i": i, "hosts": f"{HOST_PREFIX}%"}).all()
    gaps = edges = 0
    silent = 0
    by_host: Counter[str] = Counter()
    for r in rows:
        if r.n == 0:
            silent += 1
            continue
        gaps += int(r.gaps)
        by_host[r.host] += int(r.gaps)
        for edge in (r.first - start_ms, end_ms - r.last):
            if edge > 1.5 * i:
                edges += round(edge / i) - 1
                by_host[r.host] += round(edge / i) - 1
    counts = [int(r.n) for r in rows]
    return {"gaps": gaps, "edges": edges, "silent_gpus": silent, "gpus": len(rows),
            "rows": sum(counts), "min": min(counts, default=0), "max": max(counts, default=0),
            "by_host": {h: n for h, n in by_host.most_common() if n}}


def maintenance_jobs() -> dict[str, float]:
    """The fleet-wide jobs as maintenance_runs names them, with their periods (seconds)."""
    from gpuhistory import service

    return {"incidents": service.INCIDENTS_EVERY_SECONDS,
            "rollups": service.ROLLUP_EVERY_SECONDS,
            "retention": service.RETENTION_EVERY_SECONDS}


def maintenance_figures(s: Settings, o: Observed) -> tuple[list[Figure], dict[str, Any]]:
    """Each job's runs in the window from maintenance_runs: run time, runs per period,
    full periods without a run, and the claims the table counted against those seen."""
    out: list[Figure] = []
    detail: dict[str, Any] = {}
    first, last = o.watch.counted_first, o.watch.counted_last
    worst = 0
    missed_all = 0
    for job, period_s in maintenance_jobs().items():
        period = round(period_s * 1000)
        rows = [r for (n, started), r in o.watch.runs.items()
                if n == job and o.start_ms <= started < o.end_ms]
        per_period = Counter(r["started_ms"] // period for r in rows)
        full = range(math.ceil(o.start_ms / period), o.end_ms // period)
        missed = sum(1 for p in full if per_period[p] == 0)
        most = max(per_period.values(), default=0)
        worst = max(worst, most)
        missed_all += missed
        durations = [(r["finished_ms"] - r["started_ms"]) / 1000 for r in rows
                     if r["finished_ms"] is not None]
        counted = last.get(job, 0) - first.get(job, 0)
        errors = [r["last_error"] for r in rows if r["last_error"]]
        holders = {r["holder"].split("@")[0] for r in rows}
        detail[job] = {"period_s": period / 1000, "runs_seen": len(rows),
                       "runs_counted": counted, "full_periods": len(full),
                       "periods_without_run": missed, "most_runs_in_a_period": most,
                       "durations_s": durations, "errors": errors,
                       "hosts_that_ran_it": len(holders),
                       "every_run_seen": sorted(
                           [r["started_ms"], r["holder"], r["finished_ms"], r["last_error"]]
                           for (n, _), r in o.watch.runs.items() if n == job)}
        note = (f"{len(rows)} runs seen ({counted} claims counted by maintenance_runs.runs) "
                f"in {len(full)} full {period / 1000:g} s periods; most in one period "
                f"{most}, full periods without a run {missed}; run by {len(holders)} "
                f"different hosts; {len(errors)} failed")
        if durations:
            out.append(latency_figure(BENCH, f"maintenance {job}: one run", durations, None,
                                      note + f"; max {max(durations) * 1000:.0f} ms"))
        else:
            out.append(Figure(BENCH, f"maintenance {job}: one run", float("nan"), "ms",
                              n=0, note=note))
    out.append(Figure(BENCH, "maintenance runs in one period, most over jobs and periods",
                      worst, "runs", budget="<= 1, no full period without a run",
                      ok=worst <= 1 and missed_all == 0,
                      note=f"full periods without a run: {missed_all}"))
    return out, detail


def figures(s: Settings, conn: sa.Connection, o: Observed
            ) -> tuple[list[Figure], dict[str, Any]]:
    where = f"{s.where()}, {o.window_s:.0f} s"
    hosts = [h for r in o.reports.values() for h in r["hosts"].values()]
    commits = [sec for h in hosts for ts, sec in h["writes"] if o.start_ms <= ts < o.end_ms]
    reads = [sec for h in hosts for ts, sec in h["ticks"] if o.start_ms <= ts < o.end_ms]
    tick_errors = sum(len(h["errors"]) for h in hosts)
    write_errors = sum(len(h["write_errors"]) for h in hosts)
    crashed = {h: e for r in o.reports.values() for h, e in r["crashed"].items()}
    lost = lost_ticks(conn, o.start_ms, o.end_ms, s.interval)
    ran_here: Counter[str] = Counter(  # maintenance runs started in the window, by host
        r["holder"].split("@")[0] for (_n, started), r in o.watch.runs.items()
        if o.start_ms <= started < o.end_ms)
    where_lost = ", ".join(f"{h} {n} (ran {ran_here[h]} maintenance jobs)"
                           for h, n in list(lost["by_host"].items())[:5])
    expected = o.window_s / s.interval
    lost_total = (lost["gaps"] + lost["edges"] + tick_errors
                  + (s.hosts * s.gpus - lost["gpus"] + lost["silent_gpus"]) * round(expected))
    rows_total = int(conn.execute(sa.text("SELECT count(*) FROM samples")).scalar() or 0)
    size = samples_bytes(conn)
    db_size = int(conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar()
                  or 0)
    partitioned = conn.execute(sa.text(
        "SELECT relkind = 'p' FROM pg_class WHERE oid = 'samples'::regclass")).scalar()
    per_row = size / rows_total if rows_total else float("nan")
    per_gpu_day = per_row * 86_400 / s.interval
    backend_cpu = sum(last - first for first, last in o.watch.backend_cpu.values())
    worker_cpu = sum(o.worker_cpu.values())
    gpus = s.hosts * s.gpus
    out = [
        Figure(BENCH, "sample rows written per second", round(lost["rows"] / o.window_s, 1),
               "rows/s", n=lost["rows"],
               note=f"{where}; {gpus} GPUs; {lost['min']}-{lost['max']} samples per GPU for "
                    f"{expected:.1f} expected; start-up of every host {o.startup_s:.1f} s"),
        latency_figure(BENCH, "tick commit (wait for the connection + insert + commit)",
                       commits, None,
                       f"each sampler's LogStore.write of a tick, {len(commits)} ticks; max "
                       f"{max(commits) * 1000:.1f} ms; {write_errors} writes refused (kept "
                       f"and retried)" if commits else "no writes"),
        latency_figure(BENCH, "tick read + classify (sampler's own timing)", reads, None,
                       f"{len(reads)} ticks; max {max(reads) * 1000:.1f} ms"
                       if reads else "no ticks"),
        Figure(BENCH, "lost ticks (gaps > 1.5 intervals, failed ticks, GPUs never seen)",
               lost_total, "ticks", budget="== 0", ok=lost_total == 0 and not crashed,
               note=f"gaps {lost['gaps']}, at the window's edges {lost['edges']}, failed "
                    f"ticks {tick_errors}, GPUs without samples in the window "
                    f"{s.hosts * s.gpus - lost['gpus'] + lost['silent_gpus']}; hosts whose "
                    f"service crashed {len(crashed)}; samples lost on {len(lost['by_host'])} "
                    f"hosts of {s.hosts}, of {sum(1 for h in ran_here if ran_here[h])} that ran "
                    f"maintenance jobs" + (f": {where_lost}" if where_lost else "")
                    + f"; sampler claims held at the window's end {o.watch.claims}"),
        Figure(BENCH, "PostgreSQL CPU, the bench database's server processes",
               round(100 * backend_cpu / o.window_s, 1), "% of a core",
               n=len(o.watch.backend_cpu),
               note="psutil over the pids pg_stat_activity lists for the database (read "
                    "every second); the whole server, every database and the background "
                    "writers: " + (f"{100 * o.server_cpu / o.window_s:.1f} % of a core"
                                   if o.server_cpu is not None else "not local, unknown")),
        Figure(BENCH, "WAL written per second (whole server)", round(o.wal_bytes / o.window_s),
               "B/s", note=f"{o.wal_bytes / 1e6:.1f} MB in {o.window_s:.0f} s, "
                           f"{o.wal_bytes / max(1, lost['rows']):.0f} B per sample row; "
                           "pg_current_wal_lsn() before and after: other databases on the "
                           "server count too"),
        Figure(BENCH, "disk per GPU-day (samples + indexes)", round(per_gpu_day / 1e6, 2),
               "MB", n=rows_total,
               note=f"{per_row:.1f} B per row all-in ({size / 1e6:.1f} MB for {rows_total:,} "
                    f"rows, {'partitioned' if partitioned else 'one table'}) x "
                    f"{86_400 / s.interval:,.0f} rows a GPU-day; whole database "
                    f"{db_size / 1e6:.1f} MB"),
    ]
    for path, seconds in o.asker.timings.items():
        failures = sum(n for k, n in o.asker.failures.items() if k.startswith(f"{path}:"))
        out.append(latency_figure(BENCH, f"GET {path} (api process, {gpus} GPUs)", seconds,
                                  None, f"asked every {s.api_every:g} s during the window; "
                                        f"{failures} failed" if seconds else
                                  f"no answers; {failures} failed"))
    maintenance, detail = maintenance_figures(s, o)
    out += maintenance
    threads = list(o.worker_threads.values())
    out += [
        Figure(BENCH, "connections to the bench database, peak", o.watch.peak_connections,
               "connections", budget=f"< max_connections ({o.limits['max_connections']})",
               ok=o.watch.peak_connections < o.limits["max_connections"],
               note=f"client backends in pg_stat_activity read every second (the bench's own "
                    f"one left out); whole server peak {o.watch.peak_server_connections}; "
                    + (f"through PgBouncer, pool_size {s.pool_size}" if s.pgbouncer
                       else "direct: one per sampler and the api's pool")),
        Figure(BENCH, "sampler CPU per host", round(100 * worker_cpu / o.window_s / s.hosts, 2),
               "% of a core",
               note=f"{len(o.worker_cpu)} processes: "
                    f"{100 * worker_cpu / o.window_s / len(o.worker_cpu):.1f} % of a core each "
                    f"on average; threads per process {min(threads, default=0)}-"
                    f"{max(threads, default=0)}, RSS "
                    f"{max(o.worker_rss.values(), default=0) / 1e6:.0f} MB at most; api "
                    f"process {100 * o.api_cpu / o.window_s:.1f} %; load average "
                    f"{o.load[0][0]:.2f} before, {o.load[1][0]:.2f} after"),
    ]
    extra = {
        "settings": {k: v for k, v in vars(s).items() if k != "pg_url"},
        "window": {"start_ms": o.start_ms, "end_ms": o.end_ms, "seconds": o.window_s},
        "connections": {**o.limits, "peak": o.watch.peak_connections,
                        "peak_server": o.watch.peak_server_connections},
        "load_average": {"before": o.load[0], "after": o.load[1]},
        "lost": lost, "crashed": crashed, "sampler_claims": o.watch.claims,
        "tick_commit_ms": {"p50": round(percentile(commits, 0.5) * 1000, 3),
                           "p99": round(percentile(commits, 0.99) * 1000, 3)}
        if commits else None,
        "maintenance": detail,
        "maintenance_ran_by_workers": dict(sum((Counter(r["maintenance_ran"])
                                                for r in o.reports.values()), Counter())),
        "maintenance_failed_by_workers": dict(sum((Counter(r["maintenance_failed"])
                                                   for r in o.reports.values()), Counter())),
        "samples": {"rows": rows_total, "bytes": size, "bytes_per_row": per_row,
                    "partitioned": bool(partitioned), "database_bytes": db_size},
        "workers": {"cpu_s": o.worker_cpu, "threads": o.worker_threads, "rss": o.worker_rss},
        "api_failures": dict(o.asker.failures), "watch_errors": o.watch.errors,
        "unsaved": {w: r["unsaved"] for w, r in o.reports.items() if r["unsaved"]},
        "server_cpu_s": o.server_cpu, "bench_database_cpu_s": backend_cpu,
        "api_mean_ms": {p: statistics.fmean(t) * 1000 for p, t in o.asker.timings.items() if t},
    }
    return out, extra


# -- the command --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-url", default=os.environ.get("GPUHISTORY_TEST_POSTGRES",
                                                           DEFAULT_PG),
                        help="a PostgreSQL server (any database on it); the bench creates "
                             "its own database there")
    parser.add_argument("--hosts", type=int, default=125)
    parser.add_argument("--gpus", type=int, default=8, help="simulated GPUs per host")
    parser.add_argument("--processes", type=int, default=5,
                        help="processes the hosts are dealt into")
    parser.add_argument("--seconds", type=float, default=600, help="the measured window")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--pgbouncer", action="store_true",
                        help="connect everything through a pgbouncer in transaction mode")
    parser.add_argument("--pool-size", type=int, default=20,
                        help="PgBouncer's server connections (with --pgbouncer)")
    parser.add_argument("--api-every", type=float, default=2.0,
                        help="seconds between rounds of API questions")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--out", type=Path, help="the JSON file (default: docs/results/"
                                                 "fleet-scale-<hosts>x<gpus>-<seconds>s.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.db, args.worker.split(","), args.gpus, args.interval, args.worker_out)
        return 0
    for name in ("hosts", "gpus", "processes", "pool_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("seconds", "interval", "api_every"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be more than 0")
    if args.pgbouncer and pgbouncer_binary() is None:
        parser.error("--pgbouncer: pgbouncer is not installed (Debian package pgbouncer)")
    settings = Settings(args.pg_url, args.hosts, args.gpus, args.processes, args.seconds,
                        args.interval, args.pgbouncer, args.pool_size, args.api_every,
                        args.keep)
    started = datetime.now(UTC)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"fleet-scale-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        figs, extra = run(settings, workdir)
    except BaseException:
        if any(workdir.iterdir()):
            print(f"fleet_scale: the processes' logs are in {workdir}", file=sys.stderr)
        else:  # refused before anything started
            workdir.rmdir()
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    print(render(figs))
    engine = sa.create_engine(args.pg_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        server = conn.execute(sa.text("SELECT version()")).scalar()
    engine.dispose()
    result = {"date": started.isoformat(timespec="seconds"),
              "command": " ".join(["python -m bench.fleet_scale", *sys.argv[1:]]),
              "machine": {**machine(), "postgresql": server}, **extra,
              "figures": [f.to_dict() for f in figs]}
    out = args.out or RESULTS / (f"fleet-scale-{args.hosts}x{args.gpus}-{args.seconds:g}s"
                                 f"{'-pgbouncer' if args.pgbouncer else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
