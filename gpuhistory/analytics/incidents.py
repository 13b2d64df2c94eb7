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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from gpuhistory.clock import Clock
from gpuhistory.domain.config import Config
from gpuhistory.storage.sample_source import RAW_SAMPLES_SQL, raw_samples
from gpuhistory.storage.schema import (
    gpus,
    incident_progress,
    incidents,
    samples,
)

log = logging.getLogger(__name__)

MIN_GAP_MS = 60_000  # a data gap: no temperature for this long (or 3 sampling intervals)
CHUNK_SAMPLES = 200_000  # samples scanned per transaction when catching up on a long log
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
_DETECT_TEXT = """
WITH s AS (
    SELECT ts_ms, temperature_c AS temp,
           LAG(ts_ms) OVER w AS prev_ts,
           LEAD(ts_ms) OVER w AS next_ts
    FROM {samples} AS samples
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
    JOIN {samples} x ON x.gpu_id = :gpu AND x.ts_ms >= f.start_ms AND x.ts_ms <= f.last_ms
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
       (SELECT MIN(p.ts_ms) FROM {samples} p
        WHERE p.gpu_id = :gpu AND p.ts_ms >= figures.start_ms AND p.ts_ms <= figures.last_ms
          AND p.temperature_c = figures.peak) AS peak_ms
FROM figures
ORDER BY start_ms
"""
DETECT_SQL = sa.text(_DETECT_TEXT.replace("{samples}", "samples"))
# PostgreSQL: with the kept rows of dropped partitions, so a rebuild still finds (and keeps)
# the incidents of days that retention dropped.
DETECT_SQL_KEPT = sa.text(_DETECT_TEXT.replace("{samples}", RAW_SAMPLES_SQL))


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
    raw = raw_samples(conn).c
    if conn.execute(sa.select(raw.ts_ms).where(
            raw.gpu_id == gpu_id, raw.ts_ms >= lo, raw.ts_ms <= upper,
            raw.temperature_c >= th.high).limit(1)).first() is None:
        return []
    params = {
        "gpu": gpu_id, "lo": lo, "hi": upper,
        "chunked": 0 if hi is None else 1, "now": now_ms, "low": th.low, "high": th.high,
        "critical": th.critical, "gap": th.gap_ms, "merge": th.merge_ms,
    }
    out = []
    statement = DETECT_SQL_KEPT if conn.dialect.name == "postgresql" else DETECT_SQL
    for row in conn.execute(statement, params):
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
    raw = raw_samples(conn).c
    for (value,) in conn.execute(
        sa.select(raw.clock_event_reasons).distinct()
        .where(raw.gpu_id == gpu_id, raw.ts_ms >= start_ms, raw.ts_ms <= last_ms,
               raw.clock_event_reasons.is_not(None))
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
