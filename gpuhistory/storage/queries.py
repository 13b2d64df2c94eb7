"""Read queries over the log used by the API, CLI and Python interfaces.

The latest row of a GPU is always a per-GPU seek on the (gpu_id, ts_ms) key
(``ORDER BY ts_ms DESC LIMIT 1``), never a ``GROUP BY`` over the samples.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles

from gpuhistory.domain.reading import Reading
from gpuhistory.domain.slots import card_at
from gpuhistory.domain.states import GPUState
from gpuhistory.domain.trend import TrendSums
from gpuhistory.storage.schema import gpus, rollup_progress, samples, samples_1m, transitions


@dataclass(frozen=True, slots=True)
class GpuRow:
    id: int
    host: str
    index: int
    uuid: str
    name: str | None
    memory_total_mib: int | None
    power_limit_w: float | None
    slowdown_temp_c: int | None
    shutdown_temp_c: int | None
    backend: str
    first_seen_ms: int
    last_seen_ms: int


@dataclass(frozen=True, slots=True)
class LatestSample:
    """A GPU with its newest sample at some time, and when it last left a hot state.

    ``left_hot_ms``: the last transition from THROTTLED/CRITICAL to NORMAL/OPTIMAL;
    ``left_critical_ms``: the last transition out of CRITICAL — what throttle advice needs.
    """

    gpu: GpuRow
    ts_ms: int | None
    state: GPUState | None
    reading: Reading | None
    left_hot_ms: int | None = None
    left_critical_ms: int | None = None


def gpu_row(row: sa.Row[Any]) -> GpuRow:
    return GpuRow(row.id, row.host, row.gpu_index, row.uuid, row.name, row.memory_total_mib,
                  row.power_limit_w, row.slowdown_temp_c, row.shutdown_temp_c, row.backend,
                  row.first_seen_ms, row.last_seen_ms)


def reading_from_row(gpu: GpuRow, row: sa.Row[Any]) -> Reading:
    """A samples row back into a Reading (power from deciwatts, facts from the GPU)."""
    available = row.state != GPUState.UNAVAILABLE
    return Reading(
        index=gpu.index, uuid=gpu.uuid, name=gpu.name, available=available,
        temperature_c=row.temperature_c, memory_temperature_c=row.memory_temperature_c,
        memory_used_mib=row.memory_used_mib, memory_total_mib=gpu.memory_total_mib,
        utilization_pct=row.utilization_pct,
        power_w=None if row.power_dw is None else row.power_dw / 10,
        power_limit_w=gpu.power_limit_w, sm_clock_mhz=row.sm_clock_mhz,
        mem_clock_mhz=row.mem_clock_mhz, clock_event_reasons=row.clock_event_reasons,
        pstate=row.pstate, fan_pct=row.fan_pct, memory_reserved_mib=row.memory_reserved_mib,
    )


LEFT_HOT = ((2, 0), (2, 1), (3, 0), (3, 1))  # THROTTLED/CRITICAL → NORMAL/OPTIMAL
LEFT_CRITICAL = ((3, 0), (3, 1), (3, 2))  # CRITICAL → anything better


class greatest(sa.sql.functions.GenericFunction[Any]):
    """GREATEST(a, b, ...): SQLite spells the scalar form ``max``."""

    inherit_cache = True


@compiles(greatest, "sqlite")
def _greatest_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return f"max({compiler.process(element.clauses, **kw)})"


def _last_change(gpu_id: Any, pairs: tuple[tuple[int, int], ...],
                 at: Any | None) -> sa.ColumnElement[Any]:
    """The newest transition of ``gpu_id`` whose (from, to) is one of ``pairs``, at or before
    ``at``: one max() seek per pair on ix_transitions_change, so the cost never depends on
    how many transitions the GPU has had."""
    t = transitions.c
    seeks = []
    for from_state, to_state in pairs:
        seek = sa.select(sa.func.max(t.ts_ms)).where(
            t.gpu_id == gpu_id, t.from_state == from_state, t.to_state == to_state)
        if at is not None:
            seek = seek.where(t.ts_ms <= at)
        seeks.append(sa.func.coalesce(seek.scalar_subquery(), -1))
    return sa.func.nullif(greatest(*seeks), -1)


@functools.cache
def _latest_statement(one_gpu: bool, timed: bool, one_host: bool = True,
                      by_id: bool = False) -> sa.Select[Any]:
    """Built once per shape (and compiled once by SQLAlchemy's cache); values are bound."""
    at: sa.BindParameter[int] | None = sa.bindparam("at") if timed else None
    s2 = samples.alias("newest")
    newest = sa.select(sa.func.max(s2.c.ts_ms)).where(s2.c.gpu_id == gpus.c.id)
    if timed:
        newest = newest.where(s2.c.ts_ms <= sa.bindparam("at"))
    newest_ts = newest.correlate(gpus).scalar_subquery()
    query = (
        sa.select(gpus, samples.c.ts_ms.label("sample_ts"), *[
            c for c in samples.c if c.name not in ("gpu_id", "ts_ms")],
            _last_change(gpus.c.id, LEFT_HOT, at).label("left_hot_ms"),
            _last_change(gpus.c.id, LEFT_CRITICAL, at).label("left_critical_ms"))
        .select_from(gpus.outerjoin(
            samples, sa.and_(samples.c.gpu_id == gpus.c.id, samples.c.ts_ms == newest_ts)))
    )
    if one_host:
        query = query.where(gpus.c.host == sa.bindparam("host"))
    if one_gpu:
        query = query.where(gpus.c.gpu_index == sa.bindparam("gpu_index"))
    if by_id:
        query = query.where(gpus.c.id == sa.bindparam("gpu_db_id"))
    return query.order_by(gpus.c.host, gpus.c.gpu_index, gpus.c.id)


def _entry(row: sa.Row[Any]) -> LatestSample:
    gpu = gpu_row(row)
    has_sample = row.sample_ts is not None
    return LatestSample(
        gpu=gpu,
        ts_ms=row.sample_ts,
        state=GPUState(row.state) if has_sample else None,
        reading=reading_from_row(gpu, row) if has_sample else None,
        left_hot_ms=row.left_hot_ms,
        left_critical_ms=row.left_critical_ms,
    )


def latest_samples(
    conn: sa.Connection, host: str | None, gpu_index: int | None = None,
    at_ms: int | None = None, now_ms: int | None = None,
) -> list[LatestSample]:
    """Each GPU slot on ``host`` (``None``: on every host, ordered by host) with the card
    that held it at ``at_ms`` (else now: ``now_ms``, or the card that arrived last) and
    that card's newest sample at or before ``at_ms``.

    One statement for all GPUs: the newest sample is a per-GPU seek on the samples key
    (``max(ts_ms)`` with ``gpu_id=?``: SEARCH samples USING PRIMARY KEY), never a
    ``GROUP BY`` over the samples. Which card answers for a slot that several cards held
    is :func:`gpuhistory.domain.slots.card_at`, the rule of every interface.
    """
    params: dict[str, Any] = {}
    if host is not None:
        params["host"] = host
    if gpu_index is not None:
        params["gpu_index"] = gpu_index
    if at_ms is not None:
        params["at"] = at_ms
    statement = _latest_statement(gpu_index is not None, at_ms is not None, host is not None)
    slots: dict[tuple[str, int], list[LatestSample]] = {}
    for row in conn.execute(statement, params):
        entry = _entry(row)
        slots.setdefault((entry.gpu.host, entry.gpu.index), []).append(entry)
    t = at_ms if at_ms is not None else now_ms if now_ms is not None else _END_OF_TIME
    found = []
    for key in sorted(slots):
        by_card = {e.gpu.id: e for e in slots[key]}
        found.append(by_card[card_at([e.gpu for e in slots[key]], t).id])
    return found


_END_OF_TIME = 2**62


def latest_sample_of(conn: sa.Connection, gpu: GpuRow, at_ms: int | None = None) -> LatestSample:
    """One card with its newest sample (at or before ``at_ms``)."""
    params: dict[str, Any] = {"gpu_db_id": gpu.id}
    if at_ms is not None:
        params["at"] = at_ms
    statement = _latest_statement(False, at_ms is not None, False, by_id=True)
    return _entry(conn.execute(statement, params).one())


_COOLDOWN_STARTS = sa.select(
    _last_change(sa.bindparam("gpu"), LEFT_HOT, sa.bindparam("at")),
    _last_change(sa.bindparam("gpu"), LEFT_CRITICAL, sa.bindparam("at")),
)


def cooldown_starts(conn: sa.Connection, gpu_id: int, at_ms: int) -> tuple[int | None, int | None]:
    """When the GPU last left THROTTLED/CRITICAL for a cool state, and last left CRITICAL,
    at or before ``at_ms`` (a few index seeks, whatever the length of the log)."""
    left_hot, left_critical = conn.execute(_COOLDOWN_STARTS, {"gpu": gpu_id, "at": at_ms}).one()
    return left_hot, left_critical


def newest_sample_ms(conn: sa.Connection, host: str) -> int | None:
    """The time of the newest sample of any GPU on ``host`` (a seek per GPU)."""
    newest = [s.ts_ms for s in latest_samples(conn, host) if s.ts_ms is not None]
    return max(newest) if newest else None


ROLLUP_TREND_FROM_MS = 30 * 60_000  # windows this long read whole minutes from samples_1m
MINUTE_MS = 60_000


def _trend_statements() -> dict[str, sa.Select[Any]]:
    """The trend's statements, built once (values bound per call, compiled once)."""
    s, r = samples.c, samples_1m.c
    gpu: sa.BindParameter[int] = sa.bindparam("gpu")
    since: sa.BindParameter[int] = sa.bindparam("since")
    lo: sa.BindParameter[int] = sa.bindparam("lo")
    hi: sa.BindParameter[int] = sa.bindparam("hi")
    x = (s.ts_ms - since) / 60000.0
    y = s.temperature_c * 1.0
    # SEARCH samples USING PRIMARY KEY (gpu_id=? AND ts_ms>? AND ts_ms<?)
    raw = sa.select(sa.func.count(s.temperature_c), sa.func.sum(x), sa.func.sum(y),
                    sa.func.sum(x * x), sa.func.sum(x * y), sa.func.min(s.temperature_c),
                    sa.func.max(s.temperature_c)
                    ).where(s.gpu_id == gpu, s.ts_ms >= lo, s.ts_ms <= hi,
                            s.temperature_c.is_not(None))
    # Each minute's samples placed at the minute's middle: the error is of the order of
    # (1 min / window)², far below the trend threshold.
    # SEARCH samples_1m USING PRIMARY KEY (gpu_id=? AND bucket_ms>? AND bucket_ms<?)
    xb = (r.bucket_ms + MINUTE_MS / 2 - since) / 60000.0
    rolled = sa.select(sa.func.sum(r.temp_n), sa.func.sum(r.temp_n * xb),
                       sa.func.sum(r.temp_sum), sa.func.sum(r.temp_n * xb * xb),
                       sa.func.sum(r.temp_sum * xb), sa.func.min(r.temp_min),
                       sa.func.max(r.temp_max)
                       ).where(r.gpu_id == gpu, r.bucket_ms >= lo, r.bucket_ms < hi,
                               r.temp_n > 0)
    window = sa.and_(s.gpu_id == gpu, s.ts_ms >= lo, s.ts_ms <= hi,
                     s.temperature_c.is_not(None))
    return {
        "raw": raw, "rolled": rolled,
        "first": sa.select(s.temperature_c).where(window).order_by(s.ts_ms).limit(1),
        "last": sa.select(s.temperature_c).where(window).order_by(s.ts_ms.desc()).limit(1),
        "done": sa.select(rollup_progress.c.done_until_ms).where(
            rollup_progress.c.gpu_id == gpu, rollup_progress.c.resolution == "1m"),
    }


_TREND = _trend_statements()


def _sums(conn: sa.Connection, name: str, gpu_id: int, since_ms: int, lo: int,
          hi: int) -> tuple[int, float, float, float, float, Any, Any]:
    row = conn.execute(_TREND[name], {"gpu": gpu_id, "since": since_ms, "lo": lo,
                                      "hi": hi}).one()
    return (int(row[0] or 0), float(row[1] or 0), float(row[2] or 0), float(row[3] or 0),
            float(row[4] or 0), row[5], row[6])


def trend_sums(conn: sa.Connection, gpu_id: int, since_ms: int, until_ms: int) -> TrendSums:
    """Aggregates for the least-squares trend, computed in SQL over the window.

    Short windows read the raw samples (one key range). Windows of 30 minutes or more read
    whole minutes from the 1-minute rollups and only the partial minutes at the edges (and
    anything not yet rolled up) from raw samples, so a day costs ~1,440 rows, not 86,400.
    x is minutes from the window start so the sums stay well-conditioned.
    """
    done = None
    if until_ms - since_ms >= ROLLUP_TREND_FROM_MS:
        done = conn.execute(_TREND["done"], {"gpu": gpu_id}).scalar()
    lo = -(-since_ms // MINUTE_MS) * MINUTE_MS
    hi = min(until_ms // MINUTE_MS * MINUTE_MS, done or 0)
    if done is not None and hi - lo >= MINUTE_MS:
        parts = [_sums(conn, "raw", gpu_id, since_ms, since_ms, lo - 1),
                 _sums(conn, "rolled", gpu_id, since_ms, lo, hi),
                 _sums(conn, "raw", gpu_id, since_ms, hi, until_ms)]
    else:
        parts = [_sums(conn, "raw", gpu_id, since_ms, since_ms, until_ms)]
    window = {"gpu": gpu_id, "lo": since_ms, "hi": until_ms}
    first = conn.execute(_TREND["first"], window).scalar()
    last = conn.execute(_TREND["last"], window).scalar()
    mins = [p[5] for p in parts if p[5] is not None]
    maxs = [p[6] for p in parts if p[6] is not None]
    return TrendSums(n=sum(p[0] for p in parts), sum_x=sum(p[1] for p in parts),
                     sum_y=sum(p[2] for p in parts), sum_xx=sum(p[3] for p in parts),
                     sum_xy=sum(p[4] for p in parts), min=min(mins) if mins else None,
                     max=max(maxs) if maxs else None, first=first, last=last)
