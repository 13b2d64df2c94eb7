"""Daily partitions of ``samples`` on PostgreSQL (docs/fleet.md "Storage on PostgreSQL").

``samples`` is range-partitioned by ``ts_ms``: one partition per UTC day, named
``samples_YYYYMMDD`` and bounded [midnight, next midnight) in epoch milliseconds, and a
DEFAULT partition ``samples_default`` that takes any row whose day has no partition yet
(an import of last year's recording, a clock far ahead, a maintenance job that did not run
for days), so an insert never fails for want of a partition and the write path runs no DDL.

:func:`maintain` (called by the retention job; the migration makes the first ones) creates
the partitions of today and the next ``ahead_days`` days, gives each day found in the
DEFAULT partition a partition of its own, moving its rows there, so imported days become
ordinary partitions that retention drops like any other, and rebuilds the primary key of
each day that is over once (:func:`compact_days_over`). A day partition is made as a
plain table, filled from the DEFAULT partition and then attached: ATTACH takes only a
SHARE UPDATE EXCLUSIVE lock on ``samples``, which inserts and reads do not wait for.
Every change holds an advisory lock (several samplers maintain one database) and a lock
timeout (a long import transaction makes it give up and retry on the next run rather
than queue every sampler's insert behind it).

SQLite has one unpartitioned table; every function here is for PostgreSQL only and
:func:`is_partitioned` tells the callers which they have.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from gpuhistory.storage.schema import samples

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
AHEAD_DAYS = 3
DEFAULT_PARTITION = "samples_default"
PARTITION_LOCK_KEY = 0x67687074  # "ghpt": one partition change at a time per database
LOCK_TIMEOUT = "5s"
COMPACTED = "COMPACTED"  # the comment on a day partition's rebuilt primary key
# Days a partition may be named for: datetime's range (and no negative epoch days).
FIRST_DAY = 0
LAST_DAY = (dt.date(9999, 12, 30) - dt.date(1970, 1, 1)).days

COLUMNS = ", ".join(c.name for c in samples.columns)
_NAME = re.compile(r"^samples_(\d{8})$")
_BOUND = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")


@dataclass(frozen=True, slots=True)
class Partition:
    """A day partition: rows with lo_ms <= ts_ms < hi_ms."""

    name: str
    lo_ms: int
    hi_ms: int


@dataclass(slots=True)
class MaintenanceResult:
    created: list[str] = field(default_factory=list)
    compacted: list[str] = field(default_factory=list)  # days over whose key was rebuilt
    moved_rows: int = 0  # rows moved out of the DEFAULT partition into day partitions
    skipped: list[str] = field(default_factory=list)  # why a change waits for the next run


def is_partition(name: str | None) -> bool:
    """Whether a table name is one of samples' partitions (made here, not by a migration's
    table definitions: schema comparisons leave them out)."""
    return name == DEFAULT_PARTITION or (name is not None and _NAME.match(name) is not None)


def not_a_partition(_obj: object, name: str | None, kind: str, *_: object) -> bool:
    """Alembic's ``include_object`` for schema comparisons: everything but samples'
    partitions (tables the maintenance makes, not the migrations' definitions)."""
    return not (kind == "table" and is_partition(name))


def is_partitioned(conn: sa.Connection) -> bool:
    """Whether ``samples`` is a partitioned table (PostgreSQL at migration 0013 or later)."""
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(sa.text(
        "SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass('samples')")).scalar()
    return kind == "p"


def day_of(ts_ms: int) -> int:
    """The UTC day number (days since 1970-01-01) of a time in epoch milliseconds."""
    return ts_ms // DAY_MS


def partition_name(day: int) -> str:
    return "samples_" + (dt.date(1970, 1, 1) + dt.timedelta(days=day)).strftime("%Y%m%d")


def partitions(conn: sa.Connection) -> list[Partition]:
    """The day partitions of ``samples``, oldest first (not the DEFAULT partition). Reading
    a bound locks its partition: the lock timeout applies (OperationalError)."""
    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    rows = conn.execute(sa.text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass('samples')"))
    found = []
    for name, bound in rows:
        match = _BOUND.search(bound or "")
        if match is not None and _NAME.match(name) is not None:  # only the ones made here
            found.append(Partition(name, int(match.group(1)), int(match.group(2))))
    return sorted(found, key=lambda p: p.lo_ms)


def _lock(conn: sa.Connection) -> None:
    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PARTITION_LOCK_KEY})


def create_day(conn: sa.Connection, day: int) -> tuple[bool, int]:
    """Make the partition of ``day`` within the caller's transaction, moving the day's rows
    out of the DEFAULT partition; returns (created, rows moved). Nothing when it exists."""
    name = partition_name(day)
    lo, hi = day * DAY_MS, (day + 1) * DAY_MS
    if conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None:
        return False, 0
    conn.execute(sa.text(f"CREATE TABLE {name} (LIKE samples INCLUDING DEFAULTS)"))
    # The CHECK lets ATTACH skip scanning the new table; it is dropped once attached.
    conn.execute(sa.text(f"ALTER TABLE {name} ADD CONSTRAINT {name}_bound "
                         f"CHECK (ts_ms >= {lo} AND ts_ms < {hi})"))
    moved = 0
    has_default = conn.execute(sa.text("SELECT to_regclass(:n)"),
                               {"n": DEFAULT_PARTITION}).scalar() is not None
    if has_default:
        moved = conn.execute(sa.text(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE ts_ms >= :lo AND ts_ms < :hi "
            f"RETURNING {COLUMNS}) INSERT INTO {name} ({COLUMNS}) SELECT {COLUMNS} FROM moved"),
            {"lo": lo, "hi": hi}).rowcount
    conn.execute(sa.text(f"ALTER TABLE samples ATTACH PARTITION {name} "
                         f"FOR VALUES FROM ({lo}) TO ({hi})"))
    conn.execute(sa.text(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bound"))
    return True, max(moved, 0)


def default_days(conn: sa.Connection) -> list[int]:
    """The days that have rows in the DEFAULT partition (normally none: a short scan)."""
    return list(conn.execute(sa.text(
        f"SELECT DISTINCT floor(ts_ms / {DAY_MS}.0)::bigint AS day FROM {DEFAULT_PARTITION} "
        "ORDER BY day")).scalars())


def maintain(engine: sa.Engine, now_ms: int, ahead_days: int = AHEAD_DAYS) -> MaintenanceResult:
    """Partitions for today and ``ahead_days`` more, and for every day with rows in the
    DEFAULT partition (their rows moved there); one transaction per day. A day whose locks
    are not granted within the lock timeout is skipped (and said so) until the next run."""
    result = MaintenanceResult()
    days: set[int] = set()
    with engine.connect() as conn:
        if not is_partitioned(conn):
            return result
        conn.rollback()
        try:
            with conn.begin():
                conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                days.update(default_days(conn))
        except sa.exc.OperationalError as exc:
            result.skipped.append(f"{DEFAULT_PARTITION} not read: {exc.orig}")
    today = day_of(now_ms)
    days.update(range(today, today + ahead_days + 1))
    for day in sorted(days):
        if not FIRST_DAY <= day <= LAST_DAY:
            result.skipped.append(f"day {day}: outside 1970..9999, its rows stay in "
                                  f"{DEFAULT_PARTITION}")
            continue
        try:
            with engine.begin() as conn:
                _lock(conn)
                created, moved = create_day(conn, day)
        except sa.exc.OperationalError as exc:
            result.skipped.append(f"{partition_name(day)}: {exc.orig}")
            log.warning("partition %s not made (the next run retries): %s",
                        partition_name(day), exc.orig)
            continue
        if created:
            result.created.append(partition_name(day))
            result.moved_rows += moved
    compact_days_over(engine, today * DAY_MS, result)
    if result.created:
        log.info("samples partitions created: %s (%d rows moved from %s)",
                 ", ".join(result.created), result.moved_rows, DEFAULT_PARTITION)
    return result


def compact_days_over(engine: sa.Engine, before_ms: int, result: MaintenanceResult) -> None:
    """Rebuild the primary key of each day partition that ended by ``before_ms`` and was not
    rebuilt yet (``REINDEX CONCURRENTLY``: inserts and reads go on). The samplers' inserts
    come in time order for many GPUs at once, so the (gpu_id, ts_ms) key splits its pages
    all over and leaves them about two thirds full (42 B a row); rebuilt, 32 B. A rebuilt
    index carries the comment ``COMPACTED``; one that failed half-way is dropped."""
    try:
        with engine.connect() as conn:
            keys, bounds = _keys_and_bounds(conn)
    except sa.exc.OperationalError as exc:
        result.skipped.append(f"partitions not read: {exc.orig}")
        return
    for name, index, comment in sorted(keys):
        part = bounds.get(name)
        if part is None or part.hi_ms > before_ms or comment == COMPACTED:
            continue
        # Outside a transaction (REINDEX CONCURRENTLY cannot run in one), so without the
        # lock timeout, which only a session setting could give and a transaction-mode
        # pooler would not keep: its SHARE UPDATE EXCLUSIVE wait holds up no insert or read.
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            try:
                conn.execute(sa.text(f"REINDEX INDEX CONCURRENTLY {index}"))
                conn.execute(sa.text(f"COMMENT ON INDEX {index} IS '{COMPACTED}'"))
                result.compacted.append(name)
            except sa.exc.OperationalError as exc:
                result.skipped.append(f"{name} key not rebuilt (the next run retries): "
                                      f"{exc.orig}")
                _drop_invalid(conn, name, result)
                return  # the database is busy: the rest waits for the next run too


def _drop_invalid(conn: sa.Connection, table: str, result: MaintenanceResult) -> None:
    """Drop what a failed REINDEX CONCURRENTLY left of the table's index (an invalid copy)."""
    try:
        for (leftover,) in conn.execute(sa.text(
                "SELECT i.indexrelid::regclass::text FROM pg_index i "
                "WHERE i.indrelid = to_regclass(:t) AND NOT i.indisvalid"), {"t": table}).all():
            conn.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS {leftover}"))
    except sa.exc.OperationalError as exc:
        result.skipped.append(f"{table}: an invalid index copy stays until the next run: "
                              f"{exc.orig}")


def _keys_and_bounds(conn: sa.Connection) -> tuple[list[Any], dict[str, Partition]]:
    """Each partition's primary key with its comment, and the day partitions by name."""
    bounds = {p.name: p for p in partitions(conn)}
    keys = list(conn.execute(sa.text(
        "SELECT c.relname, i.indexrelid::regclass::text, "
        "coalesce(obj_description(i.indexrelid, 'pg_class'), '') "
        "FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid "
        "JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary "
        "WHERE h.inhparent = to_regclass('samples')")).all())
    return keys, bounds


def drop(engine: sa.Engine, partition: Partition,
         keep: list[tuple[int, int, int]]) -> int | None:
    """Copy the rows of ``keep`` — (gpu_id, first_ms, last_ms) closed ranges — into
    ``samples_kept``, then DETACH and DROP the partition, in one transaction; returns the
    rows gone: those the partition held less those kept (None: another process dropped
    it first)."""
    with engine.begin() as conn:
        _lock(conn)
        if conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": partition.name}).scalar() is None:
            return None
        rows = int(conn.execute(sa.text(f"SELECT count(*) FROM {partition.name}")).scalar_one())
        for gpu_id, first, last in keep:
            rows -= conn.execute(sa.text(
                f"INSERT INTO samples_kept ({COLUMNS}) SELECT {COLUMNS} FROM {partition.name} "
                "WHERE gpu_id = :gpu AND ts_ms >= :first AND ts_ms <= :last "
                "ON CONFLICT (gpu_id, ts_ms) DO NOTHING"),
                {"gpu": gpu_id, "first": first, "last": last}).rowcount
        conn.execute(sa.text(f"ALTER TABLE samples DETACH PARTITION {partition.name}"))
        conn.execute(sa.text(f"DROP TABLE {partition.name}"))
    return rows


def has_rows(conn: sa.Connection, partition: Partition, gpu_id: int,
             since_ms: int = -(2**62)) -> bool:
    """Whether the partition holds a row of the GPU at or after ``since_ms``: one seek on
    its key."""
    return conn.execute(sa.text(
        f"SELECT 1 FROM {partition.name} WHERE gpu_id = :gpu AND ts_ms >= :since LIMIT 1"),
        {"gpu": gpu_id, "since": since_ms}).first() is not None

