"""The HTTP API under load: many clients mixing reads and lease churn, then an audit.

    python -m bench.load                                   # 64 clients x 60 s, both modes
    python -m bench.load --clients 16 --seconds 10 --mode two-api

Real processes on a fresh SQLite file: ``gpuhistory serve --backend sim --sim-gpus 8``
(mode ``serve``), or one ``gpuhistory sampler`` and two ``gpuhistory api`` processes
(mode ``two-api``, the clients split between the two APIs). The clients are threads spread
over a few client processes (``--client-procs``), so the clients' own Python does not
serialise on one GIL; each thread holds one keep-alive connection and, until the time is
up, picks a request: the status of one GPU or of all, a page of history, a trend, or a
step of lease churn (allocate; then renew, release, or abandon the lease to expire). Every
latency is measured by the client around one request and its whole answer, so it includes
the time the request waited for a CPU on this machine, shared by clients and servers.

When the time is up the servers are stopped and the database audited:

- no 5xx and no failed connection;
- every lease the clients were granted is in the log as the client last saw it: released
  when and as acknowledged, with the expiry of its last acknowledged renewal, or expired;
  and no lease row exists that no client was granted;
- no GPU was ever oversubscribed, checked twice: replaying the log's lease events in commit
  order (at each grant, the leases still counting, the new one included, fit the GPU's
  capacity), and from the lease rows (at each grant, the rows granted before it and still
  counting then);
- no lease token appears in any server's log.

Prints a table and writes docs/results/load-<mode>.json (``--out`` for another folder).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import machine, percentile

MODES = ("serve", "two-api")
GPUS = 8
HOST_NAME = "loadhost"
SAMPLE_INTERVAL_S = 1.0
SERVER_THREADS = 8
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
# What each client picks, by weight: reads, and a step of lease churn.
MIX = (("status", 3), ("status_all", 1), ("history", 2), ("trend", 2), ("lease", 4))
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


# -- clients ---------------------------------------------------------------------------
@dataclass
class LeaseRecord:
    """One lease as its client saw it: the last state the server acknowledged."""

    allocation_id: str
    gpu_id: int
    memory_mb: int
    granted_at: str
    expires_at: str  # the last expiry acknowledged (grant or renewal)
    outcome: str = "held"  # held (kept or abandoned) | released | expired
    released_at: str | None = None
    renewals: int = 0


class Connection:
    """A keep-alive JSON connection (http.client: the client costs little CPU)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if data else {}
        try:
            self.conn.request(method, path, body=data, headers=headers)
            response = self.conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            raise
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw[:200].decode("utf-8", "replace")

    def close(self) -> None:
        self.conn.close()


class Client:
    """One simulated user: a connection, a random stream of requests, its leases."""

    def __init__(self, name: str, url: str, rng: random.Random, size_mb: tuple[int, int],
                 out: dict[str, Any]) -> None:
        self.name, self.rng, self.size_mb, self.out = name, rng, size_mb, out
        self.http = Connection(url)
        self.held: tuple[LeaseRecord, str] | None = None  # (record, token)
        self.seq = 0
        self.ops, self.weights = zip(*MIX, strict=True)

    def call(self, op: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        started = time.perf_counter()
        try:
            status, answer = self.http.request(method, path, body)
        except (OSError, http.client.HTTPException) as exc:
            self.out["errors"].append(f"{op}: {type(exc).__name__}: {exc}")
            return -1, None
        self.out["latency"].setdefault(op, []).append(time.perf_counter() - started)
        self.out["status"][f"{op} {status}"] += 1
        if status >= 500:
            self.out["server_errors"].append(f"{op} {status}: {str(answer)[:300]}")
        return status, answer

    def step(self) -> None:
        op = self.rng.choices(self.ops, self.weights)[0]
        gpu = self.rng.randrange(GPUS)
        if op == "status":
            self.call(op, "GET", f"/api/gpu/status?gpu_id={gpu}")
        elif op == "status_all":
            self.call(op, "GET", "/api/gpu/status/all")
        elif op == "history":
            self.call(op, "GET", f"/api/gpu/metrics/history?gpu_id={gpu}&limit=100")
        elif op == "trend":
            self.call(op, "GET", f"/api/gpu/temperature/trend?gpu_id={gpu}&duration_minutes=5")
        else:
            self.lease_step(gpu)

    def lease_step(self, gpu: int) -> None:
        if self.held is None:
            self.allocate(gpu)
            return
        record, token = self.held
        choice = self.rng.random()
        if choice < 0.1:  # abandon it: it must expire by itself
            self.held = None
            return
        if choice < 0.55:
            status, answer = self.call("renew", "POST", "/api/gpu/memory/renew", {
                "allocation_id": record.allocation_id, "lease_token": token,
                "ttl_seconds": self.rng.randint(2, 8)})
            if status == 200:
                record.expires_at, record.renewals = answer["expires_at"], record.renewals + 1
                return
        else:
            status, answer = self.call("release", "POST", "/api/gpu/memory/deallocate", {
                "allocation_id": record.allocation_id, "lease_token": token})
            if status == 200:
                record.outcome, record.released_at = "released", answer["released_at"]
                self.held = None
                return
        self.held = None
        if status == 409 and answer["error"]["code"] == "lease_not_active":
            record.outcome = "expired"  # it ran out before this renew or release arrived
        else:
            self.out["unknown"].append(record.allocation_id)  # an answer not foreseen

    def allocate(self, gpu: int) -> None:
        self.seq += 1
        allocation_id = f"load-{self.name}-{self.seq}"
        memory_mb = self.rng.randint(*self.size_mb)
        status, answer = self.call("allocate", "POST", "/api/gpu/memory/allocate", {
            "allocation_id": allocation_id, "memory_mb": memory_mb, "gpu_id": gpu,
            "ttl_seconds": self.rng.randint(2, 8), "owner": f"load-{self.name}"})
        if status == 201:
            record = LeaseRecord(allocation_id, gpu, memory_mb, answer["granted_at"],
                                 answer["expires_at"])
            self.out["leases"].append(record)
            self.out["tokens"].append(answer["lease_token"])
            self.held = (record, answer["lease_token"])
        elif status == 409 and answer["error"]["code"] == "over_capacity":
            self.out["refused"] += 1
        elif status != -1:
            self.out["unknown"].append(allocation_id)
        else:  # the connection failed: granted or not, the client cannot tell
            self.out["unknown"].append(allocation_id)


def _client_process(index: int, urls: list[str], threads: int, seconds: float,
                    size_mb: tuple[int, int], seed: int, barrier: Any, results: Any) -> None:
    """One client process: ``threads`` clients, started together, for ``seconds``."""
    out: dict[str, Any] = {"latency": {}, "status": Counter(), "errors": [],
                           "server_errors": [], "leases": [], "tokens": [], "unknown": [],
                           "refused": 0}
    lock = threading.Lock()
    outs = []

    def run(n: int, start: threading.Event) -> None:
        mine: dict[str, Any] = {"latency": {}, "status": Counter(), "errors": [],
                                "server_errors": [], "leases": [], "tokens": [],
                                "unknown": [], "refused": 0}
        client = Client(f"{index}-{n}", urls[(index * threads + n) % len(urls)],
                        random.Random(seed * 1000 + n), size_mb, mine)
        start.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            client.step()
        client.http.close()
        with lock:
            outs.append(mine)

    start = threading.Event()
    workers = [threading.Thread(target=run, args=(n, start)) for n in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start.set()
    for worker in workers:
        worker.join()
    for mine in outs:
        for op, values in mine["latency"].items():
            out["latency"].setdefault(op, []).extend(values)
        out["status"].update(mine["status"])
        for key in ("errors", "server_errors", "leases", "tokens", "unknown"):
            out[key].extend(mine[key])
        out["refused"] += mine["refused"]
    out["leases"] = [asdict(r) for r in out["leases"]]
    out["status"] = dict(out["status"])
    results.put(out)


# -- servers ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpuhistory.cli.main", *args]


class Servers:
    """The processes of one mode on one database, their logs in files."""

    def __init__(self, mode: str, folder: Path) -> None:
        self.db = folder / "load.db"
        self.folder = folder
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.urls: list[str] = []
        common = ("--db", str(self.db), "--host-name", HOST_NAME)
        sampling = ("--backend", "sim", "--sim-gpus", str(GPUS),
                    "--interval", str(SAMPLE_INTERVAL_S))
        http = ("--threads", str(SERVER_THREADS))
        subprocess.run(_command("db", "upgrade", "--db", str(self.db)), check=True,
                       capture_output=True, timeout=120)
        if mode == "serve":
            self._start("serve", "serve", *common, *sampling, *http, port=True)
        else:
            self._start("sampler", "sampler", *common, *sampling)
            self._start("api-1", "api", *common, *http, port=True)
            self._start("api-2", "api", *common, *http, port=True)
        for url in self.urls:
            self._wait_ready(url)

    def _start(self, name: str, *args: str, port: bool = False) -> None:
        extra: tuple[str, ...] = ()
        if port:
            number = _free_port()
            extra = ("--port", str(number))
            self.urls.append(f"http://127.0.0.1:{number}")
        log = self.folder / f"{name}.log"
        with open(log, "wb") as handle:
            proc = subprocess.Popen(_command(*args, *extra), stdout=handle,
                                    stderr=subprocess.STDOUT)
        self.procs.append((name, proc, log))

    def _wait_ready(self, url: str, timeout: float = 90) -> None:
        """Until /healthz answers with a sample (the sampler's first tick has landed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc, log in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited: {log.read_text()[-2000:]}")
            probe = Connection(url)
            try:
                status, body = probe.request("GET", "/healthz")
                if status == 200 and body.get("last_sample", {}).get("timestamp"):
                    return
            except (OSError, http.client.HTTPException, ValueError):
                pass
            finally:
                probe.close()
            time.sleep(0.1)
        raise RuntimeError(f"{url} did not become ready")

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every process (APIs first); their exit codes."""
        codes: dict[str, int | None] = {}
        for name, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                codes[name] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes

    def logs(self) -> str:
        return "".join(log.read_text(errors="replace") for _, _, log in self.procs)


# -- the audit -------------------------------------------------------------------------
def _lease_rows(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "SELECT l.id, l.allocation_id, g.gpu_index, l.memory_mib, l.granted_ms, "
        "l.expires_ms, l.released_ms, l.release_reason FROM leases l "
        "JOIN gpus g ON g.id = l.gpu_id WHERE l.allocation_id LIKE 'load-%' ORDER BY l.id")
    names = ("id", "allocation_id", "gpu_id", "memory_mb", "granted_ms", "expires_ms",
             "released_ms", "release_reason")
    return {r[1]: dict(zip(names, r, strict=True)) for r in rows}


def audit_accounting(records: list[dict[str, Any]], rows: dict[str, dict[str, Any]],
                     end_ms: int) -> dict[str, Any]:
    """Each acknowledged lease in the log as its client last saw it; no unknown rows."""
    from gpuhistory.clock import iso_utc

    problems: list[str] = []
    for rec in records:
        row = rows.get(rec["allocation_id"])
        if row is None:
            problems.append(f"{rec['allocation_id']}: granted but not in the log")
            continue
        if (row["gpu_id"], row["memory_mb"], iso_utc(row["granted_ms"])) != (
                rec["gpu_id"], rec["memory_mb"], rec["granted_at"]):
            problems.append(f"{rec['allocation_id']}: the row is not the grant acknowledged")
        expired = row["release_reason"] == "expired" or (
            row["released_ms"] is None and row["expires_ms"] <= end_ms)
        if rec["outcome"] == "released":
            ok = (row["release_reason"] == "released"
                  and iso_utc(row["released_ms"]) == rec["released_at"])
        elif rec["outcome"] == "expired":
            ok = expired
        else:  # held: the last acknowledged expiry stands; expired or still counting
            ok = iso_utc(row["expires_ms"]) == rec["expires_at"] and (
                row["released_ms"] is None or (row["release_reason"] == "expired"
                                               and row["released_ms"] == row["expires_ms"]))
        if not ok:
            problems.append(f"{rec['allocation_id']}: client saw {rec['outcome']} "
                            f"(expires {rec['expires_at']}), log has {row}")
    known = {rec["allocation_id"] for rec in records}
    phantoms = sorted(set(rows) - known)
    states = Counter("released" if r["release_reason"] == "released" else
                     "expired" if r["release_reason"] == "expired" or r["expires_ms"] <= end_ms
                     else "active" for r in rows.values())
    return {"granted": len(records), "rows": len(rows), "unaccounted": len(problems),
            "phantom_rows": len(phantoms), "final_states": dict(states),
            "client_outcomes": dict(Counter(r["outcome"] for r in records)),
            "renewals": sum(r["renewals"] for r in records),
            "examples": (problems + [f"{p}: no client was granted it" for p in phantoms])[:10]}


def audit_capacity_by_events(conn: sqlite3.Connection,
                             capacity: dict[int, int]) -> dict[str, Any]:
    """Replay lease events in commit (id) order: at each grant, what still counts fits."""
    from gpuhistory.clock import parse_time

    rows = conn.execute(
        "SELECT e.kind, e.ts_ms, g.gpu_index, e.payload FROM events e "
        "JOIN gpus g ON g.id = e.gpu_id WHERE e.kind IN ('lease_granted', 'lease_renewed', "
        "'lease_released', 'lease_expired') ORDER BY e.id")
    active: dict[int, dict[str, tuple[int, int]]] = {gpu: {} for gpu in capacity}
    grants, over, peak = 0, [], dict.fromkeys(capacity, 0)
    for kind, ts_ms, gpu, payload in rows:
        doc = json.loads(payload)
        held = active[gpu]
        if kind == "lease_granted":
            for allocation_id, (_, expires) in list(held.items()):
                if expires <= ts_ms:  # expired leases stop counting at once
                    del held[allocation_id]
            held[doc["allocation_id"]] = (doc["memory_mb"], parse_time(doc["expires_at"]))
            total = sum(mb for mb, _ in held.values())
            grants += 1
            peak[gpu] = max(peak[gpu], total)
            if total > capacity[gpu]:
                over.append(f"GPU {gpu} at {ts_ms}: {total} MiB > {capacity[gpu]}")
        elif kind == "lease_renewed" and doc["allocation_id"] in held:
            held[doc["allocation_id"]] = (held[doc["allocation_id"]][0],
                                          parse_time(doc["expires_at"]))
        elif kind in ("lease_released", "lease_expired"):
            held.pop(doc["allocation_id"], None)
    return {"grants_checked": grants, "oversubscribed": len(over), "examples": over[:5],
            "peak_leased_mb": peak}


def audit_capacity_by_rows(rows: dict[str, dict[str, Any]],
                           capacity: dict[int, int]) -> dict[str, Any]:
    """At each grant (rows in id order): earlier rows of its GPU still counting then."""
    ordered = sorted(rows.values(), key=lambda r: r["id"])
    over = []
    for i, grant in enumerate(ordered):
        t = grant["granted_ms"]
        total = grant["memory_mb"] + sum(
            r["memory_mb"] for r in ordered[:i] if r["gpu_id"] == grant["gpu_id"]
            and (r["released_ms"] if r["released_ms"] is not None else r["expires_ms"]) > t)
        if total > capacity[grant["gpu_id"]]:
            over.append(f"{grant['allocation_id']}: {total} MiB > {capacity[grant['gpu_id']]}")
    return {"grants_checked": len(ordered), "oversubscribed": len(over),
            "examples": over[:5]}


def _samples_during(conn: sqlite3.Connection, start_ms: int, end_ms: int) -> dict[str, Any]:
    counts = [n for (n,) in conn.execute(
        "SELECT count(*) FROM samples WHERE ts_ms BETWEEN ? AND ? GROUP BY gpu_id",
        (start_ms, end_ms))]
    expected = (end_ms - start_ms) / 1000 / SAMPLE_INTERVAL_S
    return {"ticks_expected": round(expected), "ticks_min_per_gpu": min(counts, default=0)}


def _latency_table(latency: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {op: {"n": len(v), "p50_ms": round(percentile(v, 0.5) * 1000, 2),
                 "p99_ms": round(percentile(v, 0.99) * 1000, 2),
                 "max_ms": round(max(v) * 1000, 2)} for op, v in sorted(latency.items())}


# -- one run ---------------------------------------------------------------------------
def run_mode(mode: str, clients: int = 64, seconds: float = 60, client_procs: int = 4,
             seed: int = 1) -> dict[str, Any]:
    """Start ``mode``'s servers, drive ``clients`` for ``seconds``, stop them, audit."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    client_procs = max(1, min(client_procs, clients))
    per_proc = [clients // client_procs + (i < clients % client_procs)
                for i in range(client_procs)]
    load_before = [round(x, 2) for x in os.getloadavg()]  # others sharing this machine
    with tempfile.TemporaryDirectory(prefix="gpuhistory-load-") as tmp:
        servers = Servers(mode, Path(tmp))
        try:
            first = Connection(servers.urls[0])
            capacity = {gpu: first.request("GET", f"/api/gpu/memory/available?gpu_id={gpu}")[1]
                        ["capacity_mb"] for gpu in range(GPUS)}
            first.close()
            # Sizes that overcommit a little: with the abandoned leases still counting
            # until they expire, the clients want somewhat more than the GPUs hold.
            high = max(1024, min(min(capacity.values()) // 2,
                                 3 * sum(capacity.values()) // (2 * clients)))
            size_mb = (max(1, high // 4), high)
            spawn = multiprocessing.get_context("spawn")
            barrier, results = spawn.Barrier(client_procs + 1), spawn.Queue()
            procs = [spawn.Process(target=_client_process, args=(
                i, servers.urls, n, seconds, size_mb, seed * 100 + i, barrier, results))
                for i, n in enumerate(per_proc)]
            for proc in procs:
                proc.start()
            barrier.wait(timeout=120)
            start_ms, started = time.time_ns() // 1_000_000, time.perf_counter()
            outs = [results.get(timeout=seconds + 300) for _ in procs]
            wall = time.perf_counter() - started
            end_ms = time.time_ns() // 1_000_000
            for proc in procs:
                proc.join(timeout=60)
        finally:
            exit_codes = servers.stop()
        logs = servers.logs()
        with sqlite3.connect(f"file:{servers.db}?mode=ro", uri=True) as conn:
            rows = _lease_rows(conn)
            by_events = audit_capacity_by_events(conn, capacity)
            samples = _samples_during(conn, start_ms, end_ms)
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        conn.close()
    latency: dict[str, list[float]] = {}
    status: Counter[str] = Counter()
    records: list[dict[str, Any]] = []
    tokens: set[str] = set()
    errors, server_errors, unknown, refused = [], [], [], 0
    for out in outs:
        for op, values in out["latency"].items():
            latency.setdefault(op, []).extend(values)
        status.update(out["status"])
        records += out["leases"]
        tokens.update(out["tokens"])
        errors += out["errors"]
        server_errors += out["server_errors"]
        unknown += out["unknown"]
        refused += out["refused"]
    everything = [x for values in latency.values() for x in values]
    leaked = tokens & set(TOKEN_RE.findall(logs))
    report = {
        "mode": mode, "clients": clients, "seconds": seconds, "client_processes": client_procs,
        "load_average_before": load_before,
        "server_threads": SERVER_THREADS, "gpus": GPUS, "lease_size_mb": list(size_mb),
        "requests": len(everything), "wall_seconds": round(wall, 2),
        "requests_per_second": round(len(everything) / wall, 1),
        "p50_ms": round(percentile(everything, 0.5) * 1000, 2),
        "p99_ms": round(percentile(everything, 0.99) * 1000, 2),
        "latency": _latency_table(latency),
        "status_counts": dict(sorted(status.items())),
        "five_xx": sum(n for key, n in status.items() if int(key.rsplit(" ", 1)[1]) >= 500),
        "server_error_examples": server_errors[:5],
        "connection_errors": len(errors), "connection_error_examples": errors[:5],
        "unforeseen_answers": len(unknown), "refused_over_capacity": refused,
        "leases": audit_accounting(records, rows, end_ms),
        "capacity_by_events": by_events,
        "capacity_by_rows": audit_capacity_by_rows(rows, capacity),
        "capacity_mb": capacity,
        "tokens_in_logs": len(leaked), "server_log_bytes": len(logs),
        "samples_during_run": samples, "integrity_check": integrity,
        "exit_codes": exit_codes,
    }
    report["ok"] = (report["five_xx"] == 0 and not errors and not unknown
                    and report["leases"]["unaccounted"] == 0
                    and report["leases"]["phantom_rows"] == 0
                    and by_events["oversubscribed"] == 0
                    and report["capacity_by_rows"]["oversubscribed"] == 0
                    and not leaked and integrity == "ok"
                    and all(code == 0 for code in exit_codes.values()))
    return report


def render(report: dict[str, Any]) -> str:
    """The table printed after a run."""
    lines = [f"mode {report['mode']}: {report['clients']} clients "
             f"({report['client_processes']} client processes) x {report['seconds']:g} s, "
             f"{report['requests']:,} requests, {report['requests_per_second']:,} req/s, "
             f"p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms",
             f"{'request':<12}{'n':>9}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}"]
    for op, row in report["latency"].items():
        lines.append(f"{op:<12}{row['n']:>9,}{row['p50_ms']:>10}{row['p99_ms']:>10}"
                     f"{row['max_ms']:>10}")
    leases = report["leases"]
    lines += [
        f"5xx {report['five_xx']}, connection errors {report['connection_errors']}, "
        f"unforeseen answers {report['unforeseen_answers']}",
        f"leases: {leases['granted']:,} granted ({report['refused_over_capacity']:,} refused "
        f"over capacity), {leases['renewals']:,} renewals; final {leases['final_states']}; "
        f"unaccounted {leases['unaccounted']}, phantom rows {leases['phantom_rows']}",
        f"oversubscription: {report['capacity_by_events']['oversubscribed']} by events "
        f"({report['capacity_by_events']['grants_checked']:,} grants replayed), "
        f"{report['capacity_by_rows']['oversubscribed']} by rows; "
        f"lease tokens in server logs: {report['tokens_in_logs']}",
        f"sampler: {report['samples_during_run']['ticks_min_per_gpu']} of "
        f"{report['samples_during_run']['ticks_expected']} ticks per GPU during the run; "
        f"exit codes {report['exit_codes']}; integrity {report['integrity_check']}",
        "OK" if report["ok"] else "FAILED",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--client-procs", type=int, default=4,
                        help="processes the client threads are spread over")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON")
    args = parser.parse_args(argv)
    ok = True
    for mode in MODES if args.mode == "both" else (args.mode,):
        report = run_mode(mode, args.clients, args.seconds, args.client_procs)
        report["machine"] = machine()
        report["command"] = "python -m bench.load " + " ".join(argv or sys.argv[1:])
        print(render(report), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"load-{mode}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}\n", flush=True)
        ok = ok and report["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
