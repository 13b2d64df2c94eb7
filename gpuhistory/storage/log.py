"""The write path of the log: one writer for gpus, samples, transitions, events and the
hardware facts (gpu_processes, throttle_counters).

A tick is written in one transaction: its samples, and its transitions, events, process
rows and counter rows when something changed. Imports use the same path in large batches
inside one transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import sqlalchemy as sa

from gpuhistory.domain.classify import Transition
from gpuhistory.domain.events import EventDraft
from gpuhistory.domain.reading import GpuIdentity, Reading
from gpuhistory.storage.engine import driver_connection, inserted_id
from gpuhistory.storage.schema import (
    events,
    gpu_processes,
    gpus,
    samples,
    throttle_counters,
    transitions,
)

LAST_SEEN_EVERY_MS = 60_000

SAMPLE_TUPLE_COLUMNS = ("gpu_id", "ts_ms", "state", "temperature_c", "memory_temperature_c",
                        "memory_used_mib", "utilization_pct", "power_dw", "sm_clock_mhz",
                        "mem_clock_mhz", "clock_event_reasons", "pstate", "fan_pct",
                        "memory_reserved_mib")
if set(SAMPLE_TUPLE_COLUMNS) != {c.name for c in samples.columns}:  # one value per column
    raise RuntimeError("sample_tuple does not name every samples column once")

# SQLite bulk path: the driver's own executemany with tuples in SAMPLE_TUPLE_COLUMNS' order
# (named in the statement, so the table's own column order does not matter). SQLAlchemy's
# per-row parameter processing (construct_params) costs ~5 µs a row, the insert itself ~2.
_SAMPLE_COLUMNS = SAMPLE_TUPLE_COLUMNS
_SQLITE_INSERT_SAMPLES = (f"INSERT INTO samples ({', '.join(_SAMPLE_COLUMNS)}) "
                          f"VALUES ({', '.join('?' * len(_SAMPLE_COLUMNS))})")
_sample_values_of_whole_rows = itemgetter(*_SAMPLE_COLUMNS)


def _sample_values(row: dict[str, Any] | tuple[Any, ...]) -> tuple[Any, ...]:
    """A samples row's values in column order; a row built without a nullable column added
    later (``memory_reserved_mib``) has NULL there. A tuple row already is that."""
    if type(row) is tuple:
        return row
    try:
        return _sample_values_of_whole_rows(row)
    except KeyError:
        return tuple(map(row.get, _SAMPLE_COLUMNS))  # type: ignore[union-attr]


def sample_gpu_ts(row: dict[str, Any] | tuple[Any, ...]) -> tuple[int, int]:
    """(gpu_id, ts_ms) of a samples row in either form."""
    if type(row) is tuple:
        return row[0], row[1]
    return row["gpu_id"], row["ts_ms"]  # type: ignore[call-overload]

# PostgreSQL bulk path (imports, catch-up of buffered ticks): COPY on the transaction's own
# connection, ~3.5x an INSERT executemany; a tick's few rows stay an INSERT.
COPY_FROM_ROWS = 1000
_PG_COPY_SAMPLES = f"COPY samples ({', '.join(_SAMPLE_COLUMNS)}) FROM STDIN"

# A running process's row, addressed by (gpu, pid): at most one row per pair is running.
# The SET clause comes from the parameters' column keys (name, used_memory_mib, ...).
_p = gpu_processes.c
_UPDATE_RUNNING_PROCESS = gpu_processes.update().where(
    _p.gpu_id == sa.bindparam("b_gpu_id"), _p.pid == sa.bindparam("b_pid"),
    _p.ended_ms.is_(None),
)


@dataclass(slots=True)
class TickRecord:
    """Everything one tick (or one imported batch) adds to the log."""

    # Dicts keyed by column (sample_row), or tuples in column order (sample_tuple: what
    # ``import`` builds, written as they are).
    samples: list[Any] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    # (gpu_index, draft) in the order of ``events``, for callbacks after commit.
    drafts: list[EventDraft] = field(default_factory=list)
    # Hardware facts that changed (gpuhistory/sampling/hardware.py): new gpu_processes
    # rows, updates of running ones (keyed b_gpu_id, b_pid), new throttle_counters rows.
    processes: list[dict[str, Any]] = field(default_factory=list)
    process_updates: list[dict[str, Any]] = field(default_factory=list)
    counters: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: TickRecord) -> None:
        self.samples.extend(other.samples)
        self.transitions.extend(other.transitions)
        self.events.extend(other.events)
        self.drafts.extend(other.drafts)
        self.processes.extend(other.processes)
        self.process_updates.extend(other.process_updates)
        self.counters.extend(other.counters)

    def __len__(self) -> int:
        return len(self.samples)


def sample_row(gpu_id: int, ts_ms: int, state: int, r: Reading) -> dict[str, Any]:
    """The samples row for a reading (power stored as integer deciwatts)."""
    return {
        "gpu_id": gpu_id,
        "ts_ms": ts_ms,
        "state": state,
        "temperature_c": r.temperature_c,
        "memory_temperature_c": r.memory_temperature_c,
        "memory_used_mib": r.memory_used_mib,
        "utilization_pct": r.utilization_pct,
        "power_dw": None if r.power_w is None else round(r.power_w * 10),
        "sm_clock_mhz": r.sm_clock_mhz,
        "mem_clock_mhz": r.mem_clock_mhz,
        "clock_event_reasons": r.clock_event_reasons,
        "pstate": r.pstate,
        "fan_pct": r.fan_pct,
        "memory_reserved_mib": r.memory_reserved_mib,
    }


def sample_tuple(gpu_id: int, ts_ms: int, state: int, r: Reading) -> tuple[Any, ...]:
    """:func:`sample_row`'s values as a tuple in column order (SAMPLE_TUPLE_COLUMNS)."""
    power = r.power_w
    return (gpu_id, ts_ms, state, r.temperature_c, r.memory_temperature_c, r.memory_used_mib,
            r.utilization_pct, None if power is None else round(power * 10), r.sm_clock_mhz,
            r.mem_clock_mhz, r.clock_event_reasons, r.pstate, r.fan_pct,
            r.memory_reserved_mib)


def transition_row(gpu_id: int, t: Transition) -> dict[str, Any]:
    return {
        "gpu_id": gpu_id,
        "ts_ms": t.ts_ms,
        "from_state": None if t.from_state is None else int(t.from_state),
        "to_state": int(t.to_state),
        "cause": t.cause,
        "temperature_c": t.temperature_c,
        "memory_percent": t.memory_percent,
    }


def event_row(gpu_id: int | None, draft: EventDraft) -> dict[str, Any]:
    return {"ts_ms": draft.ts_ms, "gpu_id": gpu_id, "kind": str(draft.kind),
            "payload": draft.payload}


def _copy_samples(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """COPY ``rows`` into samples on ``conn``'s psycopg connection, inside its transaction;
    a failure is raised as SQLAlchemy raises it (IntegrityError for a duplicate, ...)."""
    dbapi = conn.dialect.loaded_dbapi
    try:
        with driver_connection(conn).cursor() as cursor, \
                cursor.copy(_PG_COPY_SAMPLES) as copy:
            for row in map(_sample_values, rows):
                copy.write_row(row)
    except dbapi.Error as exc:
        lost = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
        if lost:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(_PG_COPY_SAMPLES, None, exc, dbapi.Error,
                                         connection_invalidated=lost,
                                         dialect=conn.dialect) from exc


class LogStore:
    """Writes to the log for one host. Thread-safe; one instance per process and engine."""

    def __init__(self, engine: sa.Engine, host: str) -> None:
        self.engine = engine
        self.host = host
        self._gpu_ids: dict[str, int] = {}  # uuid → gpus.id
        self._gpu_facts: dict[int, tuple[Any, ...]] = {}
        self._last_seen_written: dict[int, int] = {}
        self._lock = threading.Lock()

    # -- GPUs --------------------------------------------------------------------------
    def gpu_id(self, identity: GpuIdentity, backend: str, ts_ms: int) -> int:
        """The gpus.id of a device on this host, creating or refreshing its row as needed."""
        facts = (identity.index, identity.name, identity.memory_total_mib,
                 identity.power_limit_w, identity.slowdown_temp_c, identity.shutdown_temp_c,
                 backend)
        with self._lock:
            known = self._gpu_ids.get(identity.uuid)
            if known is not None and self._gpu_facts.get(known) == facts:
                return known
        values = {
            "gpu_index": identity.index, "name": identity.name,
            "memory_total_mib": identity.memory_total_mib,
            "power_limit_w": identity.power_limit_w,
            "slowdown_temp_c": identity.slowdown_temp_c,
            "shutdown_temp_c": identity.shutdown_temp_c, "backend": backend,
            "last_seen_ms": ts_ms,
        }
        mine = (gpus.c.host == self.host, gpus.c.uuid == identity.uuid)
        with self.engine.begin() as conn:
            # Write first, then read: on SQLite a transaction that reads and then writes
            # fails at once ("database is locked", no waiting) when another connection
            # wrote in between; one that starts with a write waits for the lock instead.
            if conn.execute(gpus.update().where(*mine).values(**values)).rowcount:
                gpu_id = conn.execute(sa.select(gpus.c.id).where(*mine)).scalar_one()
            else:
                gpu_id = inserted_id(conn.execute(
                    gpus.insert().values(host=self.host, uuid=identity.uuid,
                                         first_seen_ms=ts_ms, **values)))
        with self._lock:
            self._gpu_ids[identity.uuid] = gpu_id
            self._gpu_facts[gpu_id] = facts
            self._last_seen_written[gpu_id] = ts_ms
        return gpu_id

    def known_gpus(self, backend: str | None = None) -> list[sa.Row[Any]]:
        """This host's GPUs (optionally of one backend), lowest index first."""
        query = sa.select(gpus).where(gpus.c.host == self.host)
        if backend is not None:
            query = query.where(gpus.c.backend == backend)
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(gpus.c.gpu_index, gpus.c.id)))

    # -- writes ------------------------------------------------------------------------
    def write(self, record: TickRecord, conn: sa.Connection | None = None) -> list[int]:
        """Append a tick's rows in one transaction; returns the new event ids in order.

        With ``conn`` the rows join the caller's transaction.
        """
        if conn is not None:
            return self._write(conn, record)
        with self.engine.begin() as own:
            ids = self._write(own, record)
            seen = self._touch_last_seen(own, record)
        self._last_seen_written.update(seen)  # only once committed
        return ids

    def _write(self, conn: sa.Connection, record: TickRecord) -> list[int]:
        if record.samples:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql(_SQLITE_INSERT_SAMPLES,
                                     list(map(_sample_values, record.samples)))
            elif conn.dialect.name == "postgresql" and len(record.samples) >= COPY_FROM_ROWS:
                _copy_samples(conn, record.samples)
            else:
                conn.execute(samples.insert(), [
                    row if type(row) is dict else dict(zip(_SAMPLE_COLUMNS, row, strict=True))
                    for row in record.samples])
        if record.transitions:
            conn.execute(transitions.insert(), record.transitions)
        if record.process_updates:  # first: a reused pid ends its old row, then starts anew
            conn.execute(_UPDATE_RUNNING_PROCESS, record.process_updates)
        if record.processes:
            conn.execute(gpu_processes.insert(), record.processes)
        if record.counters:
            conn.execute(throttle_counters.insert(), record.counters)
        insert = events.insert()  # one statement, compiled once and cached
        return [inserted_id(conn.execute(insert, row)) for row in record.events]

    def _touch_last_seen(self, conn: sa.Connection, record: TickRecord) -> dict[int, int]:
        """Refresh ``gpus.last_seen_ms`` at most once a minute; returns what it wrote."""
        stale: dict[int, int] = {}
        for row in record.samples:
            gpu_id, ts = sample_gpu_ts(row)
            if ts - self._last_seen_written.get(gpu_id, 0) >= LAST_SEEN_EVERY_MS:
                stale[gpu_id] = max(ts, stale.get(gpu_id, 0))
        for gpu_id, ts in stale.items():
            conn.execute(gpus.update().where(gpus.c.id == gpu_id).values(last_seen_ms=ts))
        return stale

    def append_events(self, drafts: Iterable[EventDraft],
                      gpu_ids: dict[int, int] | None = None) -> list[int]:
        """Append events that no tick produced (service_started, monitoring_stopped, ...)."""
        record = TickRecord()
        for draft in drafts:
            gpu_id = None if draft.gpu_index is None else (gpu_ids or {}).get(draft.gpu_index)
            record.events.append(event_row(gpu_id, draft))
        return self.write(record)

    def finalize_last_seen(self, ts_ms: int, gpu_ids: Sequence[int]) -> None:
        """On shutdown: make ``last_seen_ms`` exact."""
        if not gpu_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                gpus.update().where(gpus.c.id.in_(list(gpu_ids)),
                                    gpus.c.last_seen_ms < ts_ms).values(last_seen_ms=ts_ms)
            )
