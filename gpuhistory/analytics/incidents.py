"""Overheat incidents (DESIGN §3): found by SQL over the samples, stored, and explained.

An incident is a maximal period in which a GPU's temperature stays at or above
``temp_throttle``, closing when it falls below ``temp_throttle - hysteresis_c``; incidents
separated by less than ``incident_merge_seconds`` are one. In SQL that is gaps and islands
(window functions, SQLite >= 3.25 and PostgreSQL alike):

1. *islands*: maximal runs of consecutive samples at or above the low mark
   (``temp_throttle - hysteresis_c``). A sample below the low mark, or more than
   :func:`gap_ms` after the previous one (a data gap: the service was down, the GPU lost),
   starts a new island;
2. an island holding a sample at or above ``temp_throttle`` is a *run*, from that sample to
   the island's end: the first sample below the low mark — or, when a data gap follows,
   the island's last sample. A run whose island reaches the GPU's newest sample, with that
   sample less than a gap old, is *ongoing* (no end yet);
3. runs less than ``incident_merge_seconds`` apart are merged into one incident.

Samples with no temperature (NOT_SUPPORTED, or an UNAVAILABLE GPU) are left out of the
scan: they neither start nor end an island by themselves, but a long stretch of them is a
data gap. Severity is ``severe`` when a sample is above (strictly) ``temp_critical``.

:class:`IncidentDetector` scans each GPU incrementally from a watermark
(``incident_progress``) and upserts the incidents it finds, keyed (gpu, start), so
rescans and re-imports keep each incident's row and id. Detection uses the thresholds in
force when it runs and stores them with each incident. After a change, the next scan that
sees new samples starts at the last sample below the new low mark before its usual start
(so the stretch it rescans is judged whole by the new thresholds); incidents that closed
before that keep what they were detected with until :meth:`IncidentDetector.rebuild`.

The rest of the module answers questions about stored incidents: the list, and the
post-mortem of one (:func:`postmortem`) that the API and the CLI return.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from gpuhistory.clock import Clock, iso_utc
from gpuhistory.domain.config import Config
from gpuhistory.domain.metrics import GPUMetrics
from gpuhistory.domain.reading import CLOCK_EVENT_REASONS, clock_event_reason_names
from gpuhistory.domain.states import GPUState
from gpuhistory.storage import schema
from gpuhistory.storage.queries import GpuRow, reading_from_row
from gpuhistory.storage.schema import (
    events,
    gpus,
    incident_progress,
    incidents,
    samples,
    transitions,
)

log = logging.getLogger(__name__)

MIN_GAP_MS = 60_000  # a data gap: no temperature for this long (or 3 sampling intervals)
CHUNK_SAMPLES = 200_000  # samples scanned per transaction when catching up on a long log
SEVERITIES = ("overheat", "severe")
FAR_PAST_MS = -(2**62)
FAR_FUTURE_MS = 2**62

_I = incidents.c
_P = incident_progress.c
_S = samples.c

# Steps 1-3 of the module docstring, plus each incident's figures, in one statement.
# :lo/:hi bound the scan; :chunked = 1 when samples exist after :hi (the last island may
# go on). Ends: the closing sample, or the last hot sample before a data gap. The figures
# read each incident's own samples by primary-key range (not the whole scan again); time
# above temp_critical sums the gaps to the next sample (at most a data gap each).
DETECT_SQL = sa.text("""
WITH s AS (
    SELECT ts_ms, temperature_c AS temp,
           LAG(ts_ms) OVER w AS prev_ts,
           LEAD(ts_ms) OVER w AS next_ts
    FROM samples
    WHERE gpu_id = :gpu AND ts_ms >= :lo AND ts_ms <= :hi AND temperature_c IS NOT NULL
    WINDOW w AS (ORDER BY ts_ms)
),
g AS (
    SELECT ts_ms, temp, next_ts,
           SUM(CASE WHEN temp < :low OR prev_ts IS NULL OR ts_ms - prev_ts > :gap
                    THEN 1 ELSE 0 END)
               OVER (ORDER BY ts_ms ROWS UNBOUNDED PRECEDING) AS island
    FROM s
),
islands AS (
    SELECT MIN(CASE WHEN temp >= :high THEN ts_ms END) AS start_ms,
           MAX(ts_ms) AS last_ms,
           CASE WHEN COUNT(next_ts) < COUNT(*) THEN NULL ELSE MAX(next_ts) END AS after_ts
    FROM g
    WHERE temp >= :low
    GROUP BY island
    HAVING MAX(temp) >= :high
),
runs AS (
    SELECT start_ms, last_ms,
           CASE WHEN after_ts IS NULL THEN
                    CASE WHEN :chunked = 1 OR :now - last_ms <= :gap THEN NULL
                         ELSE last_ms END
                WHEN after_ts - last_ms <= :gap THEN after_ts
                ELSE last_ms END AS end_ms
    FROM islands
),
marked AS (
    SELECT start_ms, last_ms, end_ms,
           LAG(COALESCE(end_ms, last_ms)) OVER (ORDER BY start_ms) AS prev_end
    FROM runs
),
numbered AS (
    SELECT start_ms, last_ms, end_ms,
           SUM(CASE WHEN prev_end IS NOT NULL AND start_ms - prev_end < :merge
                    THEN 0 ELSE 1 END)
               OVER (ORDER BY start_ms ROWS UNBOUNDED PRECEDING) AS n
    FROM marked
),
found AS (
    SELECT MIN(start_ms) AS start_ms, MAX(last_ms) AS last_ms,
           CASE WHEN COUNT(end_ms) < COUNT(*) THEN NULL ELSE MAX(end_ms) END AS end_ms
    FROM numbered
    GROUP BY n
),
figures AS (
    SELECT f.start_ms, f.end_ms, f.last_ms,
           MAX(x.temperature_c) AS peak, SUM(x.temperature_c) AS temp_sum,
           COUNT(x.temperature_c) AS temp_n, MAX(x.power_dw) AS peak_power_dw
    FROM found f
    JOIN samples x ON x.gpu_id = :gpu AND x.ts_ms >= f.start_ms AND x.ts_ms <= f.last_ms
    GROUP BY f.start_ms, f.end_ms, f.last_ms
),
critical AS (
    SELECT ts_ms, CASE WHEN next_ts - ts_ms > :gap THEN :gap ELSE next_ts - ts_ms END AS ms
    FROM s
    WHERE temp > :critical AND next_ts IS NOT NULL
)
SELECT start_ms, end_ms, last_ms, peak, temp_sum, temp_n, peak_power_dw,
       (SELECT COALESCE(SUM(c.ms), 0) FROM critical c
        WHERE c.ts_ms >= figures.start_ms AND c.ts_ms <= figures.last_ms) AS above_critical_ms,
       (SELECT MIN(p.ts_ms) FROM samples p
        WHERE p.gpu_id = :gpu AND p.ts_ms >= figures.start_ms AND p.ts_ms <= figures.last_ms
          AND p.temperature_c = figures.peak) AS peak_ms
FROM figures
ORDER BY start_ms
""")


# -- thresholds ---------------------------------------------------------------------------
def gap_ms(config: Config) -> int:
    """How long without a temperature counts as a data gap (ends an island)."""
    return max(MIN_GAP_MS, round(3 * config.monitor_interval * 1000))


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The figures detection runs with, taken from one Config."""

    high: float  # temp_throttle
    hysteresis: float
    critical: float  # temp_critical
    merge_ms: int
    gap_ms: int

    @classmethod
    def of(cls, config: Config) -> Thresholds:
        return cls(high=config.temp_throttle, hysteresis=config.hysteresis_c,
                   critical=config.temp_critical,
                   merge_ms=round(config.incident_merge_seconds * 1000), gap_ms=gap_ms(config))

    @property
    def low(self) -> float:
        return self.high - self.hysteresis

    @property
    def margin_ms(self) -> int:
        """How far before the watermark a scan starts, so no merge or gap is missed."""
        return self.merge_ms + self.gap_ms

    @property
    def key(self) -> str:
        """What the watermark remembers of the thresholds it was scanned with."""
        return (f"{self.high:g}/{self.hysteresis:g}/{self.critical:g}/{self.merge_ms}/"
                f"{self.gap_ms}")


@dataclass(frozen=True, slots=True)
class Found:
    """An incident as one scan saw it (times in epoch ms; ``end_ms`` None: ongoing)."""

    start_ms: int
    end_ms: int | None
    last_sample_ms: int
    peak_temp_c: int
    peak_ms: int
    temp_sum: int
    temp_n: int
    above_critical_ms: int
    peak_power_dw: int | None
    clock_event_reasons: int
    severity: str


def detect(conn: sa.Connection, gpu_id: int, th: Thresholds, now_ms: int,
           lo: int = FAR_PAST_MS, hi: int | None = None) -> list[Found]:
    """The incidents in one GPU's samples with ``lo <= ts_ms <= hi`` (``hi`` None: all).

    Pure reading: nothing is written. With ``hi`` given, an incident still hot at ``hi``
    is reported as ongoing (the caller scans on from its start).
    """
    upper = FAR_FUTURE_MS if hi is None else hi
    # Most stretches of a log never reach temp_throttle: one primary-key range scan says so,
    # and the window functions below run only where there is something to find.
    if conn.execute(sa.select(_S.ts_ms).where(
            _S.gpu_id == gpu_id, _S.ts_ms >= lo, _S.ts_ms <= upper,
            _S.temperature_c >= th.high).limit(1)).first() is None:
        return []
    params = {
        "gpu": gpu_id, "lo": lo, "hi": upper,
        "chunked": 0 if hi is None else 1, "now": now_ms, "low": th.low, "high": th.high,
        "critical": th.critical, "gap": th.gap_ms, "merge": th.merge_ms,
    }
    out = []
    for row in conn.execute(DETECT_SQL, params):
        reasons = _reasons_between(conn, gpu_id, row.start_ms, row.last_ms)
        out.append(Found(
            start_ms=row.start_ms, end_ms=row.end_ms, last_sample_ms=row.last_ms,
            peak_temp_c=int(row.peak), peak_ms=row.peak_ms, temp_sum=int(row.temp_sum),
            temp_n=int(row.temp_n), above_critical_ms=int(row.above_critical_ms or 0),
            peak_power_dw=row.peak_power_dw, clock_event_reasons=reasons,
            severity="severe" if row.peak > th.critical else "overheat",
        ))
    return out


def _reasons_between(conn: sa.Connection, gpu_id: int, start_ms: int, last_ms: int) -> int:
    """The OR of the clock-event reason masks the GPU reported in [start, last]."""
    mask = 0
    for (value,) in conn.execute(
        sa.select(_S.clock_event_reasons).distinct()
        .where(_S.gpu_id == gpu_id, _S.ts_ms >= start_ms, _S.ts_ms <= last_ms,
               _S.clock_event_reasons.is_not(None))
    ):
        mask |= int(value)
    return mask


# -- the detector ---------------------------------------------------------------------------
@dataclass(slots=True)
class DetectionResult:
    """What one run of the detector did."""

    gpus: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    samples_scanned_to: dict[int, int] = field(default_factory=dict)  # gpus.id → watermark
    conflicts: int = 0  # GPUs left for the next run: another writer moved their watermark
    finished: bool = True  # False: stopped at max_seconds, the next run goes on


@dataclass(frozen=True, slots=True)
class _Progress:
    exists: bool
    scanned_until_ms: int | None
    version: int
    thresholds: str | None


def _read_progress(conn: sa.Connection, gpu_id: int) -> _Progress:
    row = conn.execute(sa.select(_P.scanned_until_ms, _P.version, _P.thresholds)
                       .where(_P.gpu_id == gpu_id)).first()
    if row is None:
        return _Progress(False, None, 0, None)
    return _Progress(True, row.scanned_until_ms, row.version, row.thresholds)


def mark_dirty(conn: sa.Connection, gpu_id: int, from_ms: int) -> None:
    """Samples of ``gpu_id`` from ``from_ms`` on were added out of order (an import):
    the detector rescans from there. Call it inside the transaction that added them."""
    progress = _read_progress(conn, gpu_id)
    if not progress.exists:
        conn.execute(incident_progress.insert().values(gpu_id=gpu_id, scanned_until_ms=None,
                                                       version=1))
        return
    until = progress.scanned_until_ms
    if until is not None:
        until = min(until, from_ms - 1)
    conn.execute(incident_progress.update().where(_P.gpu_id == gpu_id)
                 .values(scanned_until_ms=until, version=_P.version + 1))


class IncidentDetector:
    """Finds incidents in the samples and keeps the incidents table up to date.

    ``run`` is the scheduler's job (every 10 s in ``serve``): per GPU it rescans from its
    watermark (less a margin for merging and gaps; from the start of an incident still
    open there) to the newest sample, upserts what it finds and moves the watermark. The
    scan reads without locking; the write is one short transaction per GPU that first
    checks no one else moved the watermark meanwhile (an import, another detector).
    """

    def __init__(self, engine: sa.Engine, clock: Clock,
                 config: Callable[[], Config] | Config, host: str | None = None,
                 chunk_samples: int = CHUNK_SAMPLES) -> None:
        self.engine = engine
        self.clock = clock
        self._config = config
        self.host = host  # None: every GPU in the database
        self.chunk_samples = chunk_samples

    def config(self) -> Config:
        return self._config if isinstance(self._config, Config) else self._config()

    def _gpu_ids(self, gpu_id: int | None = None) -> list[int]:
        query = sa.select(gpus.c.id).order_by(gpus.c.id)
        if self.host is not None:
            query = query.where(gpus.c.host == self.host)
        if gpu_id is not None:
            query = query.where(gpus.c.id == gpu_id)
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def run(self, gpu_id: int | None = None,
            max_seconds: float | None = None) -> DetectionResult:
        """Bring the incidents of every GPU (or of the gpus row ``gpu_id``) up to date.

        With ``max_seconds``, stop after the chunk that passes it (``result.finished``
        False); the next run goes on from the watermarks.
        """
        return self._run(gpu_id, full=False, max_seconds=max_seconds)

    def safe_run(self, max_seconds: float | None = 20.0) -> DetectionResult | None:
        """``run`` for the scheduler: a database error is logged, not raised."""
        try:
            return self.run(max_seconds=max_seconds)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("incident detection failed (the next run retries): %s", exc)
            return None

    def rebuild(self, gpu_id: int | None = None) -> DetectionResult:
        """Rescan all samples (of one gpus row, or all) with the thresholds in force now.

        Incidents that still start where they did keep their row and id; those the new
        thresholds no longer find are deleted.
        """
        return self._run(gpu_id, full=True, max_seconds=None)

    def _run(self, gpu_id: int | None, full: bool,
             max_seconds: float | None) -> DetectionResult:
        th = Thresholds.of(self.config())
        now = self.clock.now_ms()
        deadline = None if max_seconds is None else time.perf_counter() + max_seconds
        result = DetectionResult()
        for gid in self._gpu_ids(gpu_id):
            if deadline is not None and time.perf_counter() > deadline:
                result.finished = False
                break
            result.gpus += 1
            self._run_gpu(gid, th, now, full, result, deadline)
        return result

    def _run_gpu(self, gpu_id: int, th: Thresholds, now: int, full: bool,
                 result: DetectionResult, deadline: float | None = None) -> None:
        first = True
        while True:
            with self.engine.connect() as conn:
                progress = _read_progress(conn, gpu_id)
                plan = self._plan(conn, gpu_id, th, progress, full and first)
                if plan is None:
                    return
                lo, hi, scanned_to = plan
                found = detect(conn, gpu_id, th, now, lo, hi)
            if not self._write(gpu_id, th, now, progress, lo, hi, found, scanned_to, result):
                result.conflicts += 1
                return
            result.samples_scanned_to[gpu_id] = scanned_to
            if hi is None:
                return
            if deadline is not None and time.perf_counter() > deadline:
                result.finished = False
                return
            first = False

    def _plan(self, conn: sa.Connection, gpu_id: int, th: Thresholds, progress: _Progress,
              full: bool) -> tuple[int, int | None, int] | None:
        """(lo, hi, watermark after) of the next scan; None when there is nothing to do."""
        newest = conn.execute(sa.select(_S.ts_ms).where(_S.gpu_id == gpu_id)
                              .order_by(_S.ts_ms.desc()).limit(1)).scalar()
        if newest is None:
            return None
        watermark = None if full else progress.scanned_until_ms
        if watermark is None:
            lo = FAR_PAST_MS
            start_from = FAR_PAST_MS
        else:
            open_incident = conn.execute(
                sa.select(sa.func.count()).select_from(incidents)
                .where(_I.gpu_id == gpu_id, _I.end_ms.is_(None))).scalar()
            if newest <= watermark and not open_incident:
                return None  # no new samples, and nothing that could close by time alone
            lo = watermark - th.margin_ms
            if progress.thresholds != th.key:
                # Scanned with other thresholds: the stored incidents say nothing about
                # where islands begin under these, so start at the last sample that is in
                # none (below the low mark), and rederive everything after it.
                cool = conn.execute(
                    sa.select(sa.func.max(_S.ts_ms))
                    .where(_S.gpu_id == gpu_id, _S.ts_ms <= lo, _S.temperature_c < th.low)
                ).scalar()
                lo = FAR_PAST_MS if cool is None else cool
            # Never start inside a stored incident: from its start, it is rederived whole.
            straddling = conn.execute(
                sa.select(sa.func.min(_I.start_ms))
                .where(_I.gpu_id == gpu_id, sa.or_(_I.end_ms.is_(None), _I.end_ms >= lo))
            ).scalar()
            if straddling is not None:
                lo = min(lo, straddling)
            start_from = watermark
        hi = conn.execute(
            sa.select(_S.ts_ms).where(_S.gpu_id == gpu_id, _S.ts_ms > start_from)
            .order_by(_S.ts_ms).offset(self.chunk_samples).limit(1)
        ).scalar()
        return lo, hi, newest if hi is None else hi

    def _write(self, gpu_id: int, th: Thresholds, now: int, progress: _Progress, lo: int,
               hi: int | None, found: list[Found], scanned_to: int,
               result: DetectionResult) -> bool:
        """Apply one scan in one transaction, unless the watermark moved meanwhile."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                if _read_progress(conn, gpu_id) != progress:
                    return False
                in_range = [_I.gpu_id == gpu_id, _I.start_ms >= lo]
                if hi is not None:
                    in_range.append(_I.start_ms <= hi)
                stored = {row.start_ms: row for row in
                          conn.execute(sa.select(incidents).where(*in_range))}
                for f in found:
                    values = _values(f, th)
                    old = stored.pop(f.start_ms, None)
                    if old is None:
                        conn.execute(incidents.insert().values(
                            gpu_id=gpu_id, detected_ms=now, updated_ms=now, **values))
                        result.inserted += 1
                    elif any(getattr(old, k) != v for k, v in values.items()):
                        conn.execute(incidents.update().where(_I.id == old.id)
                                     .values(updated_ms=now, **values))
                        result.updated += 1
                if stored:
                    conn.execute(incidents.delete().where(
                        _I.id.in_([row.id for row in stored.values()])))
                    result.deleted += len(stored)
                if progress.exists:
                    conn.execute(incident_progress.update().where(_P.gpu_id == gpu_id)
                                 .values(scanned_until_ms=scanned_to, thresholds=th.key,
                                         version=progress.version + 1))
                else:
                    conn.execute(incident_progress.insert().values(
                        gpu_id=gpu_id, scanned_until_ms=scanned_to, thresholds=th.key,
                        version=1))
        return True


def _values(f: Found, th: Thresholds) -> dict[str, Any]:
    return {
        "start_ms": f.start_ms, "end_ms": f.end_ms, "last_sample_ms": f.last_sample_ms,
        "peak_temp_c": f.peak_temp_c, "peak_ms": f.peak_ms, "temp_sum": f.temp_sum,
        "temp_n": f.temp_n, "above_critical_ms": f.above_critical_ms,
        "severity": f.severity, "peak_power_dw": f.peak_power_dw,
        "clock_event_reasons": f.clock_event_reasons, "temp_throttle": th.high,
        "hysteresis_c": th.hysteresis, "temp_critical": th.critical,
    }


# -- stored incidents as documents ----------------------------------------------------------
MAX_CONTEXT_SAMPLES = 5_000  # samples a post-mortem lists by default (CSV: all of them)
HARDWARE_COUNTERS = ("power_cap", "sw_thermal", "hw_thermal", "power_brake")

_INCIDENT_COLUMNS = (incidents, gpus.c.host, gpus.c.gpu_index, gpus.c.uuid, gpus.c.name,
                     gpus.c.memory_total_mib, gpus.c.power_limit_w, gpus.c.slowdown_temp_c,
                     gpus.c.shutdown_temp_c, gpus.c.backend, gpus.c.first_seen_ms,
                     gpus.c.last_seen_ms)


def _select_incidents() -> sa.Select[Any]:
    return sa.select(*_INCIDENT_COLUMNS).select_from(
        incidents.join(gpus, gpus.c.id == _I.gpu_id))


def _gpu(row: sa.Row[Any]) -> GpuRow:
    return GpuRow(row.gpu_id, row.host, row.gpu_index, row.uuid, row.name,
                  row.memory_total_mib, row.power_limit_w, row.slowdown_temp_c,
                  row.shutdown_temp_c, row.backend, row.first_seen_ms, row.last_seen_ms)


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def incident_doc(row: sa.Row[Any], now_ms: int) -> dict[str, Any]:
    """One incident as every interface lists it (the API's field names)."""
    end = row.end_ms
    return {
        "id": row.id,
        "gpu_id": row.gpu_index,
        "uuid": row.uuid,
        "name": row.name,
        "host": row.host,
        "start": iso_utc(row.start_ms),
        "end": iso_utc(end),
        "ongoing": end is None,
        "duration_seconds": round(((now_ms if end is None else end) - row.start_ms) / 1000, 3),
        "last_sample_at": iso_utc(row.last_sample_ms),
        "peak_temperature_celsius": row.peak_temp_c,
        "peak_at": iso_utc(row.peak_ms),
        "mean_temperature_celsius": round(row.temp_sum / row.temp_n, 2) if row.temp_n else None,
        "sample_count": row.temp_n,
        "above_critical_seconds": round(row.above_critical_ms / 1000, 3),
        "severity": row.severity,
        "peak_power_watts": None if row.peak_power_dw is None else row.peak_power_dw / 10,
        "clock_event_reasons": clock_event_reason_names(row.clock_event_reasons),
        "clock_event_reasons_mask": row.clock_event_reasons,
        "thresholds": {"temp_throttle": _number(row.temp_throttle),
                       "hysteresis_c": _number(row.hysteresis_c),
                       "temp_critical": _number(row.temp_critical)},
        "detected_at": iso_utc(row.detected_ms),
        "updated_at": iso_utc(row.updated_ms),
    }


def list_incidents(conn: sa.Connection, host: str | None, now_ms: int, *,
                   gpu_index: int | None = None, since_ms: int | None = None,
                   until_ms: int | None = None, severity: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
    """Incidents overlapping [since, until], newest start first (``host`` None: all hosts).

    Reads ix_incidents_start backwards and stops after ``limit`` matches.
    """
    query = _select_incidents()
    if host is not None:
        query = query.where(gpus.c.host == host)
    if gpu_index is not None:
        # By gpus.id, so one GPU's incidents are a walk of uq_incidents_gpu_start.
        ids = select_gpu_ids(conn, host, gpu_index)
        if not ids:
            return []
        query = query.where(_I.gpu_id.in_(ids))
    if severity is not None:
        query = query.where(_I.severity == severity)
    if until_ms is not None:
        query = query.where(_I.start_ms <= until_ms)
    if since_ms is not None:
        query = query.where(sa.or_(_I.end_ms.is_(None), _I.end_ms >= since_ms))
    query = query.order_by(_I.start_ms.desc(), _I.id.desc()).limit(limit)
    return [incident_doc(row, now_ms) for row in conn.execute(query)]


def select_gpu_ids(conn: sa.Connection, host: str | None, gpu_index: int) -> list[int]:
    """Every gpus.id that has held ``gpu_index`` (on ``host``, or on any host)."""
    query = sa.select(gpus.c.id).where(gpus.c.gpu_index == gpu_index)
    if host is not None:
        query = query.where(gpus.c.host == host)
    return list(conn.execute(query).scalars())


def get_incident(conn: sa.Connection, incident_id: int,
                 host: str | None = None) -> sa.Row[Any] | None:
    query = _select_incidents().where(_I.id == incident_id)
    if host is not None:
        query = query.where(gpus.c.host == host)
    return conn.execute(query).first()


def context_window(row: sa.Row[Any], config: Config, now_ms: int) -> tuple[int, int]:
    """[start - context, end + context] of an incident (an ongoing one: up to now)."""
    context = round(config.incident_context_minutes * 60_000)
    end = row.end_ms if row.end_ms is not None else max(now_ms, row.last_sample_ms)
    return row.start_ms - context, end + context


def context_samples(conn: sa.Connection, row: sa.Row[Any], since_ms: int,
                    until_ms: int) -> list[sa.Row[Any]]:
    """The GPU's raw samples in [since, until], oldest first (a primary-key range scan)."""
    return list(conn.execute(
        sa.select(samples).where(_S.gpu_id == row.gpu_id, _S.ts_ms >= since_ms,
                                 _S.ts_ms <= until_ms).order_by(_S.ts_ms)))


def metrics_docs(row: sa.Row[Any], rows: list[sa.Row[Any]]) -> list[dict[str, Any]]:
    gpu = _gpu(row)
    return [GPUMetrics.from_reading(reading_from_row(gpu, s), GPUState(s.state), s.ts_ms,
                                    gpu.backend).to_dict() for s in rows]


def samples_csv(row: sa.Row[Any], rows: list[sa.Row[Any]]) -> Iterator[str]:
    """The context samples as CSV (GPUMetrics columns; reasons joined by ``|``)."""
    return metrics_csv(metrics_docs(row, rows))


def metrics_csv(docs: list[dict[str, Any]]) -> Iterator[str]:
    """GPUMetrics documents as CSV text, in pieces of 500 rows."""
    names = list(GPUMetrics.__dataclass_fields__)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for i, doc in enumerate(docs):
        cells = {**doc, "clock_event_reasons": "|".join(doc.get("clock_event_reasons") or [])}
        writer.writerow(["" if cells.get(n) is None else cells[n] for n in names])
        if i % 500 == 499:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _durations(rows: list[sa.Row[Any]], start_ms: int, stop_ms: int,
               gap: int) -> list[tuple[sa.Row[Any], int]]:
    """Each sample in [start, stop) with the time until the next sample (at most ``gap``)."""
    out = []
    for i, s in enumerate(rows):
        if s.ts_ms < start_ms or s.ts_ms >= stop_ms:
            continue
        following = rows[i + 1].ts_ms if i + 1 < len(rows) else s.ts_ms
        out.append((s, min(following - s.ts_ms, gap)))
    return out


def _reason_breakdown(timed: list[tuple[sa.Row[Any], int]]) -> list[dict[str, Any]]:
    """Per clock-event reason bit: the samples that reported it and for how long."""
    counts: dict[int, list[int]] = {}
    for s, duration in timed:
        mask = s.clock_event_reasons or 0
        bit = 1
        while mask:
            if mask & 1:
                entry = counts.setdefault(bit, [0, 0])
                entry[0] += 1
                entry[1] += duration
            mask >>= 1
            bit <<= 1
    return [{"name": CLOCK_EVENT_REASONS.get(bit, f"0x{bit:x}"), "mask": bit,
             "samples": n, "seconds": round(ms / 1000, 3)}
            for bit, (n, ms) in sorted(counts.items())]


def _transitions(conn: sa.Connection, gpu_id: int, since_ms: int,
                 until_ms: int) -> list[dict[str, Any]]:
    t = transitions.c
    rows = conn.execute(
        sa.select(t.ts_ms, t.from_state, t.to_state, t.cause, t.temperature_c,
                  t.memory_percent)
        .where(t.gpu_id == gpu_id, t.ts_ms >= since_ms, t.ts_ms <= until_ms)
        .order_by(t.ts_ms, t.id))
    return [{"timestamp": iso_utc(r.ts_ms),
             "from": None if r.from_state is None else GPUState(r.from_state).name,
             "to": GPUState(r.to_state).name, "cause": r.cause,
             "temperature_celsius": r.temperature_c, "memory_percent": r.memory_percent}
            for r in rows]


def _xid_events(conn: sa.Connection, gpu_id: int, since_ms: int,
                until_ms: int) -> list[dict[str, Any]]:
    e = events.c
    rows = conn.execute(
        sa.select(e.id, e.ts_ms, e.payload)
        .where(e.gpu_id == gpu_id, e.kind == "xid", e.ts_ms >= since_ms, e.ts_ms <= until_ms)
        .order_by(e.id))
    return [{"id": r.id, "timestamp": iso_utc(r.ts_ms), "payload": r.payload} for r in rows]


def _hardware_table(conn: sa.Connection, name: str) -> sa.Table | None:
    """A table of the hardware facts (gpu_processes, throttle_counters) if this database
    has it: a database migrated before those tables existed answers None."""
    if not sa.inspect(conn).has_table(name):
        return None
    table = schema.metadata.tables.get(name)
    return table if table is not None else sa.Table(name, sa.MetaData(), autoload_with=conn)


def _processes(conn: sa.Connection, gpu_id: int, start_ms: int,
               end_ms: int) -> list[dict[str, Any]] | None:
    """Compute processes alive during [start, end], if the hardware tables exist."""
    table = _hardware_table(conn, "gpu_processes")
    if table is None:
        return None
    p = table.c
    rows = conn.execute(
        sa.select(table).where(p.gpu_id == gpu_id, p.first_seen_ms <= end_ms,
                               sa.or_(p.ended_ms.is_(None), p.ended_ms >= start_ms))
        .order_by(p.first_seen_ms, p.id))
    return [{"pid": r.pid, "name": r.name, "used_memory_mb": r.used_memory_mib,
             "first_seen_at": iso_utc(r.first_seen_ms), "last_seen_at": iso_utc(r.last_seen_ms),
             "ended_at": iso_utc(r.ended_ms), "running": r.ended_ms is None} for r in rows]


def _throttle_time(conn: sa.Connection, gpu_id: int, start_ms: int,
                   end_ms: int) -> dict[str, float | None] | None:
    """Seconds of hardware throttle time the cumulative counters accrued in [start, end].

    The counters are recorded when they change, so their value at a time is the newest
    row at or before it; without a row before the start, the first row inside is the
    baseline. None when the table is missing or holds nothing for the window; a counter
    that went backwards (the driver restarted) is None.
    """
    table = _hardware_table(conn, "throttle_counters")
    if table is None:
        return None
    c = table.c

    def at(ts: int) -> sa.Row[Any] | None:
        return conn.execute(sa.select(table).where(c.gpu_id == gpu_id, c.ts_ms <= ts)
                            .order_by(c.ts_ms.desc()).limit(1)).first()

    before = at(start_ms) or conn.execute(
        sa.select(table).where(c.gpu_id == gpu_id, c.ts_ms > start_ms, c.ts_ms <= end_ms)
        .order_by(c.ts_ms).limit(1)).first()
    after = at(end_ms)
    if before is None or after is None:
        return None
    out: dict[str, float | None] = {}
    for name in HARDWARE_COUNTERS:
        a, b = getattr(before, f"{name}_ns", None), getattr(after, f"{name}_ns", None)
        out[name] = None if a is None or b is None or b < a else round((b - a) / 1e9, 3)
    return out


def postmortem(conn: sa.Connection, row: sa.Row[Any], config: Config, now_ms: int,
               leases: list[dict[str, Any]], max_samples: int = MAX_CONTEXT_SAMPLES
               ) -> dict[str, Any]:
    """The post-mortem of one incident (``row`` from :func:`get_incident`).

    ``leases``: the lease documents active during it (LeaseManager.active_between).
    The context samples are listed oldest first; more than ``max_samples`` are thinned
    to every n-th (``samples_stride``); the CSV download has them all.
    """
    doc = incident_doc(row, now_ms)
    since, until = context_window(row, config, now_ms)
    rows = context_samples(conn, row, since, until)
    stop = row.end_ms if row.end_ms is not None else row.last_sample_ms + 1
    gap = gap_ms(config)
    timed = _durations(rows, row.start_ms, stop, gap)
    during = [s for s, _ in timed]
    used = [s.memory_used_mib for s in during if s.memory_used_mib is not None]
    power = [s.power_dw for s in during if s.power_dw is not None]
    slowdown = row.slowdown_temp_c
    end_or_now = row.end_ms if row.end_ms is not None else now_ms
    stride = max(1, -(-len(rows) // max_samples)) if max_samples else 0
    doc.update({
        "summary": "",
        "context_minutes": _number(config.incident_context_minutes),
        "window": {"since": iso_utc(since), "until": iso_utc(until)},
        "card": {
            "slowdown_temp_celsius": slowdown,
            "shutdown_temp_celsius": row.shutdown_temp_c,
            "margin_to_slowdown_celsius": None if slowdown is None else slowdown - row.peak_temp_c,
        },
        "power": {"peak_watts": doc["peak_power_watts"],
                  "mean_watts": round(sum(power) / len(power) / 10, 1) if power else None,
                  "limit_watts": row.power_limit_w},
        "memory": {"max_used_mb": max(used) if used else None,
                   "avg_used_mb": round(sum(used) / len(used)) if used else None,
                   "total_mb": row.memory_total_mib},
        "clock_event_reasons_seen": _reason_breakdown(timed),
        "transitions": _transitions(conn, row.gpu_id, since, until),
        "leases": leases,
        "processes": _processes(conn, row.gpu_id, row.start_ms, end_or_now),
        "throttle_time_seconds": _throttle_time(conn, row.gpu_id, row.start_ms, end_or_now),
        "xid_errors": _xid_events(conn, row.gpu_id, since, until),
        "samples_total": len(rows),
        "samples_stride": stride,
        "samples": metrics_docs(row, rows[::stride]) if stride else [],
    })
    doc["summary"] = summary_sentence(doc)
    return doc


def format_duration(seconds: float) -> str:
    """2 min 13 s, 1 h 4 min, 47 s, 0.3 s."""
    if seconds < 10:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60} s"
    return f"{total // 3600} h {total % 3600 // 60} min"


def summary_sentence(doc: dict[str, Any]) -> str:
    """One sentence for a post-mortem document: how hot, how long, why, whose work."""
    th = doc["thresholds"]
    verb = "has been" if doc["ongoing"] else "was"
    so_far = " so far" if doc["ongoing"] else ""
    peak_at = (doc["peak_at"] or "")[11:19] + "Z"
    text = (f"GPU {doc['gpu_id']} {verb} above {th['temp_throttle']} °C for "
            f"{format_duration(doc['duration_seconds'])}{so_far}, peaking at "
            f"{doc['peak_temperature_celsius']} °C at {peak_at}")
    if doc["severity"] == "severe":
        above = doc["above_critical_seconds"]
        text += (f" (severe: {format_duration(above)} above {th['temp_critical']} °C)" if above
                 else f" (severe: above {th['temp_critical']} °C)")
    card = doc.get("card") or {}
    margin = card.get("margin_to_slowdown_celsius")
    if margin is not None and margin <= 0:
        past = "at" if margin == 0 else f"{-margin} °C past"
        text += (f", {past} the card's own slowdown temperature "
                 f"({card['slowdown_temp_celsius']} °C)")
    reasons = [r["name"] for r in doc.get("clock_event_reasons_seen", [])]
    if reasons:
        text += "; the hardware reported " + ", ".join(reasons)
    else:
        text += "; the hardware reported no clock-event reasons"
    leases = doc.get("leases") or []
    if leases:
        held = []
        for lease in leases:
            who = f"{lease['owner']}, " if lease.get("owner") else ""
            held.append(f"{lease['allocation_id']} ({who}{lease['memory_mb']} MiB)")
        text += "; leases active: " + ", ".join(held)
    else:
        text += "; no leases were active"
    return text
