"""How far the event log can be read without skipping an event that is still to commit.

SQLite has one writer at a time, so ids become visible in order: the horizon is the
largest id. PostgreSQL takes an id from a sequence when a row is inserted, before its
transaction commits, so id 11 can be visible while id 10 is still to come (or never will:
a rolled-back insert leaves a gap for good). There the horizon stops below the first gap
until the gap is filled, or until it has been seen for ``settle_ms`` (then it is taken to
be a rollback and passed over) — the "high water mark" of event stores. An event committed
more than ``settle_ms`` after its id was taken is therefore not delivered; transactions that
write events in this project take milliseconds (a tick, a lease), an import longer.
"""

from __future__ import annotations

import threading

import sqlalchemy as sa

from gpuhistory.clock import Clock
from gpuhistory.storage.schema import events

SETTLE_MS = 10_000
SCAN_IDS = 5_000


class SafeHorizon:
    """``safe_id(after)``: the largest id up to which every event is visible."""

    def __init__(self, engine: sa.Engine, clock: Clock, settle_ms: int = SETTLE_MS,
                 scan_ids: int = SCAN_IDS) -> None:
        self.engine = engine
        self.clock = clock
        self.settle_ms = settle_ms
        self.scan_ids = scan_ids
        self._gaps: dict[int, int] = {}  # first missing id → when the gap was first seen
        self._lock = threading.Lock()

    def newest_id(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0)))
                       .scalar() or 0)

    def safe_id(self, after: int) -> int:
        if self.engine.dialect.name == "sqlite":
            return max(after, self.newest_id())
        with self.engine.connect() as conn:
            ids = conn.execute(sa.select(events.c.id).where(events.c.id > after)
                               .order_by(events.c.id).limit(self.scan_ids)).scalars().all()
        now = self.clock.now_ms()
        safe = after
        with self._lock:
            for event_id in ids:
                if event_id > safe + 1:  # ids safe+1 .. event_id-1 are not visible (yet)
                    seen = self._gaps.setdefault(safe + 1, now)
                    if now - seen < self.settle_ms:
                        break
                safe = event_id
            for start, seen in list(self._gaps.items()):  # settled long ago: forget
                if now - seen > 10 * self.settle_ms:
                    del self._gaps[start]
        return safe
