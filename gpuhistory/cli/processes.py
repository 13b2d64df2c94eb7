"""The compute processes under each GPU for ``status -p``, read from the log's
``gpu_processes`` table (gpuhistory/sampling/hardware.py records them)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from gpuhistory.storage.schema import gpu_processes

USER_COLUMNS = ("user", "username")  # the process's owner, where the log records one


def running_processes(conn: sa.Connection, gpus: Iterable[tuple[int, str, int]],
                      at_ms: int | None = None) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """``(host, gpu index)`` → the processes running on it now (or at ``at_ms``), the
    largest first: pid, name, used_memory_mb and, when the log has it, user. ``gpus``:
    (gpus.id, host, index) of each GPU asked about."""
    rows = {row_id: (host, index) for row_id, host, index in gpus}
    out: dict[tuple[str, int], list[dict[str, Any]]] = {key: [] for key in rows.values()}
    if not rows:
        return out
    p = gpu_processes.c
    user = next((p[name] for name in USER_COLUMNS if name in p), None)
    alive = p.ended_ms.is_(None) if at_ms is None else sa.and_(
        p.first_seen_ms <= at_ms, sa.or_(p.ended_ms.is_(None), p.ended_ms >= at_ms))
    columns = [p.gpu_id, p.pid, p.name, p.used_memory_mib]
    if user is not None:
        columns.append(user.label("user"))
    query = (sa.select(*columns).where(p.gpu_id.in_(list(rows)), alive)
             .order_by(p.gpu_id, p.used_memory_mib.desc().nulls_last(), p.pid))
    for r in conn.execute(query):
        doc = {"pid": r.pid, "name": r.name, "used_memory_mb": r.used_memory_mib}
        if user is not None:
            doc["user"] = r.user
        out[rows[r.gpu_id]].append(doc)
    return out
