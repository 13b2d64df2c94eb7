"""Reading the compute processes the log records (``gpu_processes``): what ran on which
GPU, whose it was, where it ran (Slurm job, container, pod, systemd unit), when, and the
most memory it held. The sampler writes them (gpuhistory/sampling/hardware.py)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gpuhistory.clock import iso_utc
from gpuhistory.storage.schema import gpu_processes, gpus

_p = gpu_processes.c
_g = gpus.c
_UID = re.compile(r"\d{1,10}", re.ASCII)
MAX_UID = 2**31 - 1  # gpu_processes.uid is a 32-bit integer


def process_doc(row: Any) -> dict[str, Any]:
    """One process lifetime as the API, the CLI and post-mortems show it: unknown
    attribution is null; ``used_memory_mb`` is the most it held (MiB)."""
    return {
        "pid": row.pid,
        "name": row.name,
        "user": row.user_name,
        "uid": row.uid,
        "used_memory_mb": row.used_memory_mib,
        "slurm_job_id": row.slurm_job_id,
        "slurm_step": row.slurm_step,
        "container_id": row.container_id,
        "pod_uid": row.pod_uid,
        "systemd_unit": row.systemd_unit,
        "first_seen_at": iso_utc(row.first_seen_ms),
        "last_seen_at": iso_utc(row.last_seen_ms),
        "ended_at": iso_utc(row.ended_ms),
        "running": row.ended_ms is None,
    }


def _alive(at_ms: int | None) -> sa.ColumnElement[bool]:
    """Running now (the row not ended), or alive at ``at_ms``."""
    if at_ms is None:
        return _p.ended_ms.is_(None)
    return sa.and_(_p.first_seen_ms <= at_ms,
                   sa.or_(_p.ended_ms.is_(None), _p.ended_ms >= at_ms))


def running_processes(conn: sa.Connection, gpu_ids: Iterable[int],
                      at_ms: int | None = None) -> dict[int, list[dict[str, Any]]]:
    """gpus.id → the processes running on it now (or alive at ``at_ms``), the largest
    first; every id asked about has a list, empty when nothing runs."""
    ids = list(gpu_ids)
    out: dict[int, list[dict[str, Any]]] = {gpu_id: [] for gpu_id in ids}
    if not ids:
        return out
    for row in conn.execute(running_statement(ids, at_ms)):
        out[row.gpu_id].append(process_doc(row))
    return out


def running_statement(gpu_ids: list[int], at_ms: int | None) -> sa.Select[Any]:
    """The SELECT of :func:`running_processes`: now, a seek on (gpu, ended)."""
    return (sa.select(gpu_processes).where(_p.gpu_id.in_(gpu_ids), _alive(at_ms))
            .order_by(_p.gpu_id, _p.used_memory_mib.desc().nulls_last(), _p.pid))


def processes_between(conn: sa.Connection, gpu_id: int, start_ms: int,
                      end_ms: int) -> list[dict[str, Any]]:
    """The processes of one GPU alive at any moment of [start, end], oldest first."""
    rows = conn.execute(
        sa.select(gpu_processes).where(_p.gpu_id == gpu_id, _p.first_seen_ms <= end_ms,
                                       sa.or_(_p.ended_ms.is_(None), _p.ended_ms >= start_ms))
        .order_by(_p.first_seen_ms, _p.id))
    return [process_doc(row) for row in rows]


@dataclass(frozen=True, slots=True)
class ProcessFilter:
    """Which process lifetimes a search asks about; None leaves a criterion out.

    ``user`` matches the user name, or the uid when it is all digits; ``container`` is a
    prefix of the container id (``docker ps`` shows 12 digits); ``gpu_ids`` are gpus.id
    rows; ``host`` None means every host.
    """

    since_ms: int | None = None
    until_ms: int | None = None
    user: str | None = None
    job: str | None = None
    container: str | None = None
    gpu_ids: list[int] | None = None
    host: str | None = None


@dataclass(frozen=True, slots=True)
class ProcessSearch:
    """What a search found: the process lifetimes (oldest first, each naming its GPU),
    per card the use they add up to, and whether more than the limit matched."""

    processes: list[dict[str, Any]]
    gpus: list[dict[str, Any]]
    truncated: bool


def _uid(user: str) -> int | None:
    """A user given as a number is also a uid (a user without a name is stored as one)."""
    return int(user) if _UID.fullmatch(user) and int(user) <= MAX_UID else None


def find_processes(conn: sa.Connection, where: ProcessFilter, limit: int) -> ProcessSearch:
    """The process lifetimes that match, alive at any moment of [since, until]; past
    ``limit`` of them the newest are left out (``truncated``)."""
    rows = conn.execute(search_statement(where, limit + 1)).all()
    kept = rows[:limit]
    docs = [{"gpu_id": row.gpu_index, "uuid": row.uuid, "host": row.host,
             **process_doc(row)} for row in kept]
    return ProcessSearch(docs, _gpu_usage(kept), len(rows) > limit)


def search_statement(where: ProcessFilter, limit: int) -> sa.Select[Any]:
    """The SELECT of :func:`find_processes`: rows of gpu_processes with their GPU's index,
    UUID and host, oldest first, at most ``limit``; a job or a user is an index seek."""
    query = sa.select(gpu_processes, _g.gpu_index, _g.uuid, _g.host).join(
        gpus, _g.id == _p.gpu_id)
    if where.since_ms is not None:
        query = query.where(sa.or_(_p.ended_ms.is_(None), _p.ended_ms >= where.since_ms))
    if where.until_ms is not None:
        query = query.where(_p.first_seen_ms <= where.until_ms)
    if where.user is not None:
        uid = _uid(where.user)
        query = query.where(_p.user_name == where.user if uid is None
                            else sa.or_(_p.user_name == where.user, _p.uid == uid))
    if where.job is not None:
        query = query.where(_p.slurm_job_id == where.job)
    if where.container is not None:  # validated hexadecimal: no LIKE wildcards in it
        query = query.where(_p.container_id.like(f"{where.container}%"))
    if where.gpu_ids is not None:
        query = query.where(_p.gpu_id.in_(where.gpu_ids))
    if where.host is not None:
        query = query.where(_g.host == where.host)
    return query.order_by(_p.first_seen_ms, _p.id).limit(limit)


def _gpu_usage(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Per card the processes ran on: first and last seen in use, when the last of them
    ended (null while one runs), how many process lifetimes, and the most memory one of
    them held (processes peak at different times, so their peaks are not added up)."""
    cards: dict[int, list[Any]] = {}
    for row in rows:
        cards.setdefault(row.gpu_id, []).append(row)
    out = []
    for group in cards.values():
        first = group[0]
        running = any(r.ended_ms is None for r in group)
        peaks = [r.used_memory_mib for r in group if r.used_memory_mib is not None]
        out.append({
            "gpu_id": first.gpu_index, "uuid": first.uuid, "host": first.host,
            "first_seen_at": iso_utc(min(r.first_seen_ms for r in group)),
            "last_seen_at": iso_utc(max(r.last_seen_ms for r in group)),
            "ended_at": None if running else iso_utc(max(r.ended_ms for r in group)),
            "running": running,
            "processes": len(group),
            "peak_process_memory_mb": max(peaks) if peaks else None,
        })
    return sorted(out, key=lambda c: (c["host"], c["gpu_id"], c["first_seen_at"]))
