"""Which WSGI server: waitress (the service's) against granian, on the app's real routes.

Both serve the same ``api``-role app (``bench/wsgi_app.py``) on the same SQLite file (the
bundled 4-GPU trace imported), each in its own process with 8 threads, side by side. Per
round, for each route, each server in turn: one keep-alive client's p50, then 16 clients'
throughput. Rounds alternate which server goes first, so drift in the machine's load falls
on both. Routes: the empty route (the floor), ``status/all`` and a 500-point history.

Granian is a peer, not a dependency: without it (``pip install granian``) this benchmark
is skipped.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.common import Figure, SkipBenchmark, percentile
from bench.http_api import Http
from bench.wsgi_app import HOST, THREADS

START_MS = 1_767_225_600_000
CLIENTS = 16
ROUTES = {
    "empty": "/bench/empty",
    "status/all": f"/api/gpu/status/all?host={HOST}",
    "history 500": f"/api/gpu/metrics/history?gpu_id=0&host={HOST}&points=500"
                   "&since=2026-01-01T00:00:00Z&until=2026-01-01T00:05:00Z",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(folder: Path) -> Path:
    from gpuhistory.formats.trace_csv import bundled_trace
    from gpuhistory.importer import import_file
    from gpuhistory.storage.engine import make_engine, upgrade

    db = folder / "wsgi.db"
    engine = make_engine(db)
    upgrade(engine)
    import_file(engine, bundled_trace(), start_ms=START_MS, host=HOST)
    engine.dispose()
    return db


def _start(server: str, db: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "GPUHISTORY_BENCH_DB": str(db)}
    if server == "waitress":
        argv = [sys.executable, "-m", "bench.wsgi_app", "--port", str(port)]
    else:
        argv = [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1", "--blocking-threads", str(THREADS),
                "--no-ws", "--log-level", "warning", "bench.wsgi_app:application"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server} exited: {proc.stderr.read().decode()[-2000:]}"
                               if proc.stderr else f"{server} exited")
        try:
            if requests.get(url + ROUTES["empty"], timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{server} did not start")


def _p50(url: str, path: str, n: int) -> float:
    client = Http(url)
    for _ in range(20):
        status, _ = client.request("GET", path)
        assert status == 200, (path, status)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.request("GET", path)
        times.append(time.perf_counter() - t0)
    return percentile(times, 0.5) * 1000


def _throughput(url: str, path: str, per_client: int) -> float:
    barrier = threading.Barrier(CLIENTS + 1)
    failures: list[int] = []

    def client() -> None:
        http = Http(url)
        barrier.wait()
        for _ in range(per_client):
            status, _ = http.request("GET", path)
            if status != 200:
                failures.append(status)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    assert not failures, failures[:5]
    return CLIENTS * per_client / elapsed


def run(quick: bool) -> list[Figure]:
    try:
        import granian  # noqa: F401
    except ImportError as exc:
        raise SkipBenchmark("granian is not installed (pip install granian)") from exc
    rounds, n, per_client = (1, 50, 10) if quick else (3, 400, 60)
    servers = ("waitress", "granian")
    p50s: dict[tuple[str, str], list[float]] = {}
    rates: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = _prepare(Path(tmp))
        running = {name: _start(name, db) for name in servers}
        try:
            for r in range(rounds):
                order = servers if r % 2 == 0 else servers[::-1]
                for route, path in ROUTES.items():
                    for name in order:
                        url = running[name][1]
                        p50s.setdefault((name, route), []).append(_p50(url, path, n))
                        rates.setdefault((name, route), []).append(
                            _throughput(url, path, per_client))
        finally:
            for proc, _ in running.values():
                proc.terminate()
                proc.wait(10)
    load = os.getloadavg()[0]
    figures = []
    for route in ROUTES:
        for name in servers:
            p50 = statistics.median(p50s[(name, route)])
            rate = statistics.median(rates[(name, route)])
            floor = statistics.median(p50s[("waitress", route)])
            figures.append(Figure(
                "wsgi", f"{name} {route}: 1 client p50 / {CLIENTS} clients", round(p50, 3),
                "ms", n=n * rounds, note=(
                    f"{rate:,.0f} req/s at {CLIENTS} clients; p50 {p50 / floor:.2f}x "
                    f"waitress's; rounds {', '.join(f'{v:.3f}' for v in p50s[(name, route)])}"
                    f" ms; load average {load:.2f}")))
    return figures
