"""Storage and queries beside Prometheus: the same day of 8 GPUs at 1 Hz in both stores.

One day, 8 GPUs, 1 Hz (691,200 GPU-samples) is built by bench/month.py through the real
pipeline into a fresh SQLite file. Its ``samples`` table is exported to OpenMetrics text
with the four fields a Prometheus user would scrape from a dcgm-exporter-like exporter
(temperature, memory used, utilization, power: 2,764,800 metric-samples) and turned into
TSDB blocks with ``promtool tsdb create-blocks-from openmetrics``. A ``prometheus`` server
(no scrape targets) then serves those blocks on loopback while gpuhistory's API serves the
SQLite file; the same questions are asked of both over keep-alive ``http.client``.

Needs ``prometheus`` and ``promtool`` on PATH (Debian: ``apt-get install prometheus``);
without them the benchmark is skipped. DESIGN §6 quotes Prometheus 2.42 on this machine:
trend 5 min 0.69 ms, latest of all GPUs 1.15 ms, 500-point day 4.8 ms, ≈ 1.6 B per
metric-sample.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import Figure, SkipBenchmark, latency_figure, time_calls
from bench.month import DATA, GPUS, HOST, START_MS, build

NAME = "prometheus"
DAY_S = 86_400
# (metric, samples column, help, scale): what dcgm-exporter calls DCGM_FI_DEV_GPU_TEMP,
# DCGM_FI_DEV_FB_USED (MiB), DCGM_FI_DEV_GPU_UTIL (%) and DCGM_FI_DEV_POWER_USAGE (W).
METRICS = (
    ("gpu_temperature_celsius", "temperature_c", "GPU temperature.", None),
    ("gpu_memory_used_mib", "memory_used_mib", "Frame buffer memory used, MiB.", None),
    ("gpu_utilization_percent", "utilization_pct", "GPU utilization, percent.", None),
    ("gpu_power_watts", "power_dw", "Power draw, watts.", 10),
)
CONFIG = "global:\n  scrape_interval: 15s\nscrape_configs: []\n"


def tools() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not prometheus or not promtool:
        missing = [n for n, p in (("prometheus", prometheus), ("promtool", promtool)) if not p]
        raise SkipBenchmark(f"{' and '.join(missing)} not on PATH (Debian/Ubuntu: "
                            "apt-get install prometheus); the Prometheus comparison needs both")
    return prometheus, promtool


def version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].strip() if first else "unknown"


# -- export and blocks ----------------------------------------------------------------------

def openmetrics_lines(db: Path) -> Iterator[str]:
    """The samples table as OpenMetrics text: one family per metric, one series per GPU."""
    conn = sqlite3.connect(db)
    try:
        gpus = conn.execute("SELECT id, gpu_index, uuid FROM gpus ORDER BY gpu_index").fetchall()
        for metric, column, help_text, scale in METRICS:
            yield f"# HELP {metric} {help_text}\n# TYPE {metric} gauge\n"
            for gpu_id, index, uuid in gpus:
                labels = f'{metric}{{gpu="{index}",uuid="{uuid}",Hostname="{HOST}"}} '
                rows = conn.execute(f"SELECT ts_ms, {column} FROM samples WHERE gpu_id=? "
                                    f"AND {column} IS NOT NULL ORDER BY ts_ms", (gpu_id,))
                if scale is None:
                    yield from (f"{labels}{v} {ts // 1000}.{ts % 1000:03d}\n" for ts, v in rows)
                else:
                    yield from (f"{labels}{v / scale!r} {ts // 1000}.{ts % 1000:03d}\n"
                                for ts, v in rows)
        yield "# EOF\n"
    finally:
        conn.close()


def export(db: Path, out: Path) -> int:
    """Write the OpenMetrics file; returns the metric-samples written."""
    count = 0
    with out.open("w", buffering=1 << 20) as f:
        for line in openmetrics_lines(db):
            if not line.startswith("#"):
                count += 1
            f.write(line)
    return count


def max_block_flag(promtool: str) -> list[str]:
    """``--max-block-duration=24h`` where this promtool has it (2.42's does not: 2 h blocks)."""
    out = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "--help"],
                         capture_output=True, text=True, timeout=30)
    return ["--max-block-duration=24h"] if "max-block-duration" in out.stdout + out.stderr \
        else []


def blocks(tsdb: Path) -> list[dict[str, Any]]:
    """meta.json of every block in the data dir, with its bytes (chunks, index)."""
    out = []
    for meta_path in sorted(tsdb.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        block = meta_path.parent
        chunks = sum(p.stat().st_size for p in (block / "chunks").glob("*"))
        meta["bytes"] = sum(p.stat().st_size for p in block.rglob("*") if p.is_file())
        meta["chunk_bytes"] = chunks
        meta["index_bytes"] = (block / "index").stat().st_size
        out.append(meta)
    return out


def describe(metas: list[dict[str, Any]]) -> str:
    """'3 blocks of 6 h (level 2), 3 of 2 h (level 1)'."""
    kinds: dict[tuple[float, int], int] = {}
    for m in metas:
        key = (round((m["maxTime"] - m["minTime"]) / 3_600_000, 1), m["compaction"]["level"])
        kinds[key] = kinds.get(key, 0) + 1
    parts = [f"{count} of {hours:g} h (level {level})"
             for (hours, level), count in sorted(kinds.items(), reverse=True)]
    if len(parts) == 1:
        return f"{len(metas)} blocks {parts[0].split(' ', 1)[1]}"
    return f"{len(metas)} blocks: " + ", ".join(parts)


def db_bytes(db: Path) -> int:
    """The database file after a checkpoint (the WAL folded in)."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(os.path.getsize(f"{db}{s}") for s in ("", "-wal") if os.path.exists(f"{db}{s}"))


def wait_compaction(tsdb: Path, prom: Prometheus, limit_s: float) -> list[dict[str, Any]]:
    """Prometheus compacts about a minute after start; wait until the blocks settle."""
    deadline = time.monotonic() + limit_s
    metas = blocks(tsdb)
    while time.monotonic() < deadline and all(m["compaction"]["level"] == 1 for m in metas):
        if prom.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited ({prom.proc.returncode}): {prom.tail()}")
        time.sleep(0.5)
        metas = blocks(tsdb)
    seen = [m["ulid"] for m in metas]
    while time.monotonic() < deadline:  # settled: the same blocks for 3 s
        time.sleep(3)
        metas = blocks(tsdb)
        if [m["ulid"] for m in metas] == seen:
            break
        seen = [m["ulid"] for m in metas]
    return metas


def du(path: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of every file under ``path``."""
    apparent = allocated = 0
    for p in path.rglob("*"):
        if p.is_file():
            st = p.stat()
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


# -- the two servers ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A prometheus server on loopback over existing blocks; always stopped by close()."""

    def __init__(self, binary: str, tsdb: Path, work: Path) -> None:
        self.port = free_port()
        config = work / "prometheus.yml"
        config.write_text(CONFIG)
        self.log_path = work / "prometheus.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=3650d"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        self.started = time.perf_counter()
        self.ready_s = self._wait_ready(60)

    def _wait_ready(self, limit_s: float) -> float:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}): {self.tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/-/ready")
                response = conn.getresponse()
                response.read()
                conn.close()
                if response.status == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready after {limit_s:.0f} s: {self.tail()}")

    def tail(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")[-600:]

    def get(self, path: str, **params: Any) -> Any:
        self.conn.request("GET", f"{path}?{urllib.parse.urlencode(params)}")
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"prometheus {path} {params}: {response.status} {body[:300]!r}")
        doc = json.loads(body)
        if doc.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {body[:300]!r}")
        return doc["data"]

    def query(self, promql: str, at_s: float) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=promql, time=f"{at_s:.3f}")["result"]

    def query_range(self, promql: str, start_s: float, end_s: float,
                    step_s: float) -> list[dict[str, Any]]:
        return self.get("/api/v1/query_range", query=promql, start=f"{start_s:.3f}",
                        end=f"{end_s:.3f}", step=f"{step_s:g}")["result"]

    def close(self) -> None:
        self.conn.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class Api:
    """gpuhistory's API on the SQLite file (waitress thread, keep-alive http.client)."""

    def __init__(self, db: Path, now_ms: int) -> None:
        from waitress.server import create_server

        from gpuhistory.analytics.rollups import RollupJob
        from gpuhistory.api.app import create_app
        from gpuhistory.clock import FakeClock
        from gpuhistory.config.layers import load_static
        from gpuhistory.config.store import ConfigStore
        from gpuhistory.context import ServiceContext
        from gpuhistory.leases.manager import LeaseManager
        from gpuhistory.storage.engine import make_engine, upgrade

        self.engine = make_engine(db)
        upgrade(self.engine)
        clock = FakeClock(now_ms)
        started = time.perf_counter()
        rollups = RollupJob(self.engine, clock)
        while rollups.run():
            pass
        self.rollups_s = time.perf_counter() - started
        config = ConfigStore(self.engine, load_static(environ={}), clock)
        context = ServiceContext(engine=self.engine, host=HOST, clock=clock, config=config,
                                 config_store=config,
                                 leases=LeaseManager(self.engine, HOST, clock, config))
        self.server = create_server(create_app(context), host="127.0.0.1", port=0, threads=4)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.server.effective_port,
                                               timeout=60)

    def get(self, path: str) -> Any:
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {body[:300]!r}")
        return json.loads(body)

    def close(self) -> None:
        from gpuhistory.service import stop_waitress

        self.conn.close()
        stop_waitress(self.server)
        self.thread.join(5)
        self.engine.dispose()


def iso(ms: int) -> str:
    from gpuhistory.clock import iso_utc

    return iso_utc(ms)  # type: ignore[return-value]


# -- the benchmark --------------------------------------------------------------------------

def run(quick: bool) -> list[Figure]:
    prometheus_bin, promtool = tools()
    n = 30 if quick else 300
    shared = "shared machine; "
    figures: list[Figure] = []

    def fig(name: str, value: float, unit: str, note: str = "", **kw: Any) -> None:
        figures.append(Figure(NAME, name, value, unit, note=note, **kw))

    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prometheus-", dir=DATA) as tmp:
        work = Path(tmp)
        db, text, tsdb = work / "log-1d.db", work / "samples.om", work / "tsdb"
        end_ms = START_MS + DAY_S * 1000
        end_s = end_ms / 1000

        # ingest: the same day into both stores
        built = build(db, 1)
        gpu_samples = int(built["samples"])
        fig("gpuhistory: build 1 day, 8 GPUs through the pipeline", round(built["seconds"], 2),
            "s", note=f"{gpu_samples:,} GPU-samples, {gpu_samples / built['seconds']:,.0f}/s; "
                      "includes synthesizing the readings, classification, transitions and "
                      "the SQLite writes (one transaction)")
        t0 = time.perf_counter()
        metric_samples = export(db, text)
        export_s = time.perf_counter() - t0
        fig("prometheus: export samples table to OpenMetrics (ours, Python)", round(export_s, 2),
            "s", note=f"{metric_samples:,} metric-samples ({len(METRICS)} fields x "
                      f"{gpu_samples:,}), {text.stat().st_size / 1e6:.0f} MB of text; not "
                      "part of either store's ingest")
        flag = max_block_flag(promtool)
        t0 = time.perf_counter()
        done = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "-q",
                               *flag, str(text), str(tsdb)],
                              capture_output=True, text=True, timeout=600)
        promtool_s = time.perf_counter() - t0
        if done.returncode:
            raise RuntimeError(f"promtool failed ({done.returncode}): "
                               f"{(done.stdout + done.stderr)[-600:]}")
        text.unlink()
        metas = blocks(tsdb)
        stored = sum(m["stats"]["numSamples"] for m in metas)
        layout = describe(metas) + ("" if flag else
                                    " (promtool 2.42 has no --max-block-duration: 2 h blocks)")
        fig("prometheus: promtool create-blocks-from openmetrics, 1 day", round(promtool_s, 2),
            "s", note=f"{metric_samples / promtool_s:,.0f} metric-samples/s, "
                      f"{gpu_samples / promtool_s:,.0f} GPU-ticks/s; parses the text (2.42 scans "
                      f"it once per block) and writes {layout}; excludes the export")

        # bytes per sample
        apparent, allocated = du(tsdb)
        chunk_bytes = sum(m["chunk_bytes"] for m in metas)
        index_bytes = sum(m["index_bytes"] for m in metas)
        if stored != metric_samples:
            raise RuntimeError(f"TSDB holds {stored} samples, exported {metric_samples}")
        fig("prometheus: TSDB bytes per metric-sample", round(apparent / metric_samples, 3),
            "B", n=metric_samples,
            note=f"du of the data dir after block creation: {apparent / 1e6:.2f} MB apparent, "
                 f"{allocated / 1e6:.2f} MB allocated ({layout}); chunks "
                 f"{chunk_bytes / metric_samples:.3f} B + index and meta; Gorilla "
                 "(delta-of-delta timestamps, XOR values) compression")
        fig("prometheus: TSDB bytes per GPU-tick (4 fields)", round(apparent / gpu_samples, 2),
            "B", n=gpu_samples,
            note=f"same bytes / {gpu_samples:,} GPU-ticks; holds only temperature, memory used, "
                 "utilization and power (index "
                 f"{index_bytes / 1e3:.0f} kB, chunks {chunk_bytes / 1e6:.2f} MB)")
        with sqlite3.connect(db) as raw:
            rows = raw.execute("SELECT count(*) FROM samples").fetchone()[0]
            table = raw.execute("SELECT sum(pgsize) FROM dbstat WHERE name='samples'"
                                ).fetchone()[0]
        file_bytes = db_bytes(db)
        fig("gpuhistory: samples table bytes per GPU-sample (dbstat)", round(table / rows, 2),
            "B", n=rows, budget="<= 32 B", ok=table / rows <= 32,
            note=f"a whole row: key + 11 values (13 columns; the 4 exported fields alone would "
                 f"be {table / rows / 4:.1f} B per metric-sample if the row held only them, "
                 f"which it does not); {table / 1e6:.2f} MB")
        fig("gpuhistory: whole file bytes per GPU-sample", round(file_bytes / rows, 2), "B",
            n=rows, note=f"{file_bytes / 1e6:.2f} MB before rollups: samples, transitions, "
                         f"events, indexes; Prometheus's 4-field TSDB is "
                         f"{file_bytes / apparent:.1f}x smaller; it wins on storage")

        prom = api = None
        try:
            prom = Prometheus(prometheus_bin, tsdb, work)
            fig("prometheus: server start until /-/ready", round(prom.ready_s, 2), "s",
                note=f"{len(metas)} blocks opened")
            api = Api(db, end_ms)
            rolled = db_bytes(db)
            fig("gpuhistory: rollup job over the day", round(api.rollups_s, 2), "s",
                note=f"1-min and 1-h rollups, run until it returns 0; file grows to "
                     f"{rolled / 1e6:.2f} MB ({rolled / rows:.1f} B per GPU-sample)")
            if quick:
                on_blocks = (f"promtool's blocks ({describe(metas)}), not yet compacted by "
                           "Prometheus (--quick does not wait the minute)")
            else:
                compacted = wait_compaction(tsdb, prom, 150)
                waited = time.perf_counter() - prom.started
                size = sum(m["bytes"] for m in compacted)
                on_blocks = f"after Prometheus's own compaction ({describe(compacted)})"
                fig("prometheus: TSDB bytes per metric-sample after its compaction",
                    round(size / metric_samples, 3), "B", n=metric_samples,
                    note=f"blocks only, {size / 1e6:.2f} MB; {describe(compacted)}, "
                         f"{waited:.0f} s after start (the newest 2 h blocks are left for "
                         "later); the Prometheus queries below ran on these blocks")
            figures.extend(questions(prom, api, end_ms, end_s, n, shared, on_blocks))
        finally:
            if prom is not None:
                prom.close()
            if api is not None:
                api.close()
    return figures


def questions(prom: Prometheus, api: Api, end_ms: int, end_s: float, n: int,
              shared: str, on_blocks: str) -> list[Figure]:
    out: list[Figure] = []

    def theirs(label: str, call: Any, promql: str, note: str) -> None:
        out.append(latency_figure(NAME, f"prometheus: {label}", time_calls(call, n), None,
                                  shared + f"{promql}; {note}; {on_blocks}"))

    def ours(label: str, path: str, note: str, budget: float | None,
             versus: Figure) -> None:
        figure = latency_figure(NAME, f"gpuhistory: {label}",
                                time_calls(lambda: api.get(path), n), budget,
                                shared + f"GET {path.split('?')[0]}; {note}")
        ratio = (figure.p50 or 0) / (versus.p50 or 1)
        figure.note += (f"; Prometheus wins, p50 {ratio:.1f}x lower ({versus.name})"
                        if ratio > 1 else f"; ours is {1 / ratio:.1f}x lower at p50")
        out.append(figure)

    until = iso(end_ms)
    for minutes, fn, budget in ((5, "max", 1.0), (60, "avg", None)):
        label = f"{fn} temperature GPU 1, last {minutes} min"
        promql = f'{fn}_over_time(gpu_temperature_celsius{{gpu="1"}}[{minutes}m])'
        path = (f"/api/gpu/temperature/trend?gpu_id=1&duration_minutes={minutes}"
                f"&until={until}")
        value = float(prom.query(promql, end_s)[0]["value"][1])
        mine = api.get(path)[fn]
        same = "the same value" if abs(value - mine) < 1e-3 else "VALUES DIFFER"
        theirs(label, lambda q=promql: prom.query(q, end_s), promql,
               f"instant query at the log's end = {value:g}")
        ours(label, path, f"trend: min, max, avg, first, last, slope and a threshold forecast; "
                          f"{fn} = {mine:g} ({same})", budget, out[-1])

    label = "500-step range over 1 day, GPU 1"
    step = DAY_S / 500
    since = iso(end_ms - DAY_S * 1000)
    path = (f"/api/gpu/metrics/history?gpu_id=1&resolution=auto&points=500&since={since}"
            f"&until={until}")
    for promql, what in (('gpu_temperature_celsius{gpu="1"}', "one field, one point per step "
                          "(the last sample within the 5 min lookback): what a Grafana panel "
                          "asks"),
                         (f'avg_over_time(gpu_temperature_celsius{{gpu="1"}}[{step * 1000:.0f}ms])',
                          "one field, a true per-step average over every sample, like our "
                          "buckets")):
        points = len(prom.query_range(promql, end_s - DAY_S, end_s, step)[0]["values"])
        theirs(label + (" (avg_over_time)" if "avg" in promql else ""),
               lambda q=promql: prom.query_range(q, end_s - DAY_S, end_s, step), promql,
               f"query_range step {step:g} s -> {points} points; {what}")
    doc = api.get(path)
    ours(label, path, f"{doc['count']} buckets of {doc['bucket_seconds']:g} s from "
                      f"{doc['resolution']} rollups (whole minutes, so not exactly 500), "
                      "min/max/avg of every field", 5.0, out[-1])

    label = f"latest of all {GPUS} GPUs"
    for promql, what in (("gpu_temperature_celsius", "one field"),
                         ('{__name__=~"gpu_.+"}', "all 4 fields")):
        series = len(prom.query(promql, end_s))
        theirs(label + ("" if what == "one field" else ", all 4 fields"),
               lambda q=promql: prom.query(q, end_s), promql,
               f"instant query at the log's end -> {series} series; {what}")
    status = api.get("/api/gpu/status/all")
    count = len(status) if isinstance(status, list) else len(status.get("gpus", status))
    ours(label, "/api/gpu/status/all", f"{count} GPUs, each with all fields, state, throttle "
                                       "reasons, leases and config context", 1.0, out[-1])
    return out
