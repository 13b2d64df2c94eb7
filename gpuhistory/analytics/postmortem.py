"""Stored overheat incidents as documents: the list, one incident, and its post-mortem.

The post-mortem gathers, from the log, everything an operator asks after an overheat:
how long and how hot, which clock-event reasons the hardware reported and for how long,
the margin to the card's own slowdown temperature, the transitions, the leases active, the
processes seen, the throttle time the card accrued, XID errors, the samples around it, and
a one-sentence summary. Detection lives in ``incidents.py``.
"""

from __future__ import annotations

import bisect
import csv
import io
import logging
from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import Any

import orjson
import sqlalchemy as sa

from gpuhistory.analytics import bulk
from gpuhistory.analytics.incidents import gap_ms
from gpuhistory.clock import iso_utc
from gpuhistory.domain.config import Config
from gpuhistory.domain.metrics import GPUMetrics
from gpuhistory.domain.processes import running_clause
from gpuhistory.domain.reading import CLOCK_EVENT_REASONS, clock_event_reason_names
from gpuhistory.domain.states import GPUState
from gpuhistory.storage import schema
from gpuhistory.storage.processes import processes_between
from gpuhistory.storage.queries import GpuRow
from gpuhistory.storage.sample_source import raw_samples
from gpuhistory.storage.schema import (
    events,
    gpus,
    incidents,
    transitions,
)

log = logging.getLogger(__name__)

_I = incidents.c

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
                   gpu_ids: list[int] | None = None, since_ms: int | None = None,
                   until_ms: int | None = None, severity: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
    """Incidents overlapping [since, until], newest start first (``host`` None: all hosts).

    Reads ix_incidents_start backwards and stops after ``limit`` matches.
    """
    query = _select_incidents()
    if host is not None:
        query = query.where(gpus.c.host == host)
    if gpu_ids is not None:
        # By gpus.id (the cards gpuhistory.identity names), so one GPU's incidents are a
        # walk of uq_incidents_gpu_start.
        if not gpu_ids:
            return []
        query = query.where(_I.gpu_id.in_(gpu_ids))
    if severity is not None:
        query = query.where(_I.severity == severity)
    if until_ms is not None:
        query = query.where(_I.start_ms <= until_ms)
    if since_ms is not None:
        query = query.where(sa.or_(_I.end_ms.is_(None), _I.end_ms >= since_ms))
    query = query.order_by(_I.start_ms.desc(), _I.id.desc()).limit(limit)
    return [incident_doc(row, now_ms) for row in conn.execute(query)]


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
                    until_ms: int) -> Sequence[sa.Row[Any]]:
    """The GPU's raw samples in [since, until], oldest first (a primary-key range scan), as
    rows of ``bulk.SAMPLE_COLUMNS``; on PostgreSQL with the kept rows of dropped partitions
    (storage/sample_source.py)."""
    return conn.execute(bulk.sample_statement(row.gpu_id, since_ms, until_ms,
                                              source=raw_samples(conn))).all()


def metrics_docs(row: sa.Row[Any], rows: Sequence[sa.Row[Any]]) -> list[dict[str, Any]]:
    """The GPUMetrics documents of context samples (from :func:`context_samples`)."""
    return bulk.metrics_docs(_gpu(row), rows)


def samples_csv(row: sa.Row[Any], rows: Sequence[sa.Row[Any]]) -> Iterator[str]:
    """The context samples as CSV (GPUMetrics columns; reasons joined by ``|``)."""
    return bulk.metrics_csv(_gpu(row), rows)


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


def _during(rows: Sequence[sa.Row[Any]], start_ms: int, stop_ms: int,
            gap: int) -> dict[str, Any]:
    """What the samples in [start, stop) say, in one pass: each clock-event reason bit with
    the samples that reported it and for how long (a sample lasts until the next one, at
    most ``gap``), and the memory and power they used."""
    ts = itemgetter(bulk.TS)
    first = bisect.bisect_left(rows, start_ms, key=ts)
    stop = bisect.bisect_left(rows, stop_ms, lo=first, key=ts)
    by_mask: dict[int, list[int]] = {}
    used: list[int] = []
    power: list[int] = []
    last = len(rows) - 1
    for i in range(first, stop):
        s = rows[i]
        if s[bulk.REASONS]:
            following = rows[i + 1][bulk.TS] if i < last else s[bulk.TS]
            entry = by_mask.setdefault(s[bulk.REASONS], [0, 0])
            entry[0] += 1
            entry[1] += min(following - s[bulk.TS], gap)
        if s[bulk.MEMORY_USED] is not None:
            used.append(s[bulk.MEMORY_USED])
        if s[bulk.POWER_DW] is not None:
            power.append(s[bulk.POWER_DW])
    counts: dict[int, list[int]] = {}
    for mask, (n, ms) in by_mask.items():
        bit = 1
        while mask:
            if mask & 1:
                entry = counts.setdefault(bit, [0, 0])
                entry[0] += n
                entry[1] += ms
            mask >>= 1
            bit <<= 1
    reasons = [{"name": CLOCK_EVENT_REASONS.get(bit, f"0x{bit:x}"), "mask": bit,
                "samples": n, "seconds": round(ms / 1000, 3)}
               for bit, (n, ms) in sorted(counts.items())]
    return {"reasons": reasons, "used": used, "power": power}


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
    if _hardware_table(conn, "gpu_processes") is None:
        return None
    return processes_between(conn, gpu_id, start_ms, end_ms)


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
               leases: list[dict[str, Any]], max_samples: int = MAX_CONTEXT_SAMPLES,
               samples_json: bool = False) -> dict[str, Any]:
    """The post-mortem of one incident (``row`` from :func:`get_incident`).

    ``leases``: the lease documents active during it (LeaseManager.active_between).
    The context samples are listed oldest first; more than ``max_samples`` are thinned
    to every n-th (``samples_stride``); the CSV download has them all. ``samples_json``:
    the samples stay JSON text (an ``orjson.Fragment``) for an encoder to embed as is.
    """
    doc = incident_doc(row, now_ms)
    since, until = context_window(row, config, now_ms)
    rows = context_samples(conn, row, since, until)
    stop = row.end_ms if row.end_ms is not None else row.last_sample_ms + 1
    during = _during(rows, row.start_ms, stop, gap_ms(config))
    used, power = during["used"], during["power"]
    slowdown = row.slowdown_temp_c
    end_or_now = row.end_ms if row.end_ms is not None else now_ms
    stride = max(1, -(-len(rows) // max_samples)) if max_samples else 0
    listed = bulk.metrics_json(_gpu(row), rows[::stride]) if stride else "[]"
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
        "clock_event_reasons_seen": during["reasons"],
        "transitions": _transitions(conn, row.gpu_id, since, until),
        "leases": leases,
        "processes": _processes(conn, row.gpu_id, row.start_ms, end_or_now),
        "throttle_time_seconds": _throttle_time(conn, row.gpu_id, row.start_ms, end_or_now),
        "xid_errors": _xid_events(conn, row.gpu_id, since, until),
        "samples_total": len(rows),
        "samples_stride": stride,
        "samples": orjson.Fragment(listed) if samples_json else orjson.loads(listed),
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
    running = running_clause(doc.get("processes") or [])
    if running:
        text += f"; {running}"
    return text
