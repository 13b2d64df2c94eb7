"""The status projection: the latest state of every GPU in the database, kept in memory.

Each process that answers status questions keeps one :class:`StatusProjection`, built from
the log at start (:meth:`StatusProjection.rebuild`) and kept current from it:

- the sampler of this process calls :meth:`sync` after each commit, so the next status
  answer of the same process includes that tick;
- a request calls :meth:`refresh` with the time now; at most once per ``interval`` (and
  immediately the first time) it asks the log "anything newer?" — one statement giving
  each GPU row's newest sample time and the newest event id — and then reads only what
  changed: the entries and running processes of the GPUs whose newest sample moved (all
  GPUs' processes when an event was added: a stop ends processes without a sample), and
  the unreleased leases. So an answer includes a commit of another process at most one
  ``interval`` after it (**never staler than one tick**);
- a lease granted, renewed or released through this process calls :meth:`leases_changed`:
  the next answer reads the unreleased leases again (one statement), so this process's
  own lease changes are exact on the next answer; another process's are seen within one
  interval, like its samples. Lease totals count the leases whose ``expires_ms`` is after
  the time asked about, so an expiry needs no read.

In the steady state (nothing new, within the interval) an answer runs no SQL at all and
costs O(1) Python per GPU. Past times (``status?at=``) keep reading the log.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa

from gpuhistory.domain.slots import card_at
from gpuhistory.storage.processes import running_processes
from gpuhistory.storage.queries import LatestSample
from gpuhistory.storage.status_reads import (
    LeaseRow,
    entries_of,
    newest_marks,
    unreleased_leases,
)

Slot = tuple[str, int]


class StatusProjection:
    """Every GPU row's newest entry, running processes and unreleased leases."""

    def __init__(self, engine: sa.Engine, interval_s: Callable[[], float] | float) -> None:
        self.engine = engine
        self._interval_s = interval_s
        self._lock = threading.RLock()
        self._entries: dict[int, LatestSample] = {}  # gpus.id → entry
        self._slots: dict[Slot, list[LatestSample]] = {}  # (host, index) → its cards
        self._order: list[Slot] = []  # the slots, ordered by host and index
        self._processes: dict[int, list[dict[str, Any]]] = {}
        self._leases: list[LeaseRow] = []
        self._event_id = 0
        self._checked_ms: int | None = None  # when the log was last asked
        self._leases_stale = True
        self.reads = 0  # how many times the log was read (refresh checks that found work)

    @property
    def interval_ms(self) -> int:
        """How long an answer may go without asking the log (the sampling interval)."""
        seconds = self._interval_s() if callable(self._interval_s) else self._interval_s
        return max(1, round(float(seconds) * 1000))

    # -- keeping current ---------------------------------------------------------------
    def rebuild(self, now_ms: int) -> None:
        """Read everything again from the log (at start, and in tests)."""
        with self._lock, self.engine.connect() as conn:
            marks = newest_marks(conn)
            entries = entries_of(conn, None)
            self._entries = {e.gpu.id: e for e in entries}
            self._processes = running_processes(conn, self._entries)
            self._leases = unreleased_leases(conn)
            self._event_id = marks.event_id
            self._leases_stale = False
            self._checked_ms = now_ms
            self._reslot()
            self.reads += 1

    def refresh(self, now_ms: int) -> bool:
        """Follow the log when ``interval`` has passed since it was last asked (or the
        clock went back); True when it was asked."""
        checked = self._checked_ms  # read without the lock: the usual answer is "not due"
        if (checked is not None and 0 <= now_ms - checked < self.interval_ms
                and not self._leases_stale):
            return False
        with self._lock:
            due = (self._checked_ms is None or now_ms - self._checked_ms >= self.interval_ms
                   or now_ms < self._checked_ms)
            if due:
                self.sync(now_ms)
            elif self._leases_stale:
                with self.engine.connect() as conn:
                    self._leases = unreleased_leases(conn)
                self._leases_stale = False
            return due

    def sync(self, now_ms: int) -> None:
        """Ask the log what is newer than what is held, and read only that (the sampler
        calls this after each commit)."""
        with self._lock:
            if self._checked_ms is None:
                self.rebuild(now_ms)
                return
            with self.engine.connect() as conn:  # all read before anything changes
                marks = newest_marks(conn)
                held = self._entries
                changed = [gpu_id for gpu_id, ts in marks.newest_ms.items()
                           if gpu_id not in held or held[gpu_id].ts_ms != ts]
                gone = [gpu_id for gpu_id in held if gpu_id not in marks.newest_ms]
                evented = marks.event_id != self._event_id
                fresh = entries_of(conn, changed) if changed else []
                ids = [i for i in held if i not in gone] + [
                    e.gpu.id for e in fresh if e.gpu.id not in held]
                # a stop ends processes without a sample: then read them all
                processes = (running_processes(conn, ids) if evented
                             else running_processes(conn, changed) if changed else {})
                leases = unreleased_leases(conn)
            for entry in fresh:
                self._entries[entry.gpu.id] = entry
            for gpu_id in gone:
                self._entries.pop(gpu_id, None)
                self._processes.pop(gpu_id, None)
            if evented:
                self._processes = processes
            else:
                self._processes.update(processes)
            self._leases = leases
            self._leases_stale = False
            self._event_id = marks.event_id
            self._checked_ms = now_ms
            if changed or gone:
                self._reslot()
            self.reads += 1

    def leases_changed(self) -> None:
        """A lease of this process changed: the next answer reads the leases again."""
        with self._lock:
            self._leases_stale = True

    def _reslot(self) -> None:
        slots: dict[Slot, list[LatestSample]] = {}
        for entry in self._entries.values():
            slots.setdefault((entry.gpu.host, entry.gpu.index), []).append(entry)
        self._slots = slots
        self._order = sorted(slots)

    # -- answers -----------------------------------------------------------------------
    def entries(self, host: str | None, now_ms: int,
                gpu_index: int | None = None) -> list[LatestSample]:
        """Each slot on ``host`` (None: every host), ordered by host and index, with the
        card in it at ``now_ms`` (the rule of gpuhistory.domain.slots) — as
        ``latest_samples(conn, host, gpu_index, now_ms=now_ms)`` answers from the log."""
        with self._lock:
            slots, order = self._slots, self._order
        found = []
        for slot in order:
            if (host is not None and slot[0] != host) or (
                    gpu_index is not None and slot[1] != gpu_index):
                continue
            cards = slots[slot]
            if len(cards) == 1:
                found.append(cards[0])
            else:
                chosen = card_at([c.gpu for c in cards], now_ms)
                found.append(next(c for c in cards if c.gpu.id == chosen.id))
        return found

    def processes(self, gpu_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
        """gpus.id → the processes running on it (a copy of each list)."""
        with self._lock:
            held = self._processes
        return {gpu_id: [dict(p) for p in held.get(gpu_id, ())] for gpu_id in gpu_ids}

    def lease_usage(self, now_ms: int) -> dict[int, tuple[int, int]]:
        """gpus.id → (MiB leased, active leases) at ``now_ms``: the unreleased leases not
        yet expired — what ``LeaseManager.capacities`` sums in SQL."""
        with self._lock:
            held = self._leases
        usage: dict[int, tuple[int, int]] = {}
        for lease in held:
            if lease.expires_ms > now_ms:
                mib, count = usage.get(lease.gpu_id, (0, 0))
                usage[lease.gpu_id] = (mib + lease.memory_mib, count + 1)
        return usage
