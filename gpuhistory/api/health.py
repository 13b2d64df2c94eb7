"""GET /healthz: is the database reachable, how old is the last tick, which backend."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.api.common import View, ctx
from gpuhistory.api.responses import Health
from gpuhistory.clock import iso_utc
from gpuhistory.storage.queries import newest_sample_ms

bp = APIBlueprint("health", __name__, abp_tags=[Tag(name="health")])


@bp.get("/healthz", responses={200: Health, 503: Health})
def healthz() -> View:
    """Health: 200 when ok or degraded (stale ticks, backend failing); 503 when the DB is down."""
    c = ctx()
    now = c.clock.now_ms()
    body: dict[str, Any] = {"status": "ok", "host": c.host}
    try:
        with c.engine.connect() as conn:
            revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            newest = newest_sample_ms(conn, c.host)
        body["database"] = {"ok": True, "revision": revision, "dialect": c.engine.dialect.name}
    except sa.exc.SQLAlchemyError as exc:
        body.update(status="down", database={"ok": False, "error": type(exc).__name__})
        return jsonify(body), 503
    sampler = c.sampler
    interval = c.config().monitor_interval
    age = None if newest is None else round((now - newest) / 1000, 3)
    body["last_sample"] = {"timestamp": iso_utc(newest), "age_seconds": age}
    if sampler is not None:
        health = sampler.backend.health()
        tick = sampler.last_tick
        body["backend"] = {"name": sampler.backend.name, "ok": health.ok, "detail": health.detail}
        body["monitoring"] = sampler.running
        hardware_error = getattr(sampler, "hardware_error", None)
        if hardware_error:
            body["backend"]["hardware_error"] = hardware_error
        body["last_tick"] = None if tick is None else {
            "timestamp": iso_utc(tick.ts_ms), "gpus": tick.gpus,
            "duration_ms": round(tick.seconds * 1000, 3), "error": tick.error,
        }
        if not health.ok or (tick is not None and tick.error):
            body["status"] = "degraded"
        if sampler.running and (age is None or age > 3 * interval + 5):
            body["status"] = "degraded"
    elif age is not None and age > 3 * interval + 5:
        body["status"] = "degraded"  # an API-only process: the sampler has gone quiet
    return jsonify(body), 200
