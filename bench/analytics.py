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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import Figure, latency_figure, percentile, time_calls
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
        self.context = context
        self.app = create_app(context)
        self.server = create_server(self.app, host="127.0.0.1", port=0, threads=4)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.server.effective_port,
                                               timeout=60)

    def get(self, path: str) -> Any:
        return json.loads(self.get_bytes(path))

    def get_bytes(self, path: str) -> bytes:
        """The answer's body, not parsed (what a server-side figure should time)."""
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
        return body

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
        figures += bulk_answers(api, raw, end_ms, rounds=20 if quick else 60)
    finally:
        raw.close()
        api.close()
    return figures


# -- bulk answers beside their floors, interleaved in one run ------------------------------

def interleaved(calls: dict[str, Callable[[], object]], rounds: int,
                warmup: int = 3) -> dict[str, list[float]]:
    """Seconds taken by each call, in turns (a, b, c, a, b, c, ...), so that every one of
    them sees the same load on a shared machine: compare their ratios, not their times."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return times


def _ratio_figures(name: str, times: dict[str, list[float]], ours: str, floor: str,
                   budget: float) -> list[Figure]:
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    figures = [latency_figure("analytics", f"{name}: {label}", seconds, None,
                              f"interleaved with the others of '{name}'; load {load}")
               for label, seconds in times.items()]
    ratio = percentile(times[ours], 0.5) / percentile(times[floor], 0.5)
    figures.append(Figure("analytics", f"{name}: {ours} / {floor} (p50)", round(ratio, 2),
                          "x", budget=f"<= {budget}x", ok=ratio <= budget,
                          note=f"same run, interleaved; load average {load}"))
    return figures


def bulk_answers(api: Api, raw: sqlite3.Connection, end_ms: int,
                 rounds: int) -> list[Figure]:
    """The post-mortem of the longest incident and a 500-point history over the last day,
    each three ways in turns: over HTTP (the body not parsed), the function in process
    (document and JSON bytes), and the floor: for the post-mortem the context samples'
    SQL, a dict per row and ``json.dumps``; for the history its own SQL statement alone.
    Budgets (issue: bulk answers): post-mortem <= 2x its floor, history <= 2x its SQL."""
    from gpuhistory.analytics.history import (
        _history_rows,
        history_buckets_doc,
        history_statement,
    )
    from gpuhistory.analytics.postmortem import context_window, get_incident, postmortem
    from gpuhistory.analytics.rollups import watermarks
    from gpuhistory.api.fastjson import dumps
    from gpuhistory.storage.queries import gpu_row, latest_sample_of
    from gpuhistory.storage.schema import gpus

    figures: list[Figure] = []
    config = api.context.config()
    longest = raw.execute("SELECT id FROM incidents WHERE end_ms IS NOT NULL "
                          "ORDER BY end_ms - start_ms DESC LIMIT 1").fetchone()
    columns = [r[1] for r in raw.execute("PRAGMA table_info(samples)")]
    with api.engine.connect() as conn, api.app.app_context():
        if longest is not None:
            row = get_incident(conn, longest[0])
            assert row is not None
            since, until = context_window(row, config, end_ms)
            manager = api.context.leases
            assert manager is not None

            def postmortem_bytes() -> bytes:
                leases = [lease.to_dict(end_ms) for lease in
                          manager.active_between(row.gpu_id, row.start_ms, row.end_ms)]
                return dumps(postmortem(conn, row, config, end_ms, leases, samples_json=True))

            def floor() -> str:
                rows = raw.execute("SELECT * FROM samples WHERE gpu_id=? AND ts_ms BETWEEN ? "
                                   "AND ? ORDER BY ts_ms", (row.gpu_id, since, until))
                return json.dumps([dict(zip(columns, r, strict=True)) for r in rows])

            size = len(postmortem_bytes())
            count = raw.execute("SELECT count(*) FROM samples WHERE gpu_id=? AND ts_ms "
                                "BETWEEN ? AND ?", (row.gpu_id, since, until)).fetchone()[0]
            name = (f"post-mortem, {(row.end_ms - row.start_ms) / 60_000:.0f}-min incident, "
                    f"{count:,} samples, {size / 1e6:.2f} MB")
            times = interleaved({
                "HTTP": lambda: api.get_bytes(f"/api/gpu/incidents/{row.id}"),
                "in process": postmortem_bytes,
                "floor: SQL + dicts + json.dumps": floor}, rounds)
            figures += _ratio_figures(name, times, "in process",
                                      "floor: SQL + dicts + json.dumps", 2.0)
            figures.append(Figure("analytics", f"{name}: HTTP / floor (p50)", round(
                percentile(times["HTTP"], 0.5)
                / percentile(times["floor: SQL + dicts + json.dumps"], 0.5), 2), "x",
                note="the same rounds; HTTP adds waitress, Flask, validation and the socket"))
        card = gpu_row(conn.execute(sa.select(gpus).where(gpus.c.gpu_index == 1)).one())
        entry = latest_sample_of(conn, card)
        since = end_ms - min(86_400_000, end_ms - START_MS)
        plan, _, rows = _history_rows(conn, card.id, since, end_ms, "auto", 500)
        statement = history_statement(card.id, plan, watermarks(conn, card.id))
        assert statement is not None
        name = f"500-point history, {plan.source} source, {len(rows)} buckets"
        times = interleaved({
            "HTTP": lambda: api.get_bytes(
                f"/api/gpu/metrics/history?gpu_id=1&resolution=auto&points=500"
                f"&since={iso(since)}&until={iso(end_ms)}"),
            "in process": lambda: dumps(history_buckets_doc(
                conn, entry, since, end_ms, "auto", 500, buckets_json=True)),
            "floor: its SQL": lambda: conn.execute(*statement).all()}, rounds)
        figures += _ratio_figures(name, times, "in process", "floor: its SQL", 2.0)
    return figures
