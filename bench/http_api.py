"""The HTTP API under 16 concurrent clients: status of all GPUs, lease allocate/release.

A real ``gpuhistory serve`` subprocess (sim backend, 8 GPUs, 1 s interval) on a fresh
SQLite file; 16 client threads with keep-alive sessions. DESIGN §6 budgets: status of all
GPUs p50 <= 1 ms; allocate p50 <= 2 ms and >= 1,000 grants/s with zero oversubscription.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import Figure, latency_figure


class Http:
    """A lean keep-alive JSON client (http.client), so the client costs little of the time."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if data else {}
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())

CLIENTS = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(db: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuhistory.cli.main", "serve", "--db", str(db), "--port",
         str(port), "--backend", "sim", "--sim-gpus", "8", "--interval", "1", "--threads", "16"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=1).json()["last_sample"]["timestamp"]:
                return proc, url
        except (requests.RequestException, KeyError, TypeError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("serve did not start")


def _run_clients(url: str, work, per_client: int) -> tuple[list[float], float]:
    """Run ``work(session, client, i)`` per_client times in each of 16 threads."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS + 1)

    def client(n: int) -> None:
        session = Http(url)
        mine = []
        barrier.wait()
        for i in range(per_client):
            t0 = time.perf_counter()
            work(session, n, i)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - started


def run(quick: bool) -> list[Figure]:
    per_client = 30 if quick else 300
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _serve(Path(tmp) / "http.db")
        try:
            single = Http(url)
            solo = []
            for _ in range(50 if quick else 500):
                t0 = time.perf_counter()
                single.request("GET", "/api/gpu/status/all")
                solo.append(time.perf_counter() - t0)
            figures.append(latency_figure("http", "GET status/all (8 GPUs), 1 client", solo,
                                          1.0, "one keep-alive client, sequential"))

            def status(session, _n, _i):
                code, _ = session.request("GET", "/api/gpu/status/all")
                assert code == 200

            lat, wall = _run_clients(url, status, per_client)
            figures.append(latency_figure("http", "GET status/all (8 GPUs), 16 clients", lat,
                                          1.0, f"{len(lat) / wall:,.0f} requests/s"))
            granted: list[tuple[str, str]] = []
            glock = threading.Lock()

            def allocate(session, n, i):
                code, body = session.request("POST", "/api/gpu/memory/allocate", {
                    "allocation_id": f"c{n}-{i}", "memory_mb": 1, "gpu_id": n % 8})
                if code != 201:
                    raise RuntimeError(body)
                with glock:
                    granted.append((f"c{n}-{i}", body["lease_token"]))

            lat, wall = _run_clients(url, allocate, per_client)
            figures.append(latency_figure("http", "POST allocate, 16 clients", lat, 2.0,
                                          f"{len(lat) / wall:,.0f} grants/s (budget >= 1,000)"))
            figures.append(Figure("http", "allocate throughput, 16 clients",
                                  round(len(lat) / wall, 1), "grants/s", n=len(lat),
                                  budget=">= 1000 grants/s", ok=len(lat) / wall >= 1000))
            tokens = dict(granted)

            def release(session, n, i):
                code, body = session.request("POST", "/api/gpu/memory/deallocate", {
                    "allocation_id": f"c{n}-{i}", "lease_token": tokens[f"c{n}-{i}"]})
                if code != 200:
                    raise RuntimeError(body)

            lat, wall = _run_clients(url, release, per_client)
            figures.append(latency_figure("http", "POST deallocate, 16 clients", lat, None,
                                          f"{len(lat) / wall:,.0f} releases/s"))
            # Oversubscription check: fill GPU 0 from 16 clients at once.
            cap = requests.get(f"{url}/api/gpu/memory/available").json()["available_mb"]
            chunk = cap // 20
            results: list[int] = []

            def fill(session, n, i):
                code, _ = session.request("POST", "/api/gpu/memory/allocate", {
                    "allocation_id": f"fill{n}-{i}", "memory_mb": chunk, "gpu_id": 0})
                with glock:
                    results.append(code)

            _run_clients(url, fill, 3)
            leased = requests.get(f"{url}/api/gpu/memory/available").json()["leased_mb"]
            figures.append(Figure("http", "oversubscription (48 racing grants for 20 slots)",
                                  leased - cap if leased > cap else 0, "MiB over", n=48,
                                  budget="0", ok=leased <= cap and results.count(201) == 20,
                                  note=f"{results.count(201)} granted, "
                                       f"{results.count(409)} refused"))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return figures
