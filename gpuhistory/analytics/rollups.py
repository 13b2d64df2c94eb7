"""Rollups: samples aggregated into 1-minute and 1-hour buckets, kept current by a job.

``samples_1m`` and ``samples_1h`` hold *partial aggregates* that combine exactly — counts,
sums, min/max, the OR of the clock-event reasons, the worst state — so any coarser bucket is
an aggregate of finer ones, and a bucket recomputed from the same rows is the same row.

The watermark: ``rollup_progress`` holds, per GPU, ``done_until_ms`` for ``1m`` (every
minute before it is complete and up to date) and for ``1h`` (every hour before it is; kept at
the start of the hour of the ``1m`` watermark). :class:`RollupJob` moves both forward in
chunks of at most ``chunk_ms`` of raw time, one transaction per GPU and chunk:

1. one ``INSERT INTO samples_1m ... SELECT ... FROM samples WHERE gpu_id = ? AND ts_ms
   >= ? AND ts_ms < ? GROUP BY ts_ms / 60000 ON CONFLICT (gpu_id, bucket_ms) DO UPDATE``,
2. the same from ``samples_1m`` into ``samples_1h`` for the hours whose minutes changed and
   which are now complete,
3. the new watermarks.

Because every write is an upsert of a bucket recomputed from all its rows, running a chunk
twice (a crash between steps is impossible: one transaction) never double-counts. Buckets
are only ever written, never deleted: once retention has removed a minute's raw rows its
``samples_1m`` row stays as it was. ``mark_dirty`` moves the watermarks back when rows
arrive for the past (``import``), and the next run recomputes from there.

All SQL is portable (SQLite and PostgreSQL): there is no portable ``bit_or`` aggregate, so
the OR of the reasons is ``max(r & 1) + max(r & 2) + ...`` over the known NVML bits.
"""

from __future__ import annotations

import functools
import logging
import operator
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gpuhistory.clock import Clock
from gpuhistory.domain.reading import CLOCK_EVENT_REASONS
from gpuhistory.storage.schema import gpus, rollup_progress, samples, samples_1h, samples_1m

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
CHUNK_MS = 6 * HOUR_MS  # raw time per transaction: 21,600 rows per GPU at 1 Hz
LATENESS_MS = 5_000

# The aggregate columns of a rollup row, in table order after (gpu_id, bucket_ms).
AGGREGATES = ("n", "temp_n", "temp_min", "temp_max", "temp_sum", "mem_max", "util_n",
              "util_sum", "power_n", "power_sum", "power_max", "reasons", "state_max")

# resolution → (table, bucket width)
ROLLUPS: dict[str, tuple[sa.Table, int]] = {"1m": (samples_1m, MINUTE_MS),
                                            "1h": (samples_1h, HOUR_MS)}


def floor_to(ms: int, unit: int) -> int:
    return ms // unit * unit


def ceil_to(ms: int, unit: int) -> int:
    return -(-ms // unit) * unit


# -- aggregate expressions (shared with history.py) --------------------------------------
def reasons_or(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """The bitwise OR of ``column`` over a group, in portable SQL.

    ``max(column & bit)`` is ``bit`` when any row has it set, 0 when none does, NULL when
    every row is NULL; the sum over the known bits is their OR (unknown bits are dropped).
    """
    terms = [sa.func.max(column.bitwise_and(bit)) for bit in sorted(CLOCK_EVENT_REASONS)]
    return functools.reduce(operator.add, terms)


def raw_aggregates(s: Any) -> list[sa.ColumnElement[Any]]:
    """The AGGREGATES of a group of samples rows (``s``: the samples columns)."""
    f = sa.func
    return [
        f.count().label("n"),
        f.count(s.temperature_c).label("temp_n"),
        f.min(s.temperature_c).label("temp_min"),
        f.max(s.temperature_c).label("temp_max"),
        f.sum(s.temperature_c).label("temp_sum"),
        f.max(s.memory_used_mib).label("mem_max"),
        f.count(s.utilization_pct).label("util_n"),
        f.sum(s.utilization_pct).label("util_sum"),
        f.count(s.power_dw).label("power_n"),
        f.sum(s.power_dw).label("power_sum"),
        f.max(s.power_dw).label("power_max"),
        reasons_or(s.clock_event_reasons).label("reasons"),
        f.max(s.state).label("state_max"),
    ]


def partial_aggregates(p: Any) -> list[sa.ColumnElement[Any]]:
    """The AGGREGATES of a group of rollup-shaped rows (``p``: columns named AGGREGATES)."""
    f = sa.func
    return [
        f.sum(p.n).label("n"),
        f.sum(p.temp_n).label("temp_n"),
        f.min(p.temp_min).label("temp_min"),
        f.max(p.temp_max).label("temp_max"),
        f.sum(p.temp_sum).label("temp_sum"),
        f.max(p.mem_max).label("mem_max"),
        f.sum(p.util_n).label("util_n"),
        f.sum(p.util_sum).label("util_sum"),
        f.sum(p.power_n).label("power_n"),
        f.sum(p.power_sum).label("power_sum"),
        f.max(p.power_max).label("power_max"),
        reasons_or(p.reasons).label("reasons"),
        f.max(p.state_max).label("state_max"),
    ]


def bucket_start(column: sa.ColumnElement[Any], width: int | sa.BindParameter[Any]
                 ) -> tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]]:
    """(select expression, GROUP BY expression) for buckets of ``width`` ms over ``column``.

    The select side is an aggregate (``min(column) / width * width``), so the statement is
    valid on PostgreSQL too, where a bound parameter in the select list does not match the
    same expression in GROUP BY.
    """
    return ((sa.func.min(column) // width) * width).label("bucket_ms"), column // width


# -- statements ----------------------------------------------------------------------------
def _dialect(conn: sa.Connection) -> str:
    name = conn.dialect.name
    if name not in ("sqlite", "postgresql"):
        raise RuntimeError(f"rollups support SQLite and PostgreSQL, not {name}")
    return name


def _dialect_insert(conn: sa.Connection, table: sa.Table) -> Any:
    """INSERT with ON CONFLICT (sqlalchemy's sqlite/postgresql ``insert``)."""
    return (sqlite.insert if _dialect(conn) == "sqlite" else postgresql.insert)(table)


def _source_select(resolution: str) -> sa.Select[Any]:
    """The SELECT feeding ``resolution``'s table for one GPU and [:lo, :hi).

    1m, from samples: SEARCH samples USING PRIMARY KEY (gpu_id=? AND ts_ms>? AND ts_ms<?)
    1h, from samples_1m: SEARCH samples_1m USING PRIMARY KEY (gpu_id=? AND bucket_ms>? AND
    bucket_ms<?); both then USE TEMP B-TREE FOR GROUP BY (a few hundred groups at most).
    """
    gpu_id = sa.bindparam("gpu_id", type_=sa.Integer)
    lo, hi = sa.bindparam("lo", type_=sa.BigInteger), sa.bindparam("hi", type_=sa.BigInteger)
    if resolution == "1m":
        s = samples.c
        select_bucket, group = bucket_start(s.ts_ms, MINUTE_MS)
        return (sa.select(gpu_id, select_bucket, *raw_aggregates(s))
                .where(s.gpu_id == gpu_id, s.ts_ms >= lo, s.ts_ms < hi).group_by(group))
    m = samples_1m.c
    select_bucket, group = bucket_start(m.bucket_ms, HOUR_MS)
    return (sa.select(gpu_id, select_bucket, *partial_aggregates(m))
            .where(m.gpu_id == gpu_id, m.bucket_ms >= lo, m.bucket_ms < hi).group_by(group))


@functools.cache
def _upsert_statement(dialect: str, resolution: str) -> Any:
    """INSERT INTO <rollup> SELECT ... ON CONFLICT (gpu_id, bucket_ms) DO UPDATE (cached)."""
    table = ROLLUPS[resolution][0]
    insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table)
    columns = [table.c.gpu_id, table.c.bucket_ms, *(table.c[name] for name in AGGREGATES)]
    statement = insert.from_select(columns, _source_select(resolution))
    return statement.on_conflict_do_update(
        index_elements=[table.c.gpu_id, table.c.bucket_ms],
        set_={name: statement.excluded[name] for name in AGGREGATES},
    ).execution_options(preserve_rowcount=True)  # an INSERT's rowcount, on every driver


def upsert_buckets(conn: sa.Connection, resolution: str, gpu_id: int, lo: int, hi: int) -> int:
    """Recompute ``resolution``'s buckets of one GPU in [lo, hi) from the finer source.

    Buckets with no source rows are left as they are. Returns the rows written.
    """
    if lo >= hi:
        return 0
    result = conn.execute(_upsert_statement(_dialect(conn), resolution),
                          {"gpu_id": gpu_id, "lo": lo, "hi": hi})
    return max(result.rowcount or 0, 0)


def _first_sample_ms(conn: sa.Connection, gpu_id: int, lo: int | None = None,
                     hi: int | None = None) -> int | None:
    """The first sample time of a GPU in [lo, hi): one seek on the samples key."""
    s = samples.c
    query = sa.select(s.ts_ms).where(s.gpu_id == gpu_id)
    if lo is not None:
        query = query.where(s.ts_ms >= lo)
    if hi is not None:
        query = query.where(s.ts_ms < hi)
    return conn.execute(query.order_by(s.ts_ms).limit(1)).scalar()


def watermarks(conn: sa.Connection, gpu_id: int, lock: bool = False) -> dict[str, int]:
    """``{"1m": done_until_ms, "1h": done_until_ms}`` of a GPU (empty: never rolled up)."""
    p = rollup_progress.c
    query = sa.select(p.resolution, p.done_until_ms).where(p.gpu_id == gpu_id)
    if lock:
        query = query.with_for_update()  # PostgreSQL: one job per GPU at a time
    return {row.resolution: row.done_until_ms for row in conn.execute(query)}


def _set_watermarks(conn: sa.Connection, gpu_id: int, marks: dict[str, int]) -> None:
    p = rollup_progress
    for resolution, done_until in marks.items():
        insert = _dialect_insert(conn, p).values(gpu_id=gpu_id, resolution=resolution,
                                                 done_until_ms=done_until)
        conn.execute(insert.on_conflict_do_update(
            index_elements=[p.c.gpu_id, p.c.resolution],
            set_={"done_until_ms": insert.excluded.done_until_ms}))


def mark_dirty(conn: sa.Connection, gpu_id: int, from_ms: int) -> None:
    """Rows from ``from_ms`` on changed (an import of older history): roll up again from there.

    Moves the GPU's watermarks back to the minute and hour of ``from_ms`` (never forward).
    Call it in the transaction that wrote the rows, so both commit together. A GPU never
    rolled up gets watermarks at its first sample, so nothing before ``from_ms`` is skipped.
    """
    p = rollup_progress
    first = _first_sample_ms(conn, gpu_id)
    start = from_ms if first is None else min(first, from_ms)
    for resolution, (_table, unit) in ROLLUPS.items():
        back_to = floor_to(from_ms, unit)
        insert = _dialect_insert(conn, p).values(gpu_id=gpu_id, resolution=resolution,
                                                 done_until_ms=floor_to(start, unit))
        conn.execute(insert.on_conflict_do_update(
            index_elements=[p.c.gpu_id, p.c.resolution],
            set_={"done_until_ms": sa.case((p.c.done_until_ms > back_to, back_to),
                                           else_=p.c.done_until_ms)}))


def _merge(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] < r[1]):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


class RollupJob:
    """Keeps samples_1m and samples_1h current; scheduled by ``serve`` every 30 s.

    ``run()`` rolls every GPU up to the last complete minute before now - ``lateness_ms``
    (a tick in flight may still commit rows a few seconds old), in chunks of ``chunk_ms``
    of raw time, one short transaction each (``BEGIN IMMEDIATE`` on SQLite), GPUs taken in
    turn so a long catch-up of one does not starve the others. ``host`` limits it to one
    host's GPUs (default: every GPU in the database, imported hosts included).
    """

    def __init__(self, engine: sa.Engine, clock: Clock, lateness_ms: int = LATENESS_MS,
                 *, chunk_ms: int = CHUNK_MS, host: str | None = None) -> None:
        if chunk_ms < HOUR_MS or chunk_ms % HOUR_MS:
            raise ValueError("chunk_ms must be a whole number of hours")
        self.engine = engine
        self.clock = clock
        self.lateness_ms = lateness_ms
        self.chunk_ms = chunk_ms
        self.host = host
        self.chunks = 0  # transactions that wrote something, since this job was made

    mark_dirty = staticmethod(mark_dirty)

    @contextmanager
    def _begin(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    def _gpu_ids(self, behind: int | None = None) -> list[int]:
        """The job's GPUs; with ``behind``, only those not yet rolled up to that time
        (read without the write lock, so an idle run takes no lock at all)."""
        query = sa.select(gpus.c.id).order_by(gpus.c.id)
        if self.host is not None:
            query = query.where(gpus.c.host == self.host)
        if behind is not None:
            p = rollup_progress.c
            done = (sa.select(p.done_until_ms)
                    .where(p.gpu_id == gpus.c.id, p.resolution == "1m").scalar_subquery())
            query = query.where(sa.or_(done.is_(None), done < behind))
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def target_ms(self) -> int:
        """Where a run stops: the start of the minute holding now - lateness."""
        return floor_to(self.clock.now_ms() - self.lateness_ms, MINUTE_MS)

    def run(self, max_seconds: float | None = None) -> int:
        """Roll every GPU up to :meth:`target_ms`; returns the buckets written (1m + 1h).

        With ``max_seconds``, stops after the chunk that takes it past that much wall time
        (at least one chunk runs); the next run goes on from the watermarks.
        """
        started = time.monotonic()
        target = self.target_ms()
        pending = self._gpu_ids(behind=target)
        written = 0
        while pending:
            for gpu_id in list(pending):
                count, done = self.step(gpu_id, target)
                written += count
                if done:
                    pending.remove(gpu_id)
                elif max_seconds is not None and time.monotonic() - started >= max_seconds:
                    log.info("rollups: %d GPU(s) still catching up; going on next run",
                             len(pending))
                    return written
        return written

    def safe_run(self, max_seconds: float | None = 20.0) -> int:
        """``run`` for the scheduler: an error is logged (the next run retries), not raised."""
        try:
            return self.run(max_seconds=max_seconds)
        except Exception as exc:
            log.warning("rollup run failed (retrying at the next run): %s", exc)
            return 0

    def step(self, gpu_id: int, target: int) -> tuple[int, bool]:
        """One chunk of one GPU in one transaction: (buckets written, caught up?)."""
        with self._begin() as conn:
            marks = watermarks(conn, gpu_id, lock=True)
            if "1m" not in marks:
                first = _first_sample_ms(conn, gpu_id)
                if first is None:
                    return 0, True  # no samples yet
                marks = {"1m": floor_to(first, MINUTE_MS), "1h": floor_to(first, HOUR_MS)}
            w1m = marks["1m"]
            w1h = min(marks.get("1h", w1m), floor_to(w1m, HOUR_MS))
            if w1m >= target:
                return 0, True
            written = 0
            first = _first_sample_ms(conn, gpu_id, w1m, target)
            if first is None:  # nothing (more) to roll up before the target
                lo = new_w1m = target
            else:  # skip empty time (a GPU that was off) to the next sample
                lo = max(w1m, floor_to(first, MINUTE_MS))
                new_w1m = min(target, lo + self.chunk_ms)
                written += upsert_buckets(conn, "1m", gpu_id, lo, new_w1m)
            new_w1h = floor_to(new_w1m, HOUR_MS)
            # Hours to recompute: complete ones (before new_w1h) holding a changed minute —
            # the minutes rolled up earlier but not yet in an hour ([w1h, w1m)), and this
            # chunk's ([lo, new_w1m)). Hours in a skipped gap did not change.
            changed = [(w1h, min(ceil_to(w1m, HOUR_MS), new_w1h))]
            if lo < new_w1m:
                changed.append((floor_to(lo, HOUR_MS), new_w1h))
            for hour_lo, hour_hi in _merge(changed):
                written += upsert_buckets(conn, "1h", gpu_id, hour_lo, hour_hi)
            _set_watermarks(conn, gpu_id, {"1m": new_w1m, "1h": max(w1h, new_w1h)})
            if written:
                self.chunks += 1
            return written, new_w1m >= target

    def rebuild(self) -> int:
        """Recompute every bucket that still has raw samples, from the first sample on.

        Buckets whose raw rows retention already removed keep their values. Returns the
        buckets written.
        """
        ids = self._gpu_ids()
        with self._begin() as conn:
            if ids:
                conn.execute(rollup_progress.delete().where(rollup_progress.c.gpu_id.in_(ids)))
        return self.run()


__all__ = ["AGGREGATES", "CHUNK_MS", "HOUR_MS", "MINUTE_MS", "ROLLUPS", "RollupJob",
           "bucket_start", "floor_to", "mark_dirty", "partial_aggregates", "raw_aggregates",
           "reasons_or", "upsert_buckets", "watermarks"]
