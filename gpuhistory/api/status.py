"""GET /api/gpu/status and /api/gpu/status/all: each GPU's latest state, reading and advice."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.api.common import View, config_at, ctx, one_gpu
from gpuhistory.api.responses import Status, StatusAll, errors
from gpuhistory.api.schemas import StatusAllQuery, StatusQuery
from gpuhistory.clock import iso_utc
from gpuhistory.documents import status_doc
from gpuhistory.storage.queries import LatestSample, latest_samples

bp = APIBlueprint("status", __name__, url_prefix="/api/gpu", abp_tags=[Tag(name="status")])


def _full_status(conn: sa.Connection, entries: list[LatestSample], now: int,
                 live: bool) -> list[dict[str, Any]]:
    """Status documents; when live, with lease capacity and monitoring state.

    About the past, the thresholds and cooldowns are those in force at that time.
    """
    c = ctx()
    config = config_at(now, live)
    docs = [status_doc(conn, entry, now, config) for entry in entries]
    if live and c.leases is not None:
        capacity = c.leases.capacities(conn, entries)
        for doc in docs:
            doc["memory"] = capacity[doc["gpu_id"]].to_dict()
    if live and c.sampler is not None:
        monitoring = {"monitoring": c.sampler.running, "interval_seconds": c.sampler.interval}
        for doc in docs:
            doc["monitoring"] = monitoring
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
    """One GPU (``gpu_id``, default 0), now or ``at`` a past time."""
    c = ctx()
    at: int | None = query.at  # type: ignore[assignment]  # validated to epoch ms
    with c.engine.connect() as conn:
        entry = one_gpu(conn, query.gpu_id, at)
        now = at if at is not None else c.clock.now_ms()
        return jsonify(_full_status(conn, [entry], now, live=at is None)[0])


def all_status(at: int | None = None) -> dict[str, Any]:
    """The status of every GPU on this host, now or at a past time."""
    c = ctx()
    now = at if at is not None else c.clock.now_ms()
    with c.engine.connect() as conn:
        docs = _full_status(conn, latest_samples(conn, c.host, at_ms=at), now, live=at is None)
    return {"host": c.host, "timestamp": iso_utc(now), "count": len(docs), "gpus": docs}


@bp.get("/status/all", responses={200: StatusAll, **errors(400, 422)})
def status_all(query: StatusAllQuery) -> View:
    """Every GPU on this host, now or ``at`` a past time."""
    return jsonify(all_status(query.at))  # type: ignore[arg-type]
