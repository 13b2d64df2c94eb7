"""Retention (DESIGN §3): raw samples for ``retention_raw_days``, 1-minute rollups for
``retention_rollup_days``; hourly rollups, transitions, events, leases and incidents forever.

Raw samples are deleted only where all of these hold:

- older than ``retention_raw_days``;
- already folded into the 1-minute rollups (before ``rollup_progress.done_until_ms`` of
  resolution ``1m`` for that GPU) — without the rollup tables or a watermark for the GPU,
  nothing of it is deleted, and the result says so;
- already scanned for incidents (at or before the incident detector's watermark);
- outside every incident's window ``[start - context, end + context]`` (an ongoing
  incident's window has no end), ``context`` being ``incident_context_minutes``.

1-minute rollup rows are deleted when older than ``retention_rollup_days`` and already
folded into the hourly rollups (``done_until_ms`` of resolution ``1h``).

On PostgreSQL ``samples`` is partitioned by day (gpuhistory/storage/partitions.py) and
raw samples go a whole partition at a time: a day partition goes once all of it is older
than ``retention_raw_days`` and each GPU's rows in it are before that GPU's two
watermarks above. The rows of the incident windows in it are first copied into
``samples_kept``, which the raw history and post-mortem queries read too. No DELETE, so no
dead rows for autovacuum to chase; a day stays up to a day longer than on SQLite. Only
rows in the DEFAULT partition that the partition maintenance (run first, by this job) has
not yet moved to a day partition of their own are deleted row by row, as on SQLite.

Deletion goes in small batches — at most ``batch_rows`` rows, one GPU, one key range
``gpu_id = ? AND ts_ms BETWEEN ? AND ?`` per transaction — so the sampler never waits
long for the write lock. SQLite reuses the freed pages; the file does not shrink.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from gpuhistory.alerts.store import prune_deliveries
from gpuhistory.clock import Clock
from gpuhistory.domain.config import Config
from gpuhistory.storage import partitions
from gpuhistory.storage.schema import gpus, incident_progress, incidents

log = logging.getLogger(__name__)

BATCH_ROWS = 5_000
DAY_MS = 86_400_000


@dataclass(slots=True)
class RetentionResult:
    raw_deleted: int = 0
    rollup_deleted: int = 0
    deliveries_deleted: int = 0  # webhook delivery-log rows past retention_delivery_days
    partitions_dropped: list[str] = field(default_factory=list)  # PostgreSQL: whole days
    partitions_created: list[str] = field(default_factory=list)  # PostgreSQL: days ahead
    partitions_compacted: list[str] = field(default_factory=list)  # PostgreSQL: key rebuilt
    batches: int = 0
    notes: list[str] = field(default_factory=list)
    finished: bool = True  # False: stopped at max_seconds; the next run goes on


def _subtract(lo: int, hi: int, protected: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[lo, hi) less the closed intervals in ``protected`` (sorted), as [a, b) ranges."""
    out = []
    cursor = lo
    for a, b in protected:
        if b < cursor:
            continue
        if a >= hi:
            break
        if a > cursor:
            out.append((cursor, min(a, hi)))
        cursor = max(cursor, b + 1)
        if cursor >= hi:
            break
    if cursor < hi:
        out.append((cursor, hi))
    return out


class RetentionJob:
    """Deletes what the retention settings no longer keep; ``run`` is the hourly job."""

    def __init__(self, engine: sa.Engine, clock: Clock, config: Callable[[], Config] | Config,
                 batch_rows: int = BATCH_ROWS) -> None:
        self.engine = engine
        self.clock = clock
        self._config = config
        self.batch_rows = batch_rows
        self._deadline: float | None = None

    def config(self) -> Config:
        return self._config if isinstance(self._config, Config) else self._config()

    def safe_run(self, max_seconds: float | None = 60.0) -> RetentionResult | None:
        """``run`` for the scheduler: a database error is logged, not raised."""
        try:
            return self.run(max_seconds=max_seconds)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("retention failed (the next run retries): %s", exc)
            return None

    def run(self, max_seconds: float | None = None) -> RetentionResult:
        """Delete what retention no longer keeps; with ``max_seconds``, stop after the batch
        that passes it (the next run goes on where it stopped)."""
        config = self.config()
        now = self.clock.now_ms()
        result = RetentionResult()
        self._deadline = None if max_seconds is None else time.perf_counter() + max_seconds
        raw_cutoff = now - round(config.retention_raw_days * DAY_MS)
        # Whole hours only: an hour that kept some of its minutes could be rolled up again
        # (an import of old data) from a part of them and undercount.
        rollup_cutoff = (now - round(config.retention_rollup_days * DAY_MS)) // 3_600_000 \
            * 3_600_000
        with self.engine.connect() as conn:
            partitioned = partitions.is_partitioned(conn)
        if partitioned:
            made = partitions.maintain(self.engine, now)
            result.partitions_created = made.created
            result.partitions_compacted = made.compacted
            result.notes.extend(made.skipped)
        with self.engine.connect() as conn:
            inspector = sa.inspect(conn)
            has_rollups = all(inspector.has_table(t) for t in ("rollup_progress", "samples_1m"))
            gpu_ids = list(conn.execute(sa.select(gpus.c.id).order_by(gpus.c.id)).scalars())
            done_1m = self._watermarks(conn, "1m") if has_rollups else {}
            done_1h = self._watermarks(conn, "1h") if has_rollups else {}
            scanned = dict(conn.execute(sa.select(incident_progress.c.gpu_id,
                                                  incident_progress.c.scanned_until_ms)).all())
            windows = self._incident_windows(conn, config)
        if not has_rollups:
            result.notes.append("no rollup tables: raw samples are kept until rollups exist")
        raw_limits: dict[int, int] = {}
        for gpu_id in gpu_ids:
            if not has_rollups:
                break
            limits = [raw_cutoff]
            if gpu_id not in done_1m:
                result.notes.append(f"gpus.id {gpu_id}: no 1-minute rollup watermark; "
                                    "raw samples kept")
                continue
            limits.append(done_1m[gpu_id])
            if scanned.get(gpu_id) is None:
                result.notes.append(f"gpus.id {gpu_id}: not yet scanned for incidents; "
                                    "raw samples kept")
                continue
            limits.append(scanned[gpu_id] + 1)
            raw_limits[gpu_id] = min(limits)
        if partitioned and has_rollups:
            self._drop_partitions(raw_cutoff, raw_limits, windows, result)
        # SQLite: the table; PostgreSQL: the rows no day partition has taken yet (if any).
        raw_table = partitions.DEFAULT_PARTITION if partitioned else "samples"
        if partitioned and not self._has_default_rows():
            raw_limits = {}
        for gpu_id, limit in raw_limits.items():
            for lo, hi in _subtract(-(2**62), limit, windows.get(gpu_id, [])):
                result.raw_deleted += self._delete_range(raw_table, "ts_ms", gpu_id, lo, hi,
                                                         result)
        if has_rollups:
            for gpu_id in gpu_ids:
                if gpu_id not in done_1h:
                    continue
                limit = min(rollup_cutoff, done_1h[gpu_id])
                result.rollup_deleted += self._delete_range("samples_1m", "bucket_ms", gpu_id,
                                                            -(2**62), limit, result)
        result.deliveries_deleted = prune_deliveries(
            self.engine, now - round(config.retention_delivery_days * DAY_MS), self.batch_rows)
        if result.partitions_dropped:
            log.info("retention: dropped samples partitions %s",
                     ", ".join(result.partitions_dropped))
        if result.raw_deleted or result.rollup_deleted:
            log.info("retention: deleted %d raw samples and %d 1-minute rollups in %d batches",
                     result.raw_deleted, result.rollup_deleted, result.batches)
        for note in result.notes:
            log.debug("retention: %s", note)
        return result

    def _drop_partitions(self, raw_cutoff: int, raw_limits: dict[int, int],
                         windows: dict[int, list[tuple[int, int]]],
                         result: RetentionResult) -> None:
        """Drop each day partition wholly before ``raw_cutoff`` in which every GPU's rows are
        before its ``raw_limits`` (where its rollups and incident scan have reached), after
        copying its incident windows' rows into ``samples_kept``."""
        with self.engine.connect() as conn:
            candidates = [p for p in partitions.partitions(conn) if p.hi_ms <= raw_cutoff]
        for part in candidates:
            with self.engine.connect() as conn:
                waiting = [gpu_id for gpu_id, limit in raw_limits.items() if limit < part.hi_ms
                           and partitions.has_rows(conn, part, gpu_id, since_ms=limit)]
                # A GPU without a watermark is not in raw_limits: kept if it has rows here.
                waiting += [gpu_id for gpu_id in self._unlimited(conn, raw_limits)
                            if partitions.has_rows(conn, part, gpu_id)]
            if waiting:
                result.notes.append(f"{part.name} kept: gpus.id {waiting[0]} not yet rolled "
                                    "up or scanned to its end")
                continue
            keep = [(gpu_id, max(a, part.lo_ms), min(b, part.hi_ms - 1))
                    for gpu_id, spans in windows.items() for a, b in spans
                    if a < part.hi_ms and b >= part.lo_ms]
            if self._deadline is not None and time.perf_counter() > self._deadline:
                result.finished = False
                return
            try:
                gone = partitions.drop(self.engine, part, keep)
            except sa.exc.OperationalError as exc:  # the lock timeout: next run
                result.notes.append(f"{part.name} not dropped: {exc.orig}")
                continue
            if gone is not None:  # None: another sampler's run dropped it first
                result.raw_deleted += gone
                result.partitions_dropped.append(part.name)

    def _has_default_rows(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(
                f"SELECT 1 FROM {partitions.DEFAULT_PARTITION} LIMIT 1")).first() is not None

    @staticmethod
    def _unlimited(conn: sa.Connection, raw_limits: dict[int, int]) -> list[int]:
        """GPUs in the database whose raw samples have no retention limit yet."""
        every = conn.execute(sa.select(gpus.c.id).order_by(gpus.c.id)).scalars()
        return [gpu_id for gpu_id in every if gpu_id not in raw_limits]

    @staticmethod
    def _watermarks(conn: sa.Connection, resolution: str) -> dict[int, int]:
        rows = conn.execute(
            sa.text("SELECT gpu_id, done_until_ms FROM rollup_progress "
                    "WHERE resolution = :resolution"), {"resolution": resolution})
        return {gpu_id: done for gpu_id, done in rows if done is not None}

    @staticmethod
    def _incident_windows(conn: sa.Connection,
                          config: Config) -> dict[int, list[tuple[int, int]]]:
        """Per GPU, the protected windows [start - context, end + context], merged, sorted."""
        context = round(config.incident_context_minutes * 60_000)
        i = incidents.c
        out: dict[int, list[tuple[int, int]]] = {}
        for gpu_id, start, end in conn.execute(
            sa.select(i.gpu_id, i.start_ms, i.end_ms).order_by(i.gpu_id, i.start_ms)
        ):
            window = (start - context, 2**62 if end is None else end + context)
            spans = out.setdefault(gpu_id, [])
            if spans and window[0] <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], window[1]))
            else:
                spans.append(window)
        return out

    def _delete_range(self, table: str, column: str, gpu_id: int, lo: int, hi: int,
                      result: RetentionResult) -> int:
        """Delete the GPU's rows with lo <= key < hi, ``batch_rows`` at a time."""
        seek = sa.text(f"SELECT {column} FROM {table} WHERE gpu_id = :gpu AND {column} >= :lo "
                       f"AND {column} < :hi ORDER BY {column} LIMIT 1 OFFSET :offset")
        delete = sa.text(f"DELETE FROM {table} WHERE gpu_id = :gpu AND {column} >= :lo "
                         f"AND {column} <= :upper")
        deleted = 0
        while lo < hi and result.finished:
            with self.engine.connect() as conn:
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
                with conn.begin():
                    params = {"gpu": gpu_id, "lo": lo, "hi": hi}
                    upper = conn.execute(seek, {**params, "offset": self.batch_rows - 1}).scalar()
                    last_batch = upper is None
                    if upper is None:
                        upper = hi - 1
                    count = conn.execute(delete, {**params, "upper": upper}).rowcount
            if count:
                result.batches += 1
                deleted += count
            if last_batch:
                break
            if self._deadline is not None and time.perf_counter() > self._deadline:
                result.finished = False
                break
            lo = upper + 1
        return deleted
