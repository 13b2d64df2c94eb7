"""The reads that keep the status projection (gpuhistory/projection.py) current.

A follower asks :func:`newest_marks` ("anything newer?": each GPU row's newest sample time
and the newest event id, one statement), then reads only what changed: the entries of the
GPUs whose newest sample moved (:func:`entries_of`), their running processes, and the
unreleased leases (:func:`unreleased_leases`, a handful of rows on ix_leases_gpu_released).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa

from gpuhistory.storage.queries import LatestSample, _entry, _latest_statement
from gpuhistory.storage.schema import events, gpus, leases, samples


class Marks(NamedTuple):
    """What the log holds now, in brief: gpus.id → newest sample time (None: none yet),
    and the newest event id (0: none)."""

    newest_ms: dict[int, int | None]
    event_id: int


class LeaseRow(NamedTuple):
    """An unreleased lease, as much as totals need: it counts while ``expires_ms > now``."""

    gpu_id: int
    memory_mib: int
    expires_ms: int


_s = samples.alias("newest")
_MARKS = sa.select(
    gpus.c.id,
    sa.select(sa.func.max(_s.c.ts_ms)).where(_s.c.gpu_id == gpus.c.id)
    .correlate(gpus).scalar_subquery().label("newest_ms"),
    sa.select(sa.func.max(events.c.id)).scalar_subquery().label("event_id"),
)
_UNRELEASED = sa.select(leases.c.gpu_id, leases.c.memory_mib, leases.c.expires_ms).where(
    leases.c.released_ms.is_(None))


def newest_marks(conn: sa.Connection) -> Marks:
    """Each GPU row's newest sample time (a seek per GPU on the samples key) and the newest
    event id, in one statement."""
    newest: dict[int, int | None] = {}
    event_id = 0
    for row in conn.execute(_MARKS):
        newest[row.id] = row.newest_ms
        event_id = row.event_id or 0
    if not newest:  # no GPU row yet: the events still say whether anything happened
        event_id = conn.execute(sa.select(sa.func.max(events.c.id))).scalar() or 0
    return Marks(newest, event_id)


def entries_of(conn: sa.Connection, gpu_ids: Sequence[int] | None) -> list[LatestSample]:
    """The GPU rows ``gpu_ids`` (None: every row) with their newest samples and cooldown
    starts, in one statement (the statement of ``latest_samples``, without slot choice)."""
    query = _latest_statement(False, False, one_host=False)
    params: dict[str, Any] = {}
    if gpu_ids is not None:
        if not gpu_ids:
            return []
        query = query.where(gpus.c.id.in_(sa.bindparam("ids", expanding=True)))
        params["ids"] = list(gpu_ids)
    return [_entry(row) for row in conn.execute(query, params)]


def unreleased_leases(conn: sa.Connection) -> list[LeaseRow]:
    """Every unreleased lease (those past their expiry included: totals filter by time)."""
    return [LeaseRow(r.gpu_id, r.memory_mib, r.expires_ms) for r in conn.execute(_UNRELEASED)]
