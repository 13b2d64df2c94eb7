"""GET /api/gpu/status and /api/gpu/status/all: each GPU's latest state, reading and advice."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from gpuhistory.api.common import ctx, gpu_id_arg, time_arg
from gpuhistory.api.errors import ApiError
from gpuhistory.clock import iso_utc
from gpuhistory.domain.config import Config
from gpuhistory.domain.metrics import GPUMetrics
from gpuhistory.domain.states import GPUState
from gpuhistory.domain.throttle import advise
from gpuhistory.storage.queries import LatestSample, cooldown_starts, latest_samples

bp = Blueprint("status", __name__, url_prefix="/api/gpu")


def gpu_status(conn: sa.Connection, entry: LatestSample, now_ms: int,
               config: Config) -> dict[str, Any]:
    """One GPU's status document (shared by the API, the CLI and the Python client)."""
    gpu = entry.gpu
    state = entry.state if entry.state is not None else GPUState.UNAVAILABLE
    metrics = None
    if entry.reading is not None:
        metrics = GPUMetrics.from_reading(entry.reading, state, entry.ts_ms, gpu.backend).to_dict()
    left_hot, left_critical = cooldown_starts(conn, gpu.id, now_ms)
    advice = advise(state, now_ms, config, left_hot, left_critical)
    return {
        "gpu_id": gpu.index,
        "uuid": gpu.uuid,
        "name": gpu.name,
        "host": gpu.host,
        "backend": gpu.backend,
        "available": state is not GPUState.UNAVAILABLE,
        "state": state.name,
        "timestamp": iso_utc(entry.ts_ms),
        "sample_age_seconds": (None if entry.ts_ms is None
                               else round((now_ms - entry.ts_ms) / 1000, 3)),
        "metrics": metrics,
        "throttling": advice.to_dict(),
        "thresholds": {
            "slowdown_temp_celsius": gpu.slowdown_temp_c,
            "shutdown_temp_celsius": gpu.shutdown_temp_c,
        },
    }


@bp.get("/status")
def status() -> ResponseReturnValue:
    """One GPU (``gpu_id``, default 0), now or ``at`` a past time. 404 for an unknown GPU."""
    c = ctx()
    gpu_id = gpu_id_arg()
    at = time_arg("at")
    now = at if at is not None else c.clock.now_ms()
    with c.engine.connect() as conn:
        entries = latest_samples(conn, c.host, gpu_id, at_ms=at)
        if not entries:
            raise ApiError(404, "gpu_not_found", f"no GPU with gpu_id {gpu_id} on {c.host}",
                           {"gpu_id": gpu_id, "host": c.host})
        return jsonify(gpu_status(conn, entries[0], now, c.config()))


@bp.get("/status/all")
def status_all() -> ResponseReturnValue:
    """Every GPU on this host, now or ``at`` a past time."""
    c = ctx()
    at = time_arg("at")
    now = at if at is not None else c.clock.now_ms()
    config = c.config()
    with c.engine.connect() as conn:
        gpus = [gpu_status(conn, e, now, config) for e in latest_samples(conn, c.host, at_ms=at)]
    return jsonify({"host": c.host, "timestamp": iso_utc(now), "count": len(gpus), "gpus": gpus})
