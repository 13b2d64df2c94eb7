"""Which events a webhook delivers, as SQL: its kinds, its GPUs, this host.

A webhook of host H delivers the events of H's GPUs and the events that have no GPU
(``service_started``, ``config_changed``, ...); with ``gpus`` set, only the events of those
GPUs of H (by index or UUID). One statement serves the deliverer (a page after the cursor)
and the API (the lag).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from gpuhistory.alerts.config import ALL_KINDS
from gpuhistory.storage.schema import events, gpus

_E = events.c
_G = gpus.c


def event_filter(kinds: Sequence[str], gpu_refs: Sequence[int | str] | None,
                 host: str) -> list[sa.ColumnElement[bool]]:
    """WHERE conditions (over events LEFT JOIN gpus) for a webhook's events."""
    conditions: list[sa.ColumnElement[bool]] = []
    if ALL_KINDS not in kinds:
        conditions.append(_E.kind.in_(list(kinds)))
    if gpu_refs is None:
        conditions.append(sa.or_(_E.gpu_id.is_(None), _G.host == host))
    else:
        indexes = [g for g in gpu_refs if isinstance(g, int)]
        uuids = [g for g in gpu_refs if isinstance(g, str)]
        which = []
        if indexes:
            which.append(_G.gpu_index.in_(indexes))
        if uuids:
            which.append(_G.uuid.in_(uuids))
        conditions += [_G.host == host, sa.or_(*which)]
    return conditions


EVENTS_AND_GPUS = events.outerjoin(gpus, _G.id == _E.gpu_id)


def select_rows() -> sa.Select[Any]:
    """Events with their GPU's row: what every webhook format renders an event from."""
    return (
        sa.select(_E.id, _E.ts_ms, _E.kind, _E.payload, _E.gpu_id.label("gpu_row"),
                  _G.gpu_index, _G.uuid, _G.name.label("gpu_name"), _G.host.label("gpu_host"))
        .select_from(EVENTS_AND_GPUS)
    )


def select_events(kinds: Sequence[str], gpu_refs: Sequence[int | str] | None, host: str,
                  after_id: int, upto_id: int, limit: int) -> sa.Select[Any]:
    """The webhook's events with ``after_id < id <= upto_id``, oldest first."""
    return (
        select_rows()
        .where(_E.id > after_id, _E.id <= upto_id, *event_filter(kinds, gpu_refs, host))
        .order_by(_E.id)
        .limit(limit)
    )


def count_events(kinds: Sequence[str], gpu_refs: Sequence[int | str] | None, host: str,
                 after_id: int, cap: int) -> sa.Select[Any]:
    """How many of the webhook's events come after ``after_id`` (counted up to ``cap``),
    and the time of the oldest."""
    page = (
        sa.select(_E.id, _E.ts_ms)
        .select_from(events.outerjoin(gpus, _G.id == _E.gpu_id))
        .where(_E.id > after_id, *event_filter(kinds, gpu_refs, host))
        .order_by(_E.id)
        .limit(cap)
        .subquery()
    )
    return sa.select(sa.func.count(), sa.func.min(page.c.ts_ms))
