"""What alerts and chat messages say beside the event: the dashboard page to open and the
GPU's state at the time, read from the log."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from gpuhistory.domain.states import GPUState
from gpuhistory.storage.schema import incidents, transitions

INCIDENT_SLACK_MS = 60_000  # an incident starting this close to the event is its incident


def dashboard_link(conn: sa.Connection, base: str | None, row: Any) -> str | None:
    """The dashboard page for an event (None without a base URL or a GPU): the post-mortem
    of the overheat incident around it when one has been detected, else the GPU's history
    of the last hour."""
    if base is None or row.gpu_index is None:
        return None
    incident = conn.execute(
        sa.select(incidents.c.id)
        .where(incidents.c.gpu_id == row.gpu_row,
               incidents.c.start_ms <= row.ts_ms + INCIDENT_SLACK_MS,
               sa.or_(incidents.c.end_ms.is_(None), incidents.c.end_ms >= row.ts_ms))
        .order_by(incidents.c.start_ms.desc()).limit(1)).scalar()
    if incident is not None:
        return f"{base}/#/incidents/{incident}"
    return f"{base}/#/history/{row.gpu_index}?range=1h"


def state_at(conn: sa.Connection, row: Any) -> str | None:
    """The GPU's state just after the event (its last transition at or before it)."""
    if row.gpu_row is None:
        return None
    state = conn.execute(
        sa.select(transitions.c.to_state)
        .where(transitions.c.gpu_id == row.gpu_row, transitions.c.ts_ms <= row.ts_ms)
        .order_by(transitions.c.ts_ms.desc(), transitions.c.id.desc()).limit(1)).scalar()
    return None if state is None else GPUState(state).name
