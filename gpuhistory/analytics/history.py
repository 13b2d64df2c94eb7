"""History at any resolution: about ``points`` buckets over [since, until], from the
coarsest source that still has enough detail.

Sources: ``raw`` (samples), ``1m`` (samples_1m), ``1h`` (samples_1h). ``auto`` picks the
coarsest source giving at least ``points`` buckets over the range (15 min → raw, a day →
1m, a month → 1h); the answer's buckets are then ``source width x ceil(range / points /
source width)`` wide, aligned to multiples of that width since the epoch, re-aggregated in
SQL (GROUP BY bucket_ms / width) from the source's partial aggregates.

A rollup table is complete only up to its watermark (``rollup_progress``), so one query
unions, stretch by stretch, the coarsest source that is complete there (each tier takes its
whole buckets that end by ``until``):

    samples_1h  [since, w1h)      hours that are final                 (1h source only)
    samples_1m  [.., w1m)         minutes of the hour in progress
    samples     [.., until]       what the job has not rolled up yet: a chart reaches "now"

so every answer equals aggregating the raw samples of each bucket, counted once.

Each branch is a range scan on its table's (gpu_id, ts_ms/bucket_ms) key; with SQLite the
plan is, per branch, ``SEARCH samples_1h USING PRIMARY KEY (gpu_id=? AND bucket_ms>? AND
bucket_ms<?)`` (``samples_1m`` alike, ``samples`` with ``ts_ms``), then ``SCAN parts`` and
``USE TEMP B-TREE FOR GROUP BY`` over a few thousand rows at most (a month at 500 points:
about 840). tests/test_history.py checks the plans.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from gpuhistory.analytics import bulk
from gpuhistory.analytics.rollups import (
    AGGREGATES,
    HOUR_MS,
    MINUTE_MS,
    ROLLUPS,
    bucket_start,
    floor_to,
    partial_aggregates,
    watermarks,
)
from gpuhistory.clock import iso_utc
from gpuhistory.storage.queries import LatestSample
from gpuhistory.storage.schema import samples

RAW_UNIT_MS = 1_000  # raw buckets are whole seconds wide
SOURCE_WIDTH_MS = {"raw": RAW_UNIT_MS, "1m": MINUTE_MS, "1h": HOUR_MS}
RESOLUTIONS = ("raw", "1m", "1h", "auto")
DEFAULT_POINTS = 500
MAX_POINTS = 10_000
DEFAULT_RANGE_MS = HOUR_MS


@dataclass(frozen=True, slots=True)
class HistoryPlan:
    """Where a bucketed history comes from: the source, bucket width and aligned start."""

    source: str  # raw | 1m | 1h
    width_ms: int
    start_ms: int  # since, aligned down to width_ms
    until_ms: int


def choose_source(range_ms: int, points: int) -> str:
    """The coarsest source that still yields at least ``points`` buckets over the range."""
    for source in ("1h", "1m"):
        if range_ms >= points * SOURCE_WIDTH_MS[source]:
            return source
    return "raw"


def plan_history(resolution: str, since_ms: int, until_ms: int, points: int) -> HistoryPlan:
    """Source and bucket width for about ``points`` buckets over [since, until]."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}")
    if not 1 <= points <= MAX_POINTS:
        raise ValueError(f"points must be from 1 to {MAX_POINTS}")
    if since_ms > until_ms:
        raise ValueError("since must not be after until")
    range_ms = until_ms - since_ms
    source = choose_source(range_ms, points) if resolution == "auto" else resolution
    unit = SOURCE_WIDTH_MS[source]
    width = unit * max(1, -(-range_ms // (points * unit)))
    return HistoryPlan(source, width, floor_to(since_ms, width), until_ms)


def _bound(name: str) -> sa.BindParameter[int]:
    return sa.bindparam(name, type_=sa.BigInteger)


def _rollup_branch(resolution: str) -> sa.Select[Any]:
    """Rollup rows of one GPU with :lo_<res> <= bucket_ms < :hi_<res> (PRIMARY KEY range)."""
    c = ROLLUPS[resolution][0].c
    return (sa.select(c.bucket_ms, *(c[name] for name in AGGREGATES))
            .where(c.gpu_id == sa.bindparam("gpu_id", type_=sa.Integer),
                   c.bucket_ms >= _bound(f"lo_{resolution}"),
                   c.bucket_ms < _bound(f"hi_{resolution}")))


def _present(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    return sa.case((column.is_(None), 0), else_=1)


def _raw_branch() -> sa.Select[Any]:
    """Raw samples with :lo_raw <= ts_ms <= :until as one-row partial aggregates (PRIMARY
    KEY range)."""
    s = samples.c
    return (sa.select(
        s.ts_ms.label("bucket_ms"), sa.literal(1, sa.Integer).label("n"),
        _present(s.temperature_c).label("temp_n"), s.temperature_c.label("temp_min"),
        s.temperature_c.label("temp_max"), s.temperature_c.label("temp_sum"),
        s.memory_used_mib.label("mem_max"),
        _present(s.utilization_pct).label("util_n"), s.utilization_pct.label("util_sum"),
        _present(s.power_dw).label("power_n"), s.power_dw.label("power_sum"),
        s.power_dw.label("power_max"), s.clock_event_reasons.label("reasons"),
        s.state.label("state_max"))
        .where(s.gpu_id == sa.bindparam("gpu_id", type_=sa.Integer),
               s.ts_ms >= _bound("lo_raw"), s.ts_ms <= _bound("until")))


@functools.cache
def _statement(branches: tuple[str, ...]) -> sa.Select[Any]:
    """The statement for one combination of branches (built once; values are bound)."""
    selects = [_raw_branch() if b == "raw" else _rollup_branch(b) for b in branches]
    parts = (selects[0] if len(selects) == 1 else sa.union_all(*selects)).subquery("parts")
    select_bucket, group = bucket_start(parts.c.bucket_ms, _bound("width"))
    return (sa.select(select_bucket, *partial_aggregates(parts.c))
            .group_by(group).order_by(sa.literal_column("bucket_ms")))


def history_statement(gpu_id: int, plan: HistoryPlan, marks: dict[str, int]
                      ) -> tuple[sa.Select[Any], dict[str, int]] | None:
    """The one SELECT answering ``plan`` for a GPU, and its parameters, given the GPU's
    rollup watermarks. None when the range is empty. The module docstring shows the plan.
    """
    lo, until = plan.start_ms, plan.until_ms
    tiers = {"1h": ("1h", "1m"), "1m": ("1m",), "raw": ()}[plan.source]
    w1m = marks.get("1m", lo)
    done = {"1m": w1m, "1h": min(marks.get("1h", lo), w1m)}
    # Coarse to fine, each tier takes its whole buckets that are rolled up and end by
    # ``until``; raw samples take the rest up to ``until`` itself.
    ranges: dict[str, tuple[int, int]] = {}
    cursor = lo
    for resolution in tiers:
        high = min(done[resolution], floor_to(until + 1, ROLLUPS[resolution][1]))
        ranges[resolution] = (cursor, high)
        cursor = max(cursor, high)
    raw_from = cursor
    params: dict[str, int] = {"gpu_id": gpu_id, "width": plan.width_ms}
    branches: list[str] = []
    for resolution, (low, high) in ranges.items():
        if low < high:
            branches.append(resolution)
            params[f"lo_{resolution}"], params[f"hi_{resolution}"] = low, high
    if raw_from <= until:
        branches.append("raw")
        params["lo_raw"], params["until"] = raw_from, until
    if not branches:
        return None
    return _statement(tuple(branches)), params


def _oldest_ms(conn: sa.Connection, source: str, gpu_id: int) -> int | None:
    """The oldest row of a GPU in a source: one seek on its key."""
    if source == "raw":
        column, key = samples.c.ts_ms, samples.c.gpu_id
    else:
        table = ROLLUPS[source][0]
        column, key = table.c.bucket_ms, table.c.gpu_id
    return conn.execute(sa.select(column).where(key == gpu_id)
                        .order_by(column).limit(1)).scalar()


def _available_source(conn: sa.Connection, gpu_id: int, source: str, since_ms: int) -> str:
    """``source``, or a coarser one where retention already removed the range's start.

    Raw samples are kept 14 days and 1-minute rollups a year (DESIGN §3): an hour asked
    of last month has no raw rows left but has its 1-minute rollups, so ``auto`` answers
    from those rather than with nothing.
    """
    order = ("raw", "1m", "1h")
    while source != "1h":
        coarser = order[order.index(source) + 1]
        oldest = _oldest_ms(conn, source, gpu_id)
        if oldest is not None and oldest <= since_ms:
            return source
        oldest_coarser = _oldest_ms(conn, coarser, gpu_id)
        if oldest_coarser is None or (
                oldest is not None
                and oldest_coarser >= floor_to(oldest, SOURCE_WIDTH_MS[coarser])):
            return source  # the coarser source reaches no further back
        source = coarser
    return source


def _history_rows(conn: sa.Connection, gpu_id: int, since_ms: int, until_ms: int,
                  resolution: str, points: int
                  ) -> tuple[HistoryPlan, dict[str, int], list[sa.Row[Any]]]:
    plan = plan_history(resolution, since_ms, until_ms, points)
    if resolution == "auto":
        source = _available_source(conn, gpu_id, plan.source, since_ms)
        if source != plan.source:
            plan = plan_history(source, since_ms, until_ms, points)
    marks = watermarks(conn, gpu_id)
    query = history_statement(gpu_id, plan, marks)
    rows = [] if query is None else list(conn.execute(*query).all())
    return plan, marks, rows


def history_buckets(conn: sa.Connection, gpu_id: int, since_ms: int, until_ms: int,
                    resolution: str = "auto", points: int = DEFAULT_POINTS
                    ) -> tuple[HistoryPlan, dict[str, int], list[dict[str, Any]]]:
    """(plan, watermarks, buckets oldest first) for one GPU (gpus.id) over [since, until].

    Each bucket: timestamp, samples, temperature_min/max/avg, memory_used_max_mb, load_avg,
    power_avg_watts, power_max_watts, clock_event_reasons(_mask) and the worst state
    (field names as in GPUMetrics; written by ``bulk.buckets_json``).
    """
    plan, marks, rows = _history_rows(conn, gpu_id, since_ms, until_ms, resolution, points)
    return plan, marks, orjson.loads(bulk.buckets_json(rows))


def history_buckets_doc(conn: sa.Connection, entry: LatestSample, since_ms: int,
                        until_ms: int, resolution: str = "auto",
                        points: int = DEFAULT_POINTS,
                        buckets_json: bool = False) -> dict[str, Any]:
    """The bucketed history document of ``GET /api/gpu/metrics/history?resolution=...``
    (``buckets_json``: the buckets stay JSON text, an ``orjson.Fragment``)."""
    plan, marks, rows = _history_rows(conn, entry.gpu.id, since_ms, until_ms, resolution,
                                      points)
    text = bulk.buckets_json(rows)
    return {
        "gpu_id": entry.gpu.index,
        "uuid": entry.gpu.uuid,
        "host": entry.gpu.host,
        "since": iso_utc(since_ms),
        "until": iso_utc(until_ms),
        "resolution": plan.source,
        "bucket_seconds": plan.width_ms / 1000,
        "points": points,
        "rolled_up_until": iso_utc(marks.get("1m")),
        "count": len(rows),
        "buckets": orjson.Fragment(text) if buckets_json else orjson.loads(text),
    }


__all__ = ["DEFAULT_POINTS", "DEFAULT_RANGE_MS", "MAX_POINTS", "RESOLUTIONS", "HistoryPlan",
           "choose_source", "history_buckets", "history_buckets_doc",
           "history_statement", "plan_history"]
