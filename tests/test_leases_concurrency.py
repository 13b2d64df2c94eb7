"""Leases under contention: threads, processes and a killed process on one database (a SQLite
file, and PostgreSQL where its row lock on the GPU does the serializing)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading

import pytest
import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.leases import DuplicateAllocation, LeaseManager, OverCapacity, hash_token
from gpuhistory.storage.engine import make_engine
from gpuhistory.storage.log import LogStore
from tests.conftest import REPO
from tests.test_leases import HOST, RESERVE_MIB, add_gpu

pytestmark = pytest.mark.postgres

GRANT_MIB = 1000
FITS = 10  # the card's leasable memory holds exactly this many grants
CARD_MIB = FITS * GRANT_MIB + RESERVE_MIB
START_MS = 1_767_225_600_000


@pytest.fixture
def card(store: LogStore, clock: FakeClock) -> int:
    """GPU 0 with room for exactly FITS grants of GRANT_MIB."""
    return add_gpu(store, clock, total=CARD_MIB)


def manager(engine: sa.Engine) -> LeaseManager:
    return LeaseManager(engine, HOST, FakeClock(START_MS), lambda: DEFAULT_CONFIG)


def active_leased_mib(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(
            "SELECT count(*), coalesce(sum(memory_mib), 0) FROM leases WHERE released_ms IS NULL"
        )).one())


def race(workers: int, attempt) -> list[str]:
    """Run ``attempt(i)`` in ``workers`` threads released together; returns their outcomes."""
    barrier = threading.Barrier(workers)
    outcomes: list[str] = [""] * workers

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            attempt(i)
            outcomes[i] = "ok"
        except (OverCapacity, DuplicateAllocation) as exc:
            outcomes[i] = exc.code
        except BaseException as exc:  # reported by the assertions, never lost in a thread
            outcomes[i] = f"error: {type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return outcomes


def test_threads_racing_for_one_gpu_never_oversubscribe(engine: sa.Engine, card: int) -> None:
    """32 threads each asking for 1000 MiB of a card that fits 10: exactly 10 grants, the
    other 22 get OverCapacity, and the leased total equals the capacity, never more."""
    leases = manager(engine)
    outcomes = race(32, lambda i: leases.grant(f"job-{i}", GRANT_MIB))
    assert outcomes.count("ok") == FITS, outcomes
    assert outcomes.count("over_capacity") == 32 - FITS, outcomes
    assert active_leased_mib(engine) == (FITS, FITS * GRANT_MIB)
    assert leases.capacity(0).available_mb == 0


def test_threads_granting_one_allocation_id_get_one_lease(engine: sa.Engine, card: int) -> None:
    """16 threads granting the same allocation id at once: one succeeds, 15 are duplicates."""
    leases = manager(engine)
    outcomes = race(16, lambda i: leases.grant("shared-job", 10))
    assert outcomes.count("ok") == 1, outcomes
    assert outcomes.count("duplicate_allocation") == 15, outcomes
    assert active_leased_mib(engine) == (1, 10)


def test_concurrent_reapers_record_each_expiry_once(db_url: str, engine: sa.Engine,
                                                    card: int) -> None:
    """4 reapers, each with its own engine, at once over 40 overdue leases: 40 marked in
    total and exactly one lease_expired event per lease — no double records."""
    leases = manager(engine)
    for i in range(40):
        leases.grant(f"short-{i}", 1, ttl_seconds=1)
    engines = [make_engine(db_url) for _ in range(4)]
    reapers = [LeaseManager(e, HOST, FakeClock(START_MS + 5_000), lambda: DEFAULT_CONFIG)
               for e in engines]
    marked = [0] * 4

    def reap(i: int) -> None:
        marked[i] = reapers[i].reap()

    try:
        outcomes = race(4, reap)
    finally:
        for e in engines:
            e.dispose()
    assert outcomes == ["ok"] * 4
    assert sum(marked) == 40, marked
    with engine.connect() as conn:
        payloads = conn.execute(sa.text(
            "SELECT payload FROM events WHERE kind = 'lease_expired'")).scalars().all()
    ids = [(json.loads(p) if isinstance(p, str) else p)["allocation_id"] for p in payloads]
    assert (len(ids), len(set(ids))) == (40, 40)


def _grant_in_process(db: str, worker: int, attempts: int, barrier, results) -> None:
    """A separate process with its own engine: grant ``attempts`` leases, report outcomes."""
    engine = make_engine(db)
    leases = manager(engine)
    granted = refused = 0
    errors: list[str] = []
    try:
        barrier.wait(timeout=30)
        for n in range(attempts):
            try:
                leases.grant(f"p{worker}-{n}", GRANT_MIB)
                granted += 1
            except OverCapacity:
                refused += 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        engine.dispose()
        results.put((worker, granted, refused, errors))


def test_processes_racing_for_one_gpu_never_oversubscribe(db_url: str, engine: sa.Engine,
                                                          card: int) -> None:
    """4 processes (spawned, each with its own engine on the same database) making 8 grants
    each against room for 10: exactly 10 grants in total — the lock holds across processes."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_grant_in_process, args=(db_url, w, 8, barrier, results))
             for w in range(4)]
    for p in procs:
        p.start()
    reports = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert [errors for *_, errors in reports] == [[]] * 4
    assert sum(granted for _, granted, _, _ in reports) == FITS
    assert sum(refused for _, _, refused, _ in reports) == 32 - FITS
    assert active_leased_mib(engine) == (FITS, FITS * GRANT_MIB)


CHILD = """
import os, signal, sys
from gpuhistory.clock import FakeClock
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.leases import LeaseManager
from gpuhistory.storage.engine import make_engine

engine = make_engine(sys.argv[1])
lease, token = LeaseManager(engine, sys.argv[2], FakeClock(int(sys.argv[3])),
                            lambda: DEFAULT_CONFIG).grant("survivor", 1000, ttl_seconds=600)
print(token, lease.expires_ms, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no dispose, no checkpoint, no atexit
"""


def test_an_acknowledged_grant_survives_sigkill(db_url: str, engine: sa.Engine,
                                                card: int) -> None:
    """A process killed with SIGKILL right after grant() returned: on reopening, the lease
    is there with its expiry and token hash — a grant is durable once acknowledged."""
    engine.dispose()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, db_url, HOST, str(START_MS)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    token, expires_ms = child.stdout.split()
    reopened = make_engine(db_url)
    try:
        lease = manager(reopened).get("survivor")
        assert lease.expires_ms == int(expires_ms) == START_MS + 600_000
        assert lease.status(START_MS) == "active"
        with reopened.connect() as conn:
            stored = conn.execute(sa.text(
                "SELECT token_hash FROM leases WHERE allocation_id = 'survivor'")).scalar_one()
        assert stored == hash_token(token)
    finally:
        reopened.dispose()
