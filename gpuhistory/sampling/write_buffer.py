"""Ticks the log cannot take yet: kept in memory in order, retried, the oldest dropped.

When a tick's transaction fails because the database cannot take a write (locked by
another writer past the busy timeout, disk full, file read-only, server down: an
OperationalError), the tick is kept here and retried, oldest first, before each later tick.
At most ``capacity`` ticks are kept; past that the oldest is dropped — its samples and
throttle-counter rows are lost, while its transitions, events and process rows are kept
and written first once the log takes writes again, so the state log and the post-mortems
stay whole. (Those kept rows are bounded too; past that bound they are dropped and the
sampler rebuilds its classification state from the log.) A retry waits for a lock as
long as any write does (the busy timeout): a shorter wait lost the lock, tick after tick,
to lease writers polling for it on a busy machine, and the log never caught up.

A tick that fails for any other reason can never be written (a conflict, a bug): it is
dropped at once, with the error logged, so it cannot block the ticks behind it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from gpuhistory.storage.engine import unavailable_reason
from gpuhistory.storage.log import LogStore, TickRecord

log = logging.getLogger(__name__)

STORAGE_ERRORS = (sa.exc.OperationalError, sa.exc.TimeoutError)  # retryable: keep the tick
CARRIED_ROWS_PER_TICK = 64  # carried rows allowed per tick of capacity (and at least 4096)


@dataclass
class Outage:
    """One period in which the log could not take the sampler's writes."""

    since_ms: int
    error: str
    reason: str
    buffered: int = 0  # ticks that waited in the buffer and were written in the end
    dropped: int = 0  # ticks whose samples were lost
    first_dropped_ms: int | None = None
    last_dropped_ms: int | None = None
    state_lost: bool = False  # carried transitions/events had to be dropped too
    ended_ms: int | None = None


@dataclass
class Written:
    """A tick that reached the log, with the ids of its events (for callbacks)."""

    record: TickRecord
    event_ids: list[int] = field(default_factory=list)


def _carry(into: TickRecord, dropped: TickRecord) -> None:
    """Add what must survive of a dropped tick (all but samples and counter rows)."""
    into.transitions.extend(dropped.transitions)
    into.events.extend(dropped.events)
    into.drafts.extend(dropped.drafts)
    into.processes.extend(dropped.processes)
    into.process_updates.extend(dropped.process_updates)


def _carried_rows(record: TickRecord) -> int:
    return (len(record.transitions) + len(record.events) + len(record.processes)
            + len(record.process_updates))


def _tick_ms(record: TickRecord) -> int | None:
    return record.samples[0]["ts_ms"] if record.samples else None


class WriteBuffer:
    """The sampler's path to the log: write now, or keep and retry in order."""

    def __init__(self, store: LogStore, capacity: Callable[[], int] | int = 300) -> None:
        self.store = store
        self._capacity = capacity
        self._pending: deque[TickRecord] = deque()
        # Rows of dropped ticks that must survive; written before the ticks still waiting.
        self._carried: TickRecord | None = None
        self.outage: Outage | None = None
        self.dropped_total = 0

    @property
    def capacity(self) -> int:
        return max(0, int(self._capacity() if callable(self._capacity) else self._capacity))

    @property
    def waiting(self) -> int:
        """Ticks kept in memory, not yet in the log."""
        return len(self._pending)

    def submit(self, record: TickRecord, now_ms: int) -> list[Written]:
        """Queue a tick behind any waiting ones and write as many as the log takes, in
        order. Returns those written; the rest wait (up to the capacity) for a later call."""
        self._pending.append(record)
        written = self.flush(now_ms, fresh=record)
        self._trim()
        return written

    def add(self, record: TickRecord) -> None:
        """Queue a tick behind the waiting ones without writing (a writer thread's
        :meth:`flush` writes it), dropping the oldest beyond the capacity."""
        self._pending.append(record)
        self._trim()

    def flush(self, now_ms: int, fresh: TickRecord | None = None) -> list[Written]:
        """Write what waits, oldest first, until a write fails or nothing is left."""
        written: list[Written] = []
        retried = False
        while self._carried is not None or self._pending:
            record = self._carried if self._carried is not None else self._pending[0]
            try:
                ids = self.store.write(record)
            except STORAGE_ERRORS as exc:
                if getattr(exc, "connection_invalidated", False) and not retried:
                    retried = True  # a stale connection (opened read-only) was discarded:
                    continue  # once more on a fresh one
                self._failed(exc, now_ms)
                break
            except Exception:  # this tick can never be written: drop it, keep the rest going
                log.exception("a tick could not be written and is dropped")
                self._take(record)
                if record.samples:
                    self._note_dropped(_tick_ms(record))
                continue
            self._take(record)
            written.append(Written(record, ids))
            if self.outage is not None and record.samples and record is not fresh:
                self.outage.buffered += 1
        if self.outage is not None and self._carried is None and not self._pending:
            self.outage.ended_ms = now_ms
        return written

    def end_outage(self) -> Outage | None:
        """The outage that just ended (everything waiting is written), if one did."""
        outage = self.outage
        if outage is None or outage.ended_ms is None:
            return None
        self.outage = None
        log.warning("the log takes writes again after %.1f s (%s): %d waiting tick(s) "
                    "written, %d dropped", (outage.ended_ms - outage.since_ms) / 1000,
                    outage.error, outage.buffered, outage.dropped)
        return outage

    def count_lost(self, ts_ms: int, error: BaseException) -> None:
        """A tick that could not even be classified (its ``gpus`` row could not be
        written): nothing to keep, but it counts as dropped in the outage."""
        self._failed(error, ts_ms)
        log.error("a tick is lost: a GPU could not be registered (%s)", error)
        self._note_dropped(ts_ms, full=False)

    # -- internals -----------------------------------------------------------------------
    def _take(self, record: TickRecord) -> None:
        if record is self._carried:
            self._carried = None
        else:
            self._pending.popleft()

    def _failed(self, exc: BaseException, now_ms: int) -> None:
        error = f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}"
        if self.outage is None:
            self.outage = Outage(since_ms=now_ms, error=error, reason=unavailable_reason(exc))
            log.error("the log cannot take writes (%s); keeping up to %d tick(s) in memory",
                      error, self.capacity)
        else:
            self.outage.error, self.outage.reason = error, unavailable_reason(exc)
            self.outage.ended_ms = None

    def _trim(self) -> None:
        """Drop the oldest waiting ticks beyond the capacity, carrying what must survive."""
        capacity = self.capacity
        while len(self._pending) > capacity:
            record = self._pending.popleft()
            self._note_dropped(_tick_ms(record))
            rows = _carried_rows(record)
            if not rows:
                continue
            carried = self._carried if self._carried is not None else TickRecord()
            if _carried_rows(carried) + rows <= max(4096, CARRIED_ROWS_PER_TICK * capacity):
                _carry(carried, record)
                self._carried = carried
            elif self.outage is not None:
                self.outage.state_lost = True

    def _note_dropped(self, ts_ms: int | None, full: bool = True) -> None:
        self.dropped_total += 1
        outage = self.outage
        if outage is None:
            return
        if outage.dropped == 0 and full:
            log.error("write buffer full (%d tick(s)): dropping the oldest", self.capacity)
        outage.dropped += 1
        if ts_ms is not None:
            outage.first_dropped_ms = (ts_ms if outage.first_dropped_ms is None
                                       else min(outage.first_dropped_ms, ts_ms))
            outage.last_dropped_ms = max(outage.last_dropped_ms or ts_ms, ts_ms)
