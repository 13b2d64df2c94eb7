"""Whether monitoring should run: the last start/stop an operator asked for, from the log.

``POST /api/gpu/monitoring/stop`` is persisted as a ``monitoring_stopped`` event with
``requested_by``; a restarted service honours the newest such request.
"""

from __future__ import annotations

import sqlalchemy as sa

from gpuhistory.domain.events import EventKind
from gpuhistory.storage.schema import events

KINDS = (str(EventKind.MONITORING_STARTED), str(EventKind.MONITORING_STOPPED))


def last_request(conn: sa.Connection, scan: int = 1000) -> tuple[str, int] | None:
    """(kind, ts_ms) of the newest start/stop that someone asked for, if any.

    Scans the newest ``scan`` start/stop events (index on (kind, id)); events written by the
    service itself (on start-up and shutdown) carry no ``requested_by`` and are skipped.
    """
    rows = conn.execute(
        sa.select(events.c.kind, events.c.ts_ms, events.c.payload)
        .where(events.c.kind.in_(KINDS)).order_by(events.c.id.desc()).limit(scan)
    )
    for kind, ts_ms, payload in rows:
        if (payload or {}).get("requested_by"):
            return kind, ts_ms
    return None


def should_monitor(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        request = last_request(conn)
    return request is None or request[0] == str(EventKind.MONITORING_STARTED)
