"""The questions users come for, on a large log, over HTTP — beside raw sqlite3 as the floor.

A 30-day, 8-GPU, 1 Hz log (20.7 M samples; 1 day with --quick) built by bench/month.py
through the real pipeline. Each question is asked through the API (waitress, keep-alive
http.client) and the nearest equivalent is run on raw ``sqlite3`` against the same file.
DESIGN §6 budgets: trend 5 min / 24 h p50 <= 1 / 5 ms; latest status of all GPUs <= 1 ms;
500-point history over 1 day / 30 days <= 5 / 15 ms.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import Figure, latency_figure, time_calls
from bench.month import GPUS, HOST, START_MS, month_log
from gpuhistory.analytics.incidents import IncidentDetector
from gpuhistory.analytics.rollups import RollupJob
from gpuhistory.api.app import create_app
from gpuhistory.clock import FakeClock
from gpuhistory.config.layers import load_static
from gpuhistory.config.store import ConfigStore
from gpuhistory.context import ServiceContext
from gpuhistory.leases.manager import LeaseManager
from gpuhistory.service import stop_waitress
from gpuhistory.storage.engine import make_engine, upgrade


class Api:
    def __init__(self, db: Path, now_ms: int) -> None:
        from waitress.server import create_server

        self.engine = make_engine(db)
        upgrade(self.engine)  # a log built by an older version gains the analytics tables
        clock = FakeClock(now_ms)
        config = ConfigStore(self.engine, load_static(environ={}), clock)
        self.catch_up = catch_up(self.engine, clock, config)
        context = ServiceContext(engine=self.engine, host=HOST, clock=clock, config=config,
                                 config_store=config,
                                 leases=LeaseManager(self.engine, HOST, clock, config))
        self.app = create_app(context)
        self.server = create_server(self.app, host="127.0.0.1", port=0, threads=4)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.server.effective_port,
                                               timeout=60)

    def get(self, path: str) -> Any:
        try:
            self.conn.request("GET", path)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):
            self.conn.close()  # an idle keep-alive connection closed by the server: reopen
            self.conn.request("GET", path)
            response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {body[:300]!r}")
        return json.loads(body)

    def close(self) -> None:
        stop_waitress(self.server)
        self.thread.join(5)
        self.engine.dispose()


def catch_up(engine: sa.Engine, clock: FakeClock, config: ConfigStore) -> dict[str, float]:
    """Bring rollups and incident detection up to date (the service's jobs, run to the end)."""
    started = time.perf_counter()
    rollups = RollupJob(engine, clock)
    while rollups.run(max_seconds=60):
        pass
    rolled = time.perf_counter() - started
    detector = IncidentDetector(engine, clock, config)
    detector.run()
    return {"rollups_s": rolled, "incidents_s": time.perf_counter() - started - rolled}


def iso(ms: int) -> str:
    from gpuhistory.clock import iso_utc

    return iso_utc(ms)  # type: ignore[return-value]


def run(quick: bool) -> list[Figure]:
    days = 1 if quick else 30
    db = month_log(days)
    end_ms = START_MS + days * 86_400_000
    n = 50 if quick else 300
    api = Api(db, end_ms)
    raw = sqlite3.connect(db)
    figures: list[Figure] = []
    rows = raw.execute("SELECT count(*) FROM samples").fetchone()[0]
    size = db.stat().st_size
    figures.append(Figure("analytics", f"log: {days} d x {GPUS} GPUs at 1 Hz", rows, "samples",
                          note=f"database {size / 1e9:.2f} GB, {size / rows:.1f} B per sample"))
    figures.append(Figure("analytics", "catch-up: rollups, then incident detection",
                          round(api.catch_up["rollups_s"] + api.catch_up["incidents_s"], 1), "s",
                          note=f"rollups {api.catch_up['rollups_s']:.1f} s, incidents "
                               f"{api.catch_up['incidents_s']:.1f} s (once, on a fresh log)"))
    gpu1 = raw.execute("SELECT id FROM gpus WHERE gpu_index=1").fetchone()[0]
    try:
        def ours(name: str, path: str, budget: float | None, note: str = "") -> None:
            figures.append(latency_figure("analytics", name, time_calls(lambda: api.get(path), n),
                                          budget, note))

        def floor(name: str, sql: str, args: tuple, runs: int = n) -> None:
            figures.append(latency_figure(
                "analytics", name,
                time_calls(lambda: raw.execute(sql, args).fetchall(), runs, warmup=1),
                None, "raw sqlite3, same file, no HTTP"))

        ours("status of all GPUs (HTTP)", "/api/gpu/status/all", 1.0)
        gpu_ids = [r[0] for r in raw.execute("SELECT id FROM gpus ORDER BY gpu_index")]

        def newest_each() -> None:
            for gpu_id in gpu_ids:
                raw.execute("SELECT * FROM samples WHERE gpu_id=? ORDER BY ts_ms DESC LIMIT 1",
                            (gpu_id,)).fetchall()

        figures.append(latency_figure("analytics", "floor: newest sample of each GPU (sqlite3)",
                                      time_calls(newest_each, n), None,
                                      "one key seek per GPU, raw sqlite3, no HTTP"))
        for minutes, budget in ((5, 1.0), (60, None), (1440, 5.0)):
            ours(f"trend over {minutes} min (HTTP)",
                 f"/api/gpu/temperature/trend?gpu_id=1&duration_minutes={minutes}", budget)
            floor(f"floor: aggregates over {minutes} min (sqlite3)",
                  "SELECT count(*), min(temperature_c), max(temperature_c), "
                  "avg(temperature_c) FROM samples WHERE gpu_id=? AND ts_ms BETWEEN ? AND ?",
                  (gpu1, end_ms - minutes * 60_000, end_ms))
        past = iso(end_ms - 86_400_000 // 2)
        ours("status of all GPUs at a past time (HTTP)", f"/api/gpu/status/all?at={past}", None)
        ours("throttle advice at a past time (HTTP)",
             f"/api/gpu/throttle/status?gpu_id=1&at={past}", None)
        for label, span_days, budget in (("1 day", 1, 5.0), (f"{days} days", days, 15.0)):
            if span_days > days:
                continue
            since = iso(end_ms - span_days * 86_400_000)
            path = (f"/api/gpu/metrics/history?gpu_id=1&resolution=auto&points=500"
                    f"&since={since}&until={iso(end_ms)}")
            try:
                api.get(path)
            except RuntimeError as exc:
                figures.append(Figure("analytics", f"500-point history over {label}", 0, "",
                                      note=f"not available: {exc}"[:200]))
                continue
            ours(f"500-point history over {label} (HTTP)", path, budget)
            width = span_days * 86_400_000 // 500
            floor(f"floor: 500 buckets over {label} from raw samples (sqlite3)",
                  "SELECT ts_ms / ? AS b, min(temperature_c), max(temperature_c), "
                  "avg(temperature_c) FROM samples WHERE gpu_id=? AND ts_ms BETWEEN ? AND ? "
                  "GROUP BY b", (width, gpu1, end_ms - span_days * 86_400_000, end_ms),
                  runs=n if span_days <= 1 else 5)  # a month of raw rows takes seconds
        try:
            api.get("/api/gpu/incidents?limit=1000")
            ours(f"incident list over {days} days (HTTP)", "/api/gpu/incidents?limit=1000",
                 None)
        except RuntimeError as exc:
            figures.append(Figure("analytics", "incident list", 0, "",
                                  note=f"not available: {exc}"[:200]))
    finally:
        raw.close()
        api.close()
    return figures
