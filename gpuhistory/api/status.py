"""GET /api/gpu/status and /api/gpu/status/all: each GPU's latest state, reading and advice.

Both take ``host`` (default: this server's host); ``status/all?host=*`` is the whole fleet
sharing the database, every GPU document naming its host. Now is answered from the status
projection (gpuhistory/projection.py: no SQL in the steady state); ``at`` a past time, from
the log.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.api.common import View, config_at, ctx, one_gpu
from gpuhistory.api.errors import ApiError
from gpuhistory.api.responses import Status, StatusAll, errors
from gpuhistory.api.schemas import ALL_HOSTS, StatusAllQuery, StatusQuery
from gpuhistory.clock import iso_utc
from gpuhistory.documents import Monitoring, status_docs
from gpuhistory.storage.processes import running_processes
from gpuhistory.storage.queries import LatestSample, latest_samples

bp = APIBlueprint("status", __name__, url_prefix="/api/gpu", abp_tags=[Tag(name="status")])


def _monitoring() -> Monitoring | None:
    sampler = ctx().sampler
    if sampler is None:
        return None
    return Monitoring(sampler.running, sampler.interval, ctx().host,
                      sampler.lease_watch.snapshot)


def live_status(entries: list[LatestSample], now: int) -> list[dict[str, Any]]:
    """Status documents now, from the status projection (no SQL): each with the compute
    processes running on the GPU, its lease capacity, and (for this host's GPUs, which
    this process samples) the monitoring state."""
    c = ctx()
    projection = c.projection
    return status_docs(entries, now, c.config(),
                       processes=projection.processes(e.gpu.id for e in entries),
                       usage=projection.lease_usage(now) if c.leases is not None else None,
                       monitoring=_monitoring())


def past_status(conn: sa.Connection, entries: list[LatestSample],
                at: int) -> list[dict[str, Any]]:
    """Status documents at a past time, read from the log: the processes alive then, the
    leases active then and the configuration (thresholds, cooldowns) in force then."""
    c = ctx()
    config = config_at(at, live=False)
    docs = status_docs(entries, at, config, conn=conn,
                       processes=running_processes(conn, [e.gpu.id for e in entries], at))
    effective = config.model_dump()
    for doc, entry in zip(docs, entries, strict=True):
        doc["config"] = effective
        if c.leases is not None:
            doc["leases"] = [lease.to_dict(at) for lease in
                             c.leases.active_between(entry.gpu.id, at, at)
                             if lease.granted_ms <= at]
    return docs


def _projected(query: StatusQuery, now: int) -> LatestSample | None:
    """The slot a ``gpu_id`` query names, from the projection (None: ask the log, which
    also words the 404 of an unknown GPU)."""
    if getattr(query, "uuid", None) is not None:
        return None
    c = ctx()
    host = query.host if query.host is not None else c.host
    found = c.projection.entries(host, now, query.gpu_id)
    return found[0] if len(found) == 1 else None


@bp.get("/status", responses={200: Status, **errors(400, 404, 422)})
def status(query: StatusQuery) -> View:
    """One GPU (``gpu_id``, default 0, on ``host``; or ``uuid``), now or ``at`` a past time:
    the card in the slot at that time. 404 ``no_samples`` when it has no sample by ``at``."""
    c = ctx()
    at: int | None = query.at
    if at is None:
        now = c.clock.now_ms()
        c.projection.refresh(now)
        entry = _projected(query, now)
        if entry is None:
            with c.engine.connect() as conn:
                entry = one_gpu(conn, query)  # a uuid, or a slot it lacks
        return jsonify(live_status([entry], now)[0])
    with c.engine.connect() as conn:
        entry = one_gpu(conn, query, at)
        if at is not None and entry.ts_ms is None:
            raise ApiError(404, "no_samples", f"GPU {entry.gpu.uuid} (gpu_id {entry.gpu.index} "
                           f"on {entry.gpu.host}) has no sample at or before {iso_utc(at)}",
                           {"gpu_id": entry.gpu.index, "uuid": entry.gpu.uuid,
                            "host": entry.gpu.host, "at": iso_utc(at)})
        return jsonify(past_status(conn, [entry], at)[0])


def all_status(at: int | None = None, host: str | None = None) -> dict[str, Any]:
    """The status of every GPU on ``host`` (default: this server's; ``*``: every host),
    now or at a past time."""
    c = ctx()
    host = host if host is not None else c.host
    now = at if at is not None else c.clock.now_ms()
    which = None if host == ALL_HOSTS else host
    if at is None:
        c.projection.refresh(now)
        entries = c.projection.entries(which, now)
        if which is not None and not entries:  # a host not seen yet: ask the log at once
            c.projection.sync(now)
            entries = c.projection.entries(which, now)
        docs = live_status(entries, now)
    else:
        with c.engine.connect() as conn:
            entries = latest_samples(conn, which, at_ms=at, now_ms=now)
            docs = past_status(conn, entries, at)
    return {"host": host, "hosts": sorted({e.gpu.host for e in entries}),
            "timestamp": iso_utc(now), "count": len(docs), "gpus": docs}


@bp.get("/status/all", responses={200: StatusAll, **errors(400, 422)})
def status_all(query: StatusAllQuery) -> View:
    """Every GPU on ``host`` (default: this server's host; ``*``: the whole fleet in the
    database, ordered by host and index), now or ``at`` a past time."""
    return jsonify(all_status(query.at, query.host))
