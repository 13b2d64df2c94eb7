"""Read queries over the log used by the API, CLI and Python interfaces.

The latest row of a GPU is always a per-GPU seek on the (gpu_id, ts_ms) key
(``ORDER BY ts_ms DESC LIMIT 1``), never a ``GROUP BY`` over the samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gpuhistory.domain.reading import Reading
from gpuhistory.domain.states import GPUState
from gpuhistory.domain.trend import TrendSums
from gpuhistory.storage.schema import gpus, samples, transitions


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
    gpu: GpuRow
    ts_ms: int | None
    state: GPUState | None
    reading: Reading | None


def _gpu(row: sa.Row[Any]) -> GpuRow:
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
        pstate=row.pstate, fan_pct=row.fan_pct,
    )


def latest_samples(
    conn: sa.Connection, host: str, gpu_index: int | None = None, at_ms: int | None = None
) -> list[LatestSample]:
    """Each GPU index on ``host`` with its newest sample (at or before ``at_ms``).

    When one index was held by several devices over time (a sim run, then real cards; a
    swapped card), the device with the newest sample wins.
    """
    query = sa.select(gpus).where(gpus.c.host == host)
    if gpu_index is not None:
        query = query.where(gpus.c.gpu_index == gpu_index)
    best: dict[int, LatestSample] = {}
    for row in conn.execute(query.order_by(gpus.c.gpu_index, gpus.c.id)):
        gpu = _gpu(row)
        # Uses the samples primary key: SEARCH samples USING PRIMARY KEY (gpu_id=? AND ts_ms<?)
        seek = sa.select(samples).where(samples.c.gpu_id == gpu.id)
        if at_ms is not None:
            seek = seek.where(samples.c.ts_ms <= at_ms)
        newest = conn.execute(seek.order_by(samples.c.ts_ms.desc()).limit(1)).first()
        entry = LatestSample(
            gpu=gpu,
            ts_ms=None if newest is None else newest.ts_ms,
            state=None if newest is None else GPUState(newest.state),
            reading=None if newest is None else reading_from_row(gpu, newest),
        )
        current = best.get(gpu.index)
        if current is None or (entry.ts_ms or -1) > (current.ts_ms or -1):
            best[gpu.index] = entry
    return [best[i] for i in sorted(best)]


def cooldown_starts(conn: sa.Connection, gpu_id: int, at_ms: int) -> tuple[int | None, int | None]:
    """When the GPU last left THROTTLED/CRITICAL for a cool state, and last left CRITICAL."""
    t = transitions.c
    left_hot = conn.execute(
        sa.select(sa.func.max(t.ts_ms)).where(
            t.gpu_id == gpu_id, t.ts_ms <= at_ms, t.from_state.in_([2, 3]), t.to_state.in_([0, 1]))
    ).scalar()
    left_critical = conn.execute(
        sa.select(sa.func.max(t.ts_ms)).where(
            t.gpu_id == gpu_id, t.ts_ms <= at_ms, t.from_state == 3, t.to_state.in_([0, 1, 2]))
    ).scalar()
    return left_hot, left_critical


def newest_sample_ms(conn: sa.Connection, host: str) -> int | None:
    """The time of the newest sample of any GPU on ``host`` (a seek per GPU)."""
    newest = [s.ts_ms for s in latest_samples(conn, host) if s.ts_ms is not None]
    return max(newest) if newest else None


def trend_sums(conn: sa.Connection, gpu_id: int, since_ms: int, until_ms: int) -> TrendSums:
    """Aggregates for the least-squares trend, computed in SQL over the window's samples.

    Uses SEARCH samples USING PRIMARY KEY (gpu_id=? AND ts_ms>? AND ts_ms<?); x is minutes
    from the window start so the sums stay well-conditioned.
    """
    s = samples.c
    window = sa.and_(s.gpu_id == gpu_id, s.ts_ms >= since_ms, s.ts_ms <= until_ms,
                     s.temperature_c.is_not(None))
    x = (s.ts_ms - since_ms) / 60000.0
    y = s.temperature_c * 1.0
    row = conn.execute(
        sa.select(sa.func.count(s.temperature_c), sa.func.sum(x), sa.func.sum(y),
                  sa.func.sum(x * x), sa.func.sum(x * y), sa.func.min(s.temperature_c),
                  sa.func.max(s.temperature_c)).where(window)
    ).one()
    first = conn.execute(sa.select(s.temperature_c).where(window)
                         .order_by(s.ts_ms).limit(1)).scalar()
    last = conn.execute(sa.select(s.temperature_c).where(window)
                        .order_by(s.ts_ms.desc()).limit(1)).scalar()
    n = int(row[0] or 0)
    return TrendSums(n=n, sum_x=float(row[1] or 0), sum_y=float(row[2] or 0),
                     sum_xx=float(row[3] or 0), sum_xy=float(row[4] or 0),
                     min=row[5], max=row[6], first=first, last=last)
