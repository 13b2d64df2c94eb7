"""Lease state transitions that cannot cross: every write re-checks its precondition under
the lock it holds, so an acknowledged renewal is never recorded as expired at its old
expiry, and an expired lease's memory is never handed out while a renewal of it commits.

Each race is reproduced deterministically: the renewal's transaction is held open at its
commit (an engine ``commit`` hook) while a grant or the reaper, on another engine, reaches
the lease after its old expiry; the test waits until that writer is really blocked on the
renewal's lock before letting the renewal commit.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from gpuhistory.clock import FakeClock, iso_utc
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.leases import LeaseManager, LeaseNotActive, OverCapacity
from gpuhistory.storage.engine import make_engine
from gpuhistory.storage.log import LogStore
from tests.test_leases import HOST, RESERVE_MIB, add_gpu

pytestmark = pytest.mark.postgres

CARD_MIB = 10_000 + RESERVE_MIB
WHOLE_CARD = 10_000
TTL_S = 10


@pytest.fixture
def card(store: LogStore, clock: FakeClock) -> int:
    return add_gpu(store, clock, total=CARD_MIB)


@pytest.fixture
def other_engine(db_url: str, engine: sa.Engine) -> Iterator[sa.Engine]:
    """A second engine on the test's database: another process's connections (on SQLite it
    does not share the first engine's in-process writer lock)."""
    second = make_engine(db_url)
    yield second
    second.dispose()


class HeldCommit:
    """Holds the commit of transactions of ``thread_name`` on ``engine`` until released."""

    def __init__(self, engine: sa.Engine, thread_name: str) -> None:
        self.engine, self.thread_name = engine, thread_name
        self.reached, self.go = threading.Event(), threading.Event()
        sa.event.listen(engine, "commit", self._hold)

    def _hold(self, conn: sa.Connection) -> None:
        if threading.current_thread().name == self.thread_name:
            self.reached.set()
            assert self.go.wait(30), "the held commit was never released"

    def remove(self) -> None:
        self.go.set()
        sa.event.remove(self.engine, "commit", self._hold)


def wait_until_blocked(engine: sa.Engine, database: str, thread: threading.Thread) -> None:
    """Until ``thread`` waits for the lock the held transaction has (PostgreSQL: a backend
    of the database waits on a lock; SQLite: the thread is inside its ``BEGIN IMMEDIATE``).
    Bounded polling, never a fixed sleep."""
    deadline = time.monotonic() + 30
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            assert thread.is_alive(), "the other writer finished without waiting"
            if database == "postgresql":
                blocked = conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'")).scalar_one() > 0
                # PostgreSQL takes one snapshot of pg_stat_activity per transaction: end it,
                # or every later poll sees the first one again (taken, under load, before
                # the other writer reached its lock).
                conn.rollback()
            else:
                frame = sys._current_frames().get(thread.ident)
                blocked = False
                while frame is not None and not blocked:
                    blocked = frame.f_code.co_name == "_sqlite_on_begin"
                    frame = frame.f_back
            if blocked:
                return
            time.sleep(0.005)
    raise AssertionError("the other writer never waited for the held transaction's lock")


def run_in_thread(name: str, call: Callable[[], Any]) -> tuple[threading.Thread, dict]:
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:  # examined by the test
            result["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread, result


def lease_events(engine: sa.Engine, kind: str) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT payload FROM events WHERE kind = :k ORDER BY id"),
                            {"k": kind}).scalars().all()
    return [p if isinstance(p, dict) else json.loads(p) for p in rows]


@pytest.mark.parametrize("expirer", ["grant", "reap"])
def test_renewal_racing_an_expiry_is_not_recorded_expired_at_its_old_expiry(
        expirer: str, database: str, engine: sa.Engine, other_engine: sa.Engine,
        card: int, clock: FakeClock) -> None:
    """A renewal acknowledged just before the old expiry, whose commit is held while a grant
    (or the reaper) reaches the lease after that expiry and waits for its lock: the renewal
    holds (active, new expiry, no ``lease_expired``), and the grant of the whole card is
    refused — the renewed lease's memory is not promised twice."""
    renewer = LeaseManager(engine, HOST, clock, lambda: DEFAULT_CONFIG)
    other = LeaseManager(other_engine, HOST, clock, lambda: DEFAULT_CONFIG)
    lease, token = renewer.grant("held", WHOLE_CARD, ttl_seconds=TTL_S)
    clock.set(lease.expires_ms - 1)  # still active for one millisecond

    held = HeldCommit(engine, "renewer")
    try:
        renewing, renewed = run_in_thread(
            "renewer", lambda: renewer.renew("held", token, ttl_seconds=60))
        assert held.reached.wait(30), "the renewal never reached its commit"
        clock.set(lease.expires_ms + 1)  # the old expiry has passed
        racing, raced = run_in_thread(
            expirer, (lambda: other.grant("newcomer", WHOLE_CARD, ttl_seconds=TTL_S))
            if expirer == "grant" else other.reap)
        wait_until_blocked(engine, database, racing)
        held.go.set()
        renewing.join(30)
        racing.join(30)
    finally:
        held.remove()
    assert "error" not in renewed, renewed
    assert renewed["value"].expires_ms == lease.expires_ms - 1 + 60_000
    now = clock.now_ms()
    stored = renewer.get("held")
    assert (stored.status(now), stored.expires_ms) == ("active", renewed["value"].expires_ms)
    assert lease_events(engine, "lease_expired") == []
    if expirer == "grant":
        assert isinstance(raced.get("error"), OverCapacity), raced
        assert renewer.capacity(0).leased_mb == WHOLE_CARD
    else:
        assert raced == {"value": 0}


def test_expiry_racing_a_renewal_refuses_the_renewal(
        database: str, engine: sa.Engine, other_engine: sa.Engine, card: int,
        clock: FakeClock) -> None:
    """The other order: the reaper records the expiry first and its commit is held while a
    renewal reaches the lease; the renewal is refused (409 ``lease_not_active``), never
    acknowledged over a recorded expiry."""
    reaper = LeaseManager(engine, HOST, clock, lambda: DEFAULT_CONFIG)
    renewer = LeaseManager(other_engine, HOST, clock, lambda: DEFAULT_CONFIG)
    lease, token = reaper.grant("late", 1000, ttl_seconds=TTL_S)
    clock.set(lease.expires_ms)  # due now

    held = HeldCommit(engine, "reaper")
    try:
        reaping, reaped = run_in_thread("reaper", reaper.reap)
        assert held.reached.wait(30), "the reaper never reached its commit"
        renewing, renewed = run_in_thread(
            "renewer", lambda: renewer.renew("late", token, ttl_seconds=60))
        wait_until_blocked(engine, database, renewing)
        held.go.set()
        reaping.join(30)
        renewing.join(30)
    finally:
        held.remove()
    assert reaped == {"value": 1}
    assert isinstance(renewed.get("error"), LeaseNotActive), renewed
    stored = reaper.get("late")
    assert (stored.release_reason, stored.released_ms) == ("expired", lease.expires_ms)
    assert [e["expires_at"] for e in lease_events(engine, "lease_expired")] == [
        iso_utc(lease.expires_ms)]
    assert lease_events(engine, "lease_renewed") == []
