"""Latest metrics, their persisted history, and the temperature trend."""

from __future__ import annotations

from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.analytics.history import (
    DEFAULT_POINTS,
    DEFAULT_RANGE_MS,
    history_buckets_doc,
)
from gpuhistory.api.common import View, ctx, one_gpu, time_range
from gpuhistory.api.errors import ApiError
from gpuhistory.api.responses import HistoryAnswer, Metrics, Trend, errors
from gpuhistory.api.schemas import GpuQuery, HistoryQuery, TrendQuery
from gpuhistory.clock import iso_utc
from gpuhistory.documents import history_doc, metrics_doc
from gpuhistory.domain.trend import trend_doc
from gpuhistory.storage.queries import trend_sums

bp = APIBlueprint("metrics", __name__, url_prefix="/api/gpu", abp_tags=[Tag(name="metrics")])


@bp.get("/metrics", responses={200: Metrics, **errors(400, 404, 422)})
def metrics(query: GpuQuery) -> View:
    """The GPU's latest sample, with the seed's GPUMetrics field names."""
    c = ctx()
    with c.engine.connect() as conn:
        doc = metrics_doc(one_gpu(conn, query.gpu_id, host=query.host))
    if doc is None:
        raise ApiError(404, "no_samples", f"GPU {query.gpu_id} has no samples yet",
                       {"gpu_id": query.gpu_id})
    return jsonify(doc)


@bp.get("/metrics/history", responses={200: HistoryAnswer, **errors(400, 404, 422)})
def history(query: HistoryQuery) -> View:
    """Persisted history in [since, until]: raw samples, or buckets at any resolution.

    Without ``resolution``/``points``: the newest ``limit`` raw samples (default
    history_size). With them: about ``points`` buckets (default 500) over [since, until]
    (default: the last hour), from raw samples or the 1-minute/1-hour rollups.
    """
    c = ctx()
    since, until = time_range(query)
    if query.resolution is None and query.points is None:
        limit = query.limit or c.config().history_size
        with c.engine.connect() as conn:
            entry = one_gpu(conn, query.gpu_id, host=query.host)
            return jsonify(history_doc(conn, entry, since, until, limit))
    if query.limit is not None:
        raise ApiError(422, "validation_failed",
                       "limit applies to raw samples; with resolution or points use points",
                       {"fields": {"limit": "not allowed with resolution or points"}})
    if until is None:
        until = c.clock.now_ms() if since is None else max(since, c.clock.now_ms())
    if since is None:
        since = until - DEFAULT_RANGE_MS
    with c.engine.connect() as conn:
        entry = one_gpu(conn, query.gpu_id, host=query.host)
        return jsonify(history_buckets_doc(conn, entry, since, until,
                                           query.resolution or "auto",
                                           query.points or DEFAULT_POINTS))


@bp.get("/temperature/trend", responses={200: Trend, **errors(400, 404, 422)})
def temperature_trend(query: TrendQuery) -> View:
    """Min/max/avg/first/last, least-squares slope (°C/min), direction and ETA to a threshold."""
    c = ctx()
    until: int = query.until if query.until is not None else c.clock.now_ms()
    since = until - round(query.duration_minutes * 60_000)
    config = c.config()
    with c.engine.connect() as conn:
        entry = one_gpu(conn, query.gpu_id, host=query.host)
        doc = trend_doc(trend_sums(conn, entry.gpu.id, since, until), config)
    return jsonify({"gpu_id": query.gpu_id, "since": iso_utc(since), "until": iso_utc(until),
                    "duration_minutes": query.duration_minutes, **doc})
