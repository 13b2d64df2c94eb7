"""Crash harnesses: ``gpuhistory serve`` and ``gpuhistory import`` killed with SIGKILL.

``serve_kills``: one database, ``serve`` (sim backend, 8 GPUs, 0.1 s interval) restarted
again and again while lease clients churn over real HTTP (grant, renew, release) and a
watcher notes every tick the API shows. At a random moment the server gets SIGKILL; with
it down, the database file is checked:

- ``PRAGMA integrity_check`` is ok;
- every grant a client saw acknowledged (201) is there exactly once, and still active
  unless a release of it was acknowledged (or is in doubt); no allocation id has two rows;
- every acknowledged release is still released; every acknowledged renewal still holds
  (the expiry is at least the acknowledged one);
- every tick the API showed is in the log, each tick wrote all 8 GPUs (none half), the
  GPUs were registered once, and each start wrote one ``service_started``.

A request whose answer never came (the server died under it), or has not come yet, is *in
doubt*: either outcome is allowed, but never a duplicate. Then ``serve`` starts again on
the same file.

``import_kills``: ``gpuhistory import`` of a generated trace is killed at a random moment
while its one transaction is open (it holds the write lock); the log must hold nothing of
that file, and importing the same file again must then succeed with every row.

Run through tests/test_crash.py (bounded in CI; ``GPUHISTORY_FULL=1`` for the full run).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError

HOST = "crash-host"
GPUS = 8
INTERVAL_S = 0.1
TTL_S = 3600  # long: nothing may expire during the run, so "present" is checkable
READY_TIMEOUT_S = 60


def gpuhistory(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpuhistory.cli.main", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_ms(iso: str) -> int:
    return round(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def never_sent(exc: requests.RequestException) -> bool:
    """True when the request cannot have reached the server (the connection was refused)."""
    reason = exc.args[0] if exc.args else None
    return isinstance(reason, MaxRetryError) and isinstance(reason.reason, NewConnectionError)


class HarnessFailure(AssertionError):
    """A guarantee did not hold; the message says which and where."""


# -- what the clients saw ----------------------------------------------------------------------
@dataclass
class Ledger:
    """What lease clients saw acknowledged, and what they never got an answer for."""

    granted: dict[str, str] = field(default_factory=dict)  # allocation id → lease token
    released: set[str] = field(default_factory=set)
    renewed: dict[str, int] = field(default_factory=dict)  # id → acknowledged expiry (ms)
    in_doubt: set[str] = field(default_factory=set)  # ids with an unanswered request
    pending: set[str] = field(default_factory=set)  # ids with a request under way now
    refused: int = 0  # answered 503: nothing happened
    anomalies: list[str] = field(default_factory=list)  # answers that should not happen
    lock: threading.Lock = field(default_factory=threading.Lock)

    def usable(self, rng: random.Random, prefix: str) -> tuple[str, str] | None:
        """One of a client's acknowledged, unreleased leases with no request in doubt."""
        with self.lock:
            live = [i for i in self.granted if i.startswith(prefix)
                    and i not in self.released and i not in self.in_doubt]
            if not live:
                return None
            chosen = rng.choice(live)
            return chosen, self.granted[chosen]


class LeaseClient(threading.Thread):
    """Grants (60 %), renews (15 %) and releases (25 %) leases against whoever serves."""

    def __init__(self, number: int, url: Callable[[], str | None], ledger: Ledger,
                 stop: threading.Event, seed: int) -> None:
        super().__init__(name=f"lease-client-{number}", daemon=True)
        self.number, self.url, self.ledger, self.stop = number, url, ledger, stop
        self.rng = random.Random(seed)
        self.sequence = 0

    def run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            url = self.url()
            if url is None:
                self.stop.wait(0.01)
                continue
            roll = self.rng.random()
            if roll < 0.6:
                self._grant(session, url)
            elif roll < 0.75:
                self._renew(session, url)
            else:
                self._release(session, url)

    def _post(self, session: requests.Session, url: str, path: str, body: dict[str, Any],
              allocation_id: str) -> requests.Response | None:
        ledger = self.ledger
        with ledger.lock:  # in doubt from now until an answer is recorded
            ledger.pending.add(allocation_id)
        try:
            return session.post(f"{url}{path}", json=body, timeout=10)
        except requests.RequestException as exc:
            with ledger.lock:
                ledger.pending.discard(allocation_id)
                if not never_sent(exc):
                    ledger.in_doubt.add(allocation_id)
            session.close()
            self.stop.wait(0.01)
            return None

    def _grant(self, session: requests.Session, url: str) -> None:
        self.sequence += 1
        allocation_id = f"c{self.number}-{self.sequence}"
        response = self._post(session, url, "/api/gpu/memory/allocate", {
            "allocation_id": allocation_id, "memory_mb": self.rng.randint(1, 64),
            "gpu_id": self.rng.randrange(GPUS), "ttl_seconds": TTL_S,
            "owner": f"client-{self.number}"}, allocation_id)
        self._record(response, allocation_id, "grant", 201)

    def _renew(self, session: requests.Session, url: str) -> None:
        lease = self.ledger.usable(self.rng, f"c{self.number}-")
        if lease is None:
            return
        allocation_id, token = lease
        response = self._post(session, url, "/api/gpu/memory/renew", {
            "allocation_id": allocation_id, "lease_token": token,
            "ttl_seconds": TTL_S * 2}, allocation_id)
        self._record(response, allocation_id, "renew", 200)

    def _release(self, session: requests.Session, url: str) -> None:
        lease = self.ledger.usable(self.rng, f"c{self.number}-")
        if lease is None:
            return
        allocation_id, token = lease
        response = self._post(session, url, "/api/gpu/memory/deallocate", {
            "allocation_id": allocation_id, "lease_token": token}, allocation_id)
        self._record(response, allocation_id, "release", 200)

    def _record(self, response: requests.Response | None, allocation_id: str, what: str,
                ok: int) -> None:
        if response is None:
            return
        ledger = self.ledger
        with ledger.lock:
            ledger.pending.discard(allocation_id)
            if response.status_code == 503:
                ledger.refused += 1
            elif response.status_code != ok:
                ledger.anomalies.append(f"{what} {allocation_id}: {response.status_code} "
                                        f"{response.text[:200]}")
            elif what == "grant":
                ledger.granted[allocation_id] = response.json()["lease_token"]
            elif what == "renew":
                expires = to_ms(response.json()["expires_at"])
                ledger.renewed[allocation_id] = max(expires,
                                                    ledger.renewed.get(allocation_id, 0))
            else:
                ledger.released.add(allocation_id)


class TickWatcher(threading.Thread):
    """Notes the newest sample the API shows: each one is a tick it saw committed."""

    def __init__(self, url: Callable[[], str | None], stop: threading.Event) -> None:
        super().__init__(name="tick-watcher", daemon=True)
        self.url, self.stop = url, stop
        self.seen: set[int] = set()
        self.lock = threading.Lock()

    def run(self) -> None:
        session = requests.Session()
        while not self.stop.wait(0.02):
            url = self.url()
            if url is None:
                continue
            try:
                body = session.get(f"{url}/healthz", timeout=5).json()
            except (requests.RequestException, ValueError):
                session.close()
                continue
            stamp = (body.get("last_sample") or {}).get("timestamp")
            if stamp and body.get("last_tick"):
                with self.lock:
                    self.seen.add(to_ms(stamp))


# -- the server --------------------------------------------------------------------------------
class Server:
    """One ``gpuhistory serve`` subprocess on the harness's database."""

    def __init__(self, db: Path, log: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            gpuhistory("serve", "--db", str(db), "--port", str(port), "--backend", "sim",
                       "--sim-gpus", str(GPUS), "--interval", str(INTERVAL_S),
                       "--host-name", HOST),
            stdout=subprocess.DEVNULL, stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_ready(self) -> None:
        """Until /healthz answers with a tick of this process that reached the log (polling,
        bounded)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessFailure(f"serve exited with {self.proc.returncode} at start")
            try:
                tick = requests.get(f"{self.url}/healthz", timeout=2).json().get("last_tick")
                if tick and not tick["error"]:
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.05)
        raise HarnessFailure("serve did not become ready")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()


# -- the checks --------------------------------------------------------------------------------
def check_log(db: Path, ledger: Ledger, ticks_seen: set[int], starts: int) -> dict[str, int]:
    """Check every guarantee on the database file (no server running); counts for the report."""
    with ledger.lock:
        granted, released = dict(ledger.granted), set(ledger.released)
        renewed, in_doubt = dict(ledger.renewed), ledger.in_doubt | ledger.pending
    conn = sqlite3.connect(db)
    try:
        if conn.execute("PRAGMA integrity_check").fetchone() != ("ok",):
            raise HarnessFailure("integrity_check failed")
        rows: dict[str, list[tuple[int | None, str | None, int]]] = {}
        for allocation_id, released_ms, reason, expires_ms in conn.execute(
                "SELECT allocation_id, released_ms, release_reason, expires_ms FROM leases"):
            rows.setdefault(allocation_id, []).append((released_ms, reason, expires_ms))
        duplicated = sorted(i for i, r in rows.items() if len(r) > 1)
        if duplicated:
            raise HarnessFailure(f"allocation ids with several leases: {duplicated[:10]}")
        missing = sorted(i for i in granted if i not in rows)
        if missing:
            raise HarnessFailure(f"acknowledged grants missing: {missing[:10]}")
        undone = sorted(i for i in released if rows[i][0][1] != "released")
        if undone:
            raise HarnessFailure(f"acknowledged releases undone: {undone[:10]}")
        lost = sorted(i for i in granted
                      if i not in released and i not in in_doubt and rows[i][0][0] is not None)
        if lost:
            raise HarnessFailure(f"acknowledged leases no longer active: {lost[:10]}")
        shrunk = sorted(i for i, ms in renewed.items() if rows[i][0][2] < ms)
        if shrunk:
            raise HarnessFailure(f"acknowledged renewals undone: {shrunk[:10]}")
        stamps = {ts for (ts,) in conn.execute("SELECT DISTINCT ts_ms FROM samples")}
        unseen = sorted(ticks_seen - stamps)
        if unseen:
            raise HarnessFailure(f"{len(unseen)} tick(s) shown by the API are not in the log: "
                                 f"{unseen[:5]}")
        partial = conn.execute("SELECT ts_ms, count(*) FROM samples GROUP BY ts_ms "
                               f"HAVING count(*) != {GPUS} LIMIT 5").fetchall()
        if partial:
            raise HarnessFailure(f"ticks not written for all {GPUS} GPUs: {partial}")
        gpus = conn.execute("SELECT count(*) FROM gpus").fetchone()[0]
        if gpus != GPUS:
            raise HarnessFailure(f"{gpus} GPU rows, not {GPUS}: a GPU was registered twice")
        started = conn.execute(
            "SELECT count(*) FROM events WHERE kind = 'service_started'").fetchone()[0]
        if started != starts:
            raise HarnessFailure(f"{started} service_started events for {starts} starts")
        return {"leases": len(rows), "ticks": len(stamps)}
    finally:
        conn.close()


@dataclass
class ServeReport:
    kills: int
    seconds: float
    grants_acknowledged: int
    releases_acknowledged: int
    renewals_acknowledged: int
    in_doubt: int
    refused_503: int
    ticks_seen_and_verified: int
    ticks_in_log: int
    leases_in_log: int
    median_start_s: float


def serve_kills(workdir: Path, kills: int, seed: int = 0, clients: int = 4,
                uptime_s: tuple[float, float] = (0.3, 1.5)) -> ServeReport:
    """Kill ``serve`` ``kills`` times at random moments, checking the log after each."""
    rng = random.Random(seed)
    db, log = workdir / "crash.db", workdir / "serve.log"
    ledger, stop = Ledger(), threading.Event()
    current: list[str | None] = [None]
    threads: list[threading.Thread] = [
        LeaseClient(n, lambda: current[0], ledger, stop, seed * 100 + n) for n in range(clients)]
    watcher = TickWatcher(lambda: current[0], stop)
    threads.append(watcher)
    started = time.monotonic()
    for thread in threads:
        thread.start()
    counts: dict[str, int] = {}
    ready_s: list[float] = []
    try:
        for kill in range(1, kills + 1):
            server = Server(db, log, free_port())
            try:
                t0 = time.monotonic()
                server.wait_ready()
                ready_s.append(time.monotonic() - t0)
                current[0] = server.url
                time.sleep(rng.uniform(*uptime_s))  # the random moment of the kill
            finally:
                current[0] = None
                server.kill()
            with watcher.lock:
                seen = set(watcher.seen)
            try:
                counts = check_log(db, ledger, seen, starts=kill)
            except HarnessFailure as exc:
                raise HarnessFailure(f"after kill {kill}: {exc} (server log: {log})") from None
            if ledger.anomalies:
                raise HarnessFailure(f"after kill {kill}: unexpected answers: "
                                     f"{ledger.anomalies[:5]}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    return ServeReport(
        kills=kills, seconds=round(time.monotonic() - started, 1),
        grants_acknowledged=len(ledger.granted), releases_acknowledged=len(ledger.released),
        renewals_acknowledged=len(ledger.renewed), in_doubt=len(ledger.in_doubt),
        refused_503=ledger.refused, ticks_seen_and_verified=len(watcher.seen),
        ticks_in_log=counts.get("ticks", 0), leases_in_log=counts.get("leases", 0),
        median_start_s=round(sorted(ready_s)[len(ready_s) // 2], 2) if ready_s else 0.0)


# -- import -------------------------------------------------------------------------------------
def write_trace(path: Path, ticks: int, gpus: int = GPUS) -> int:
    """A trace of ``ticks`` seconds of ``gpus`` GPUs drifting slowly between 40 and 60 °C
    (a state change now and then, as on a real fleet); returns its rows."""
    with path.open("w") as out:
        out.write("t_s,gpu,temperature_c,memory_temperature_c,power_w,sm_clock_mhz,"
                  "mem_clock_mhz,utilization_pct,memory_used_mib,memory_total_mib,"
                  "clock_event_reasons,pstate\n")
        for t in range(ticks):
            for g in range(gpus):
                temp = 40 + (t // 300 + g * 3) % 21
                out.write(f"{t}.000,{g},{temp},{temp + 3},{100 + temp * 3}.5,1980,2619,"
                          f"{(t + g) % 101},{20000 + g},81559,4,0\n")
    return ticks * gpus


@dataclass
class ImportReport:
    kills: int  # imports killed with their transaction open, leaving nothing behind
    rows_per_file: int
    killed_after_s: list[float]  # seconds into the open transaction
    finished_first: int  # attempts where the import committed before the kill landed
    reimports_complete: int


def import_kills(workdir: Path, kills: int, seed: int = 0,
                 ticks: int = 4_000) -> ImportReport:
    """Kill ``gpuhistory import`` mid-transaction ``kills`` times; nothing half-imported."""
    rng = random.Random(seed)
    db, trace = workdir / "import.db", workdir / "big_trace.csv"
    rows = write_trace(trace, ticks)
    subprocess.run(gpuhistory("db", "upgrade", "--db", str(db)), check=True,
                   capture_output=True)
    killed_after: list[float] = []
    finished_first = complete = attempt = 0
    while len(killed_after) < kills:
        attempt += 1
        if attempt > kills * 5:
            raise HarnessFailure("imports kept finishing before they could be killed")
        host = f"import-{attempt}"
        start_ms = 1_700_000_000_000 + attempt * 10**9  # each file's own time range
        command = gpuhistory("import", str(trace), "--db", str(db), "--start",
                             str(start_ms // 1000), "--host-name", host)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        opened = _wait_for_transaction(db, proc)
        if opened is not None:
            time.sleep(rng.uniform(0.0, 0.5))  # a random moment inside the transaction
            proc.send_signal(signal.SIGKILL)
            after = time.monotonic() - opened
        proc.wait(60)
        held = _check_import(db, host, {0, rows})
        if proc.returncode != -signal.SIGKILL or held:
            finished_first += 1  # it committed first: all of it is in, which is fine too
            continue
        killed_after.append(round(after, 2))
        again = subprocess.run(command, capture_output=True, text=True)
        if again.returncode != 0:
            raise HarnessFailure(f"re-import after the kill failed: {again.stderr[-500:]}")
        _check_import(db, host, {rows})
        complete += 1
    return ImportReport(kills=len(killed_after), rows_per_file=rows,
                        killed_after_s=killed_after, finished_first=finished_first,
                        reimports_complete=complete)


def _wait_for_transaction(db: Path, proc: subprocess.Popen[bytes]) -> float | None:
    """When the import holds the write lock (its one transaction is open): the monotonic
    time it was seen, or None if the process ended first. Probing takes the lock for an
    instant when it is free, which the import waits out (its busy timeout is 5 s)."""
    probe = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        while proc.poll() is None:
            try:
                probe.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # locked: the import's transaction is open
                return time.monotonic()
            probe.execute("ROLLBACK")
            time.sleep(0.005)
        return None
    finally:
        probe.close()


def _check_import(db: Path, host: str, allowed: set[int]) -> int:
    """The log holds a number of ``host``'s samples in ``allowed`` (0: nothing of the file,
    no GPU row either); returns it."""
    conn = sqlite3.connect(db)
    try:
        if conn.execute("PRAGMA integrity_check").fetchone() != ("ok",):
            raise HarnessFailure("integrity_check failed after an import")
        gpus = conn.execute("SELECT count(*) FROM gpus WHERE host = ?", (host,)).fetchone()[0]
        samples = conn.execute(
            "SELECT count(*) FROM samples JOIN gpus ON gpus.id = samples.gpu_id "
            "WHERE gpus.host = ?", (host,)).fetchone()[0]
    finally:
        conn.close()
    if samples not in allowed or (samples == 0 and gpus):
        raise HarnessFailure(f"import of {host}: {samples} samples and {gpus} GPU rows in the "
                             f"log, expected {sorted(allowed)} samples: half an import")
    return samples
