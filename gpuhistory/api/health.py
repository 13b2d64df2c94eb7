"""GET /healthz: is the database reachable, how old is the last tick, which backend — and,
when something is wrong but the service still works, why it is ``degraded``.

Degraded (200) when: the backend is failing (NVML init), a GPU is unavailable (lost, hung,
NVML errors), a GPU reports implausible values, the database refuses the sampler's writes
(ticks wait in memory), the database's file or WAL was deleted or replaced under the
service (writes refused), the last tick failed, or the samples are not current
(gpuhistory/api/freshness.py: ``monitoring_stopped``, ``sampler_stale``).
Down (503) when the database cannot be read. ``reasons`` says which, one line each;
``/api/system/status`` carries the same status and reasons.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.api.common import View, ctx
from gpuhistory.api.freshness import judge
from gpuhistory.api.responses import Health
from gpuhistory.clock import iso_utc
from gpuhistory.context import ServiceContext
from gpuhistory.domain.states import GPUState
from gpuhistory.storage.queries import newest_sample_ms

bp = APIBlueprint("health", __name__, abp_tags=[Tag(name="health")])


def _sampler_reasons(c: ServiceContext, body: dict[str, Any]) -> list[str]:
    """What the in-process sampler knows is wrong (and its details, added to ``body``)."""
    sampler = c.sampler
    if sampler is None:
        return []
    reasons = []
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
    if not health.ok:
        reasons.append(f"backend {sampler.backend.name}: {health.detail}")
    for index, latest in sorted(sampler.pipeline.latest.items()):
        if latest.state is GPUState.UNAVAILABLE:
            reasons.append(f"GPU {index} unavailable: {latest.reading.error}")
    for index, fields in sorted(sampler.pipeline.invalid.items()):
        reasons.append(f"GPU {index} reports implausible {', '.join(sorted(fields))}")
    storage = sampler.storage
    body["storage"] = storage
    if not storage["ok"]:
        reasons.append(f"the database refuses writes ({storage['reason']}): "
                       f"{storage['waiting_ticks']} tick(s) waiting in memory, "
                       f"{storage['dropped_ticks']} dropped")
    elif tick is not None and tick.error:
        reasons.append(f"the last tick failed: {tick.error}")
    return reasons


def report(c: ServiceContext) -> tuple[dict[str, Any], int]:
    """The health document and its HTTP status (200 ok or degraded, 503 down)."""
    now = c.clock.now_ms()
    body: dict[str, Any] = {"status": "ok", "host": c.host}
    lost = c.files.check() if c.files is not None else None
    try:
        with c.engine.connect() as conn:
            revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            newest = newest_sample_ms(conn, c.host)
            freshness = judge(c, conn, newest)
        body["database"] = {"ok": True, "revision": revision, "dialect": c.engine.dialect.name}
    except sa.exc.SQLAlchemyError as exc:
        body.update(status="down", database={"ok": False, "error": type(exc).__name__},
                    reasons=["the database cannot be read", *([lost] if lost else [])])
        return body, 503
    age = None if newest is None else round((now - newest) / 1000, 3)
    body["last_sample"] = {"timestamp": iso_utc(newest), "age_seconds": age}
    body["freshness"] = freshness.to_dict()
    reasons = [lost] if lost else []
    reasons += _sampler_reasons(c, body)
    if freshness.stale:
        reasons.append(freshness.sentence())
    elif c.sampler is not None and c.sampler.running and age is None:
        reasons.append("no sample yet")
    if reasons:
        body["status"] = "degraded"
    body["reasons"] = reasons
    return body, 200


def summary(c: ServiceContext) -> dict[str, Any]:
    """Status and reasons alone (for /api/system/status)."""
    body, _ = report(c)
    return {"status": body["status"], "reasons": body.get("reasons", [])}


@bp.get("/healthz", responses={200: Health, 503: Health})
def healthz() -> View:
    """Health: 200 when ok or degraded (with the reasons); 503 when the DB is down."""
    body, status = report(ctx())
    return jsonify(body), status
