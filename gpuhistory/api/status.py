"""GET /api/gpu/status and /api/gpu/status/all: each GPU's latest state, reading and advice.

Both take ``host`` (default: this server's host); ``status/all?host=*`` is the whole fleet
sharing the database, every GPU document naming its host.
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
from gpuhistory.documents import status_doc
from gpuhistory.leases.manager import LeaseManager
from gpuhistory.leases.model import Capacity
from gpuhistory.storage.processes import running_processes
from gpuhistory.storage.queries import LatestSample, latest_samples

bp = APIBlueprint("status", __name__, url_prefix="/api/gpu", abp_tags=[Tag(name="status")])


def _capacities(conn: sa.Connection, leases: LeaseManager,
                entries: list[LatestSample]) -> dict[tuple[str, int], Capacity]:
    """Lease capacity of each GPU, keyed (host, index): leases are per host and GPU."""
    found: dict[tuple[str, int], Capacity] = {}
    for host in sorted({e.gpu.host for e in entries}):
        group = [e for e in entries if e.gpu.host == host]
        found.update({(host, index): capacity for index, capacity
                      in leases.capacities(conn, group).items()})
    return found


def _full_status(conn: sa.Connection, entries: list[LatestSample], now: int,
                 live: bool) -> list[dict[str, Any]]:
    """Status documents, each with the compute processes running on the GPU (then); when
    live, with lease capacity and (for this host's GPUs, which this process samples) the
    monitoring state.

    About the past, the thresholds and cooldowns are those in force at that time.
    """
    c = ctx()
    config = config_at(now, live)
    docs = [status_doc(conn, entry, now, config) for entry in entries]
    running = running_processes(conn, [e.gpu.id for e in entries], None if live else now)
    for doc, entry in zip(docs, entries, strict=True):
        doc["processes"] = running[entry.gpu.id]
    if live and c.leases is not None:
        capacity = _capacities(conn, c.leases, entries)
        for doc in docs:
            doc["memory"] = capacity[doc["host"], doc["gpu_id"]].to_dict()
    if live and c.sampler is not None:
        monitoring = {"monitoring": c.sampler.running, "interval_seconds": c.sampler.interval}
        for doc in docs:
            if doc["host"] == c.host:
                doc["monitoring"] = monitoring
                accounting = c.sampler.lease_watch.snapshot(doc["gpu_id"])
                if accounting is not None:  # leases against the processes last read
                    doc["lease_accounting"] = accounting
    if not live:
        # The past: the leases that were active then, and the configuration in force.
        effective = config.model_dump()
        for doc, entry in zip(docs, entries, strict=True):
            doc["config"] = effective
            if c.leases is not None:
                doc["leases"] = [lease.to_dict(now) for lease in
                                 c.leases.active_between(entry.gpu.id, now, now)
                                 if lease.granted_ms <= now]
    return docs


@bp.get("/status", responses={200: Status, **errors(400, 404, 422)})
def status(query: StatusQuery) -> View:
    """One GPU (``gpu_id``, default 0, on ``host``; or ``uuid``), now or ``at`` a past time:
    the card in the slot at that time. 404 ``no_samples`` when it has no sample by ``at``."""
    c = ctx()
    at: int | None = query.at
    with c.engine.connect() as conn:
        entry = one_gpu(conn, query, at)
        if at is not None and entry.ts_ms is None:
            raise ApiError(404, "no_samples", f"GPU {entry.gpu.uuid} (gpu_id {entry.gpu.index} "
                           f"on {entry.gpu.host}) has no sample at or before {iso_utc(at)}",
                           {"gpu_id": entry.gpu.index, "uuid": entry.gpu.uuid,
                            "host": entry.gpu.host, "at": iso_utc(at)})
        now = at if at is not None else c.clock.now_ms()
        return jsonify(_full_status(conn, [entry], now, live=at is None)[0])


def all_status(at: int | None = None, host: str | None = None) -> dict[str, Any]:
    """The status of every GPU on ``host`` (default: this server's; ``*``: every host),
    now or at a past time."""
    c = ctx()
    host = host if host is not None else c.host
    now = at if at is not None else c.clock.now_ms()
    with c.engine.connect() as conn:
        entries = latest_samples(conn, None if host == ALL_HOSTS else host, at_ms=at,
                                 now_ms=now)
        docs = _full_status(conn, entries, now, live=at is None)
    return {"host": host, "hosts": sorted({e.gpu.host for e in entries}),
            "timestamp": iso_utc(now), "count": len(docs), "gpus": docs}


@bp.get("/status/all", responses={200: StatusAll, **errors(400, 422)})
def status_all(query: StatusAllQuery) -> View:
    """Every GPU on ``host`` (default: this server's host; ``*``: the whole fleet in the
    database, ordered by host and index), now or ``at`` a past time."""
    return jsonify(all_status(query.at, query.host))
