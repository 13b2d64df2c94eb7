"""A connection pool that serves waiting threads in the order they asked.

SQLAlchemy's QueuePool is not fair: a thread that gives a connection back and asks again
at once (a maintenance job taking the connection once per GPU) gets it again before a
thread already waiting for it wakes up. A ``sampler`` shares one connection between its
tick and its jobs (docs/fleet.md#connections), so with QueuePool a tick waited for a
job's whole run — seconds — instead of one of its short transactions, and the scheduler
skipped the ticks that fell due meanwhile.

FairQueuePool puts a gate in front of QueuePool: as many passes as the pool can hand out
connections (``pool_size + max_overflow``); a thread takes a pass before it takes a
connection and gives it back after the connection is returned; a returned pass goes
straight to the longest-waiting thread. Used for pools with a limit; with no limit
(``max_overflow=-1``, ``pool_size=0``) there is nothing to wait for and no gate.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from sqlalchemy import exc
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool


class FairGate:
    """A counting semaphore that grants in arrival order (hand-over, no barging)."""

    def __init__(self, passes: int) -> None:
        self._lock = threading.Lock()
        self._free = passes
        self._waiting: deque[threading.Event] = deque()

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def acquire(self, timeout: float | None) -> bool:
        """Take a pass; False when none came within ``timeout`` seconds."""
        with self._lock:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return True
            turn = threading.Event()
            self._waiting.append(turn)
        if turn.wait(timeout):
            return True
        with self._lock:
            if turn.is_set():  # handed over just as the wait ran out
                return True
            self._waiting.remove(turn)
            return False

    def release(self) -> None:
        """Give a pass back: to the first waiting thread, else to the free count."""
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._free += 1


class FairQueuePool(QueuePool):
    """QueuePool whose waiting threads get connections first come, first served."""

    def __init__(self, creator: Any, pool_size: int = 5, max_overflow: int = 10,
                 timeout: float = 30.0, **kw: Any) -> None:
        super().__init__(creator, pool_size=pool_size, max_overflow=max_overflow,
                         timeout=timeout, **kw)
        limited = pool_size > 0 and max_overflow >= 0
        self._gate = FairGate(pool_size + max_overflow) if limited else None

    def _do_get(self) -> ConnectionPoolEntry:
        if self._gate is None:
            return super()._do_get()
        if not self._gate.acquire(self._timeout):
            raise exc.TimeoutError(
                f"FairQueuePool limit of size {self.size()} overflow {self._max_overflow} "
                f"reached, connection timed out, timeout {self._timeout:0.2f}", code="3o7r")
        try:
            return super()._do_get()
        except BaseException:
            self._gate.release()
            raise

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            super()._do_return_conn(record)
        finally:
            if self._gate is not None:
                self._gate.release()


__all__ = ["FairGate", "FairQueuePool"]
