"""The fair pool (gpuhistory/storage/fair_pool.py): connections go to waiting threads in
the order they asked, so a thread that gives the sampler's one connection back and asks
again at once (a maintenance job, once per GPU) cannot keep a waiting tick out; a
timeout still raises the pool's TimeoutError and leaves the pool whole. The waits here
are real ones on the pool, ended by the other thread, never by a clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.service import ServeSettings, Service
from gpuhistory.storage.engine import make_engine
from gpuhistory.storage.fair_pool import FairGate, FairQueuePool
from tests.conftest import FLEET4

pytestmark = pytest.mark.postgres


def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait for another thread to reach a state (polled; not a timing assumption)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the other thread never got there"
        time.sleep(0.001)


def test_the_gate_grants_in_arrival_order() -> None:
    gate = FairGate(1)
    assert gate.acquire(0)
    order: list[int] = []
    threads = []
    for n in range(3):
        def wait(n: int = n) -> None:
            assert gate.acquire(10)
            order.append(n)
            gate.release()
        threads.append(threading.Thread(target=wait))
        threads[-1].start()
        until(lambda n=n: gate.waiting == n + 1)  # each queued before the next starts
    gate.release()
    for thread in threads:
        thread.join()
    assert order == [0, 1, 2]
    assert gate.acquire(0)  # every pass came back


def returner_and_waiter(engine: sa.Engine) -> list[str]:
    """The holder of the one connection returns it while another thread waits for it, and
    asks again at once: who gets it first?"""
    pool = engine.pool
    order: list[str] = []
    holder = engine.connect()
    holder.execute(sa.text("SELECT 1"))

    def waiter() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            order.append("waiter")

    thread = threading.Thread(target=waiter)
    thread.start()
    if isinstance(pool, FairQueuePool):
        assert pool._gate is not None
        until(lambda: pool._gate.waiting == 1)  # type: ignore[union-attr]
    else:
        time.sleep(0.2)  # QueuePool tells nothing of its waiters: give it time to wait
    holder.close()
    with engine.connect() as conn:  # at once, from the thread that gave it back
        conn.execute(sa.text("SELECT 1"))
        order.append("returner")
    thread.join()
    return order


def test_a_waiting_thread_is_served_before_one_that_asks_again(db_url: str,
                                                               engine: sa.Engine) -> None:
    fair = make_engine(db_url, pool_size=1, max_overflow=0, poolclass=FairQueuePool)
    try:
        assert returner_and_waiter(fair) == ["waiter", "returner"]
    finally:
        fair.dispose()


def test_a_timeout_raises_and_leaves_the_pool_whole(db_url: str, engine: sa.Engine) -> None:
    fair = make_engine(db_url, pool_size=1, max_overflow=0, poolclass=FairQueuePool,
                       pool_timeout=0.05)
    try:
        holder = fair.connect()
        with pytest.raises(sa.exc.TimeoutError):
            fair.connect()
        holder.close()
        with fair.connect() as conn:  # the pass of the timed-out wait was not lost
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
        assert fair.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        fair.dispose()


def test_a_disposed_engine_gets_a_fair_pool_again(db_url: str, engine: sa.Engine) -> None:
    fair = make_engine(db_url, pool_size=1, max_overflow=0, poolclass=FairQueuePool)
    try:
        fair.dispose()
        assert isinstance(fair.pool, FairQueuePool) and fair.pool._gate is not None
        assert returner_and_waiter(fair) == ["waiter", "returner"]
    finally:
        fair.dispose()


def test_a_samplers_one_connection_is_handed_out_fairly(db_url: str, engine: sa.Engine
                                                        ) -> None:
    service = Service(ServeSettings(db=db_url, backend="sim", trace=str(FLEET4),
                                    host_name="node-a"), clock=FakeClock(), role="sampler")
    try:
        assert isinstance(service.engine.pool, FairQueuePool)
        assert returner_and_waiter(service.engine) == ["waiter", "returner"]
    finally:
        service.shutdown()
