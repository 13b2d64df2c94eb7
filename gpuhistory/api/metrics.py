"""Latest metrics, their persisted history, and the temperature trend."""

from __future__ import annotations

from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.analytics.history import (
    DEFAULT_POINTS,
    DEFAULT_RANGE_MS,
    history_buckets_doc,
)
from gpuhistory.api.common import View, card_at, ctx, one_gpu, time_range
from gpuhistory.api.errors import ApiError
from gpuhistory.api.fastjson import json_response
from gpuhistory.api.responses import HistoryAnswer, Metrics, Trend, errors
from gpuhistory.api.schemas import GpuQuery, HistoryQuery, TrendQuery
from gpuhistory.clock import iso_utc
from gpuhistory.documents import history_doc, metrics_doc
from gpuhistory.domain.trend import trend_doc
from gpuhistory.storage.queries import GpuRow, LatestSample, trend_sums

bp = APIBlueprint("metrics", __name__, url_prefix="/api/gpu", abp_tags=[Tag(name="metrics")])


@bp.get("/metrics", responses={200: Metrics, **errors(400, 404, 422)})
def metrics(query: GpuQuery) -> View:
    """The GPU's latest sample, with the seed's GPUMetrics field names."""
    c = ctx()
    with c.engine.connect() as conn:
        entry = one_gpu(conn, query)
    doc = metrics_doc(entry)
    if doc is None:
        raise ApiError(404, "no_samples", f"GPU {entry.gpu.index} ({entry.gpu.uuid}) has no "
                       "samples yet", {"gpu_id": entry.gpu.index, "uuid": entry.gpu.uuid})
    return jsonify(doc)


def _card_only(card: GpuRow) -> LatestSample:
    """The card without its newest sample: all a history document reads (saves the
    latest-sample statement per request)."""
    return LatestSample(gpu=card, ts_ms=None, state=None, reading=None)


@bp.get("/metrics/history", responses={200: HistoryAnswer, **errors(400, 404, 422)})
def history(query: HistoryQuery) -> View:
    """Persisted history in [since, until]: raw samples, or buckets at any resolution, of
    the card in the slot at ``until`` (default now), or of ``uuid``.

    Without ``resolution``/``points``: the newest ``limit`` raw samples (default
    history_size). With them: about ``points`` buckets (default 500) over [since, until]
    (default: the last hour), from raw samples or the 1-minute/1-hour rollups.
    """
    c = ctx()
    since, until = time_range(query)
    if query.resolution is None and query.points is None:
        limit = query.limit or c.config().history_size
        with c.engine.connect() as conn:
            card = card_at(conn, query, until if until is not None else c.clock.now_ms())
            return json_response(history_doc(conn, _card_only(card), since, until, limit,
                                             samples_json=True))
    if query.limit is not None:
        raise ApiError(422, "validation_failed",
                       "limit applies to raw samples; with resolution or points use points",
                       {"fields": {"limit": "not allowed with resolution or points"}})
    if until is None:
        until = c.clock.now_ms() if since is None else max(since, c.clock.now_ms())
    if since is None:
        since = until - DEFAULT_RANGE_MS
    with c.engine.connect() as conn:
        entry = _card_only(card_at(conn, query, until))
        return json_response(history_buckets_doc(conn, entry, since, until,
                                                 query.resolution or "auto",
                                                 query.points or DEFAULT_POINTS,
                                                 buckets_json=True))


@bp.get("/temperature/trend", responses={200: Trend, **errors(400, 404, 422)})
def temperature_trend(query: TrendQuery) -> View:
    """Min/max/avg/first/last, least-squares slope (°C/min), direction and ETA to a threshold,
    of the card in the slot at ``until`` (or of ``uuid``)."""
    c = ctx()
    until: int = query.until if query.until is not None else c.clock.now_ms()
    since = until - round(query.duration_minutes * 60_000)
    config = c.config()
    with c.engine.connect() as conn:
        gpu = card_at(conn, query, until)
        doc = trend_doc(trend_sums(conn, gpu.id, since, until), config)
    return jsonify({"gpu_id": gpu.index, "uuid": gpu.uuid, "host": gpu.host,
                    "since": iso_utc(since), "until": iso_utc(until),
                    "duration_minutes": query.duration_minutes, **doc})
