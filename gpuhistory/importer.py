"""``gpuhistory import``: a trace or an nvidia-smi log through the live pipeline, in one go.

Each file row becomes a Reading; rows with the same timestamp form one tick, and each tick
goes through :class:`~gpuhistory.sampling.pipeline.Pipeline` exactly as a live tick does,
stamped with the file's own time. So states, transitions and events of an import are what
the live service would have written had it been running then.

The whole import is one transaction: a bad row anywhere (a FormatError naming its line), a
sample the log already holds (the file was imported before), or any other error rolls it
all back, ``gpus`` rows included, and leaves the database as it was. On SQLite that
transaction takes the write lock up front (``BEGIN IMMEDIATE``) and holds it to the end, so
a live sampler writing to the same file waits (up to its busy timeout) while a large file
imports.

A GPU of the file that would sit in a slot (host, index) that a different card held at the
same times is refused (SlotClashError, rolled back): a recording of another machine goes
under its own ``--host-name``. Once the transaction commits, the imported cards' incidents
are detected and their samples rolled up before ``import_file`` returns, so the log is whole
when the import is done.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, tzinfo
from operator import itemgetter
from typing import Any

import sqlalchemy as sa

from gpuhistory.analytics.incidents import IncidentDetector, mark_dirty
from gpuhistory.analytics.rollups import RollupJob
from gpuhistory.analytics.rollups import mark_dirty as mark_rollups_dirty
from gpuhistory.clock import Clock, SystemClock, iso_utc
from gpuhistory.domain.config import DEFAULT_CONFIG, Config
from gpuhistory.domain.reading import Reading
from gpuhistory.formats.errors import FormatError
from gpuhistory.formats.files import MAX_LINE_BYTES, line_too_long, open_regular
from gpuhistory.formats.nvidia_smi_csv import header_key, parse_timestamp, smi_tuples
from gpuhistory.formats.trace_csv import trace_tuples
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.storage.cards import count_incidents, gpu_by_id, slot_rivals
from gpuhistory.storage.log import LogStore, TickRecord
from gpuhistory.storage.schema import gpus, samples

FORMATS = ("trace", "nvidia-smi")
CHUNK_SAMPLES = 20_000  # samples per executemany
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z

_gpu_id_of = itemgetter(0)  # of a sample tuple (storage/log.py sample_tuple)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import added to the log."""

    path: str
    format: str  # "trace" | "nvidia-smi"
    samples: int
    transitions: int
    events: int
    gpus: int  # distinct GPUs in the file
    first_ts_ms: int | None
    last_ts_ms: int | None
    seconds: float  # wall-clock time the import took
    incidents: int = 0  # overheat incidents of the imported cards in the file's range


class ImportConflictError(ValueError):
    """The log already holds samples the file would add; nothing was imported."""


class SlotClashError(ImportConflictError):
    """A GPU of the file would sit in a slot another card held at the same times."""


def detect_format(path: str | os.PathLike[str]) -> str:
    """``trace`` or ``nvidia-smi``, from the header row; FormatError when it is neither."""
    name = os.fspath(path)
    with open_regular(name) as handle:
        first = handle.readline(MAX_LINE_BYTES)
    if len(first) == MAX_LINE_BYTES and not first.endswith(b"\n"):
        raise line_too_long(name, 1)
    try:
        header = first.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(name, 1, "not UTF-8 text; is this a CSV file?") from None
    if not header.strip():
        raise FormatError(name, 1, "empty file: expected a header row")
    cells = [c.strip().strip('"').lower() for c in header.split(",")]
    if "t_s" in cells or "gpu" in cells:
        return "trace"
    keys = {header_key(c) for c in cells}
    if "timestamp" in keys or "index" in keys or _is_smi_time(header.split(",", 1)[0]):
        return "nvidia-smi"  # (a row first: written with noheader, which its reader names)
    raise FormatError(
        name, 1, "unrecognised header: expected a trace (t_s,gpu,temperature_c,...) or a "
                 "log of nvidia-smi --query-gpu=timestamp,index,... --format=csv")


def _is_smi_time(text: str) -> bool:
    try:
        parse_timestamp(text, UTC)
    except ValueError:
        return False
    return True


class _InTransaction:
    """Stands in for the engine of the import's LogStore, so its writes join the import.

    ``LogStore.gpu_id`` creates a device's ``gpus`` row in a transaction of its own
    (``engine.begin()``): during an import that would commit a row the import may yet roll
    back, and on SQLite it would wait on the import's own write lock. Here ``begin`` is a
    SAVEPOINT on the import's connection instead, so the row lives or dies with the import.
    """

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn
        self.dialect = conn.dialect

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        with self._conn.begin_nested():
            yield self._conn

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        yield self._conn


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while millions of short-lived objects pass through."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def import_file(
    engine: sa.Engine,
    path: str | os.PathLike[str],
    *,
    fmt: str = "auto",
    start_ms: int | None = None,
    host: str,
    config: Config = DEFAULT_CONFIG,
    tz: tzinfo | None = None,
    clock: Clock | None = None,
) -> ImportResult:
    """Import a trace or an nvidia-smi CSV log into the log, in one transaction.

    ``fmt``: ``auto`` (from the header), ``trace`` or ``nvidia-smi``. ``start_ms``: for a
    trace, the wall-clock time (epoch ms) of ``t_s = 0`` — required, since a trace holds only
    relative times; not allowed for an nvidia-smi log, which carries its own. ``tz``: the
    zone an nvidia-smi log's timestamps were written in (default: this machine's local
    zone). ``host``: the host the GPUs belong to. ``config``: the thresholds to classify by.

    Raises FormatError (naming the line) for a malformed file, ImportConflictError when the
    log already holds samples the file would add, ValueError for bad arguments; in every
    case nothing is written.
    """
    name = os.fspath(path)
    if fmt not in ("auto", *FORMATS):
        raise ValueError(f"unknown import format {fmt!r}; expected auto, trace or nvidia-smi")
    if not isinstance(host, str) or not host or len(host) > 255:
        raise ValueError("host must be a non-empty string of at most 255 characters")
    if start_ms is not None and (isinstance(start_ms, bool) or not isinstance(start_ms, int)
                                 or not 0 <= start_ms <= MAX_TS_MS):
        raise ValueError(f"start_ms must be epoch milliseconds (an int from 0 to "
                         f"{MAX_TS_MS}), not {start_ms!r}")
    kind = detect_format(name) if fmt == "auto" else fmt
    rows: Iterable[tuple[Any, int, Reading]]
    to_ms: Callable[[Any], int]
    if kind == "trace":
        if start_ms is None:
            raise ValueError(
                f"{name} is a trace: its times are seconds since the trace started, so the "
                "import needs start_ms, the wall-clock time of t_s = 0 (epoch milliseconds)")
        base = start_ms
        rows = trace_tuples(name)

        def to_ms(t_s: float) -> int:
            return base + round(t_s * 1000)
    else:
        if start_ms is not None:
            raise ValueError(f"{name} is an nvidia-smi log, which carries its own timestamps: "
                             "start_ms applies to traces only (use tz for the log's zone)")
        rows = smi_tuples(name, tz=tz)

        def to_ms(ts_ms: int) -> int:
            return ts_ms

    started = time.perf_counter()
    with _gc_paused(), engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            result = _import_rows(conn, name, kind, rows, to_ms, host, config)
    gpu_ids = result.pop("gpu_ids")
    incidents = complete(engine, gpu_ids, config, clock or SystemClock(),
                         result["first_ts_ms"], result["last_ts_ms"])
    return ImportResult(path=name, format=kind, seconds=time.perf_counter() - started,
                        incidents=incidents, **result)


def complete(engine: sa.Engine, gpu_ids: list[int], config: Config, clock: Clock,
             first_ms: int, last_ms: int) -> int:
    """Right after the import commits: detect the imported cards' incidents and roll up
    their samples (up to now, as the rollup job would), so the log is whole when ``import``
    returns. Returns the incidents in [first_ms, last_ms]. Were this interrupted, the
    dirty marks committed with the samples make the service's jobs do it."""
    detector = IncidentDetector(engine, clock, config)
    rollups = RollupJob(engine, clock)
    target = rollups.target_ms()
    for gpu_id in gpu_ids:
        detector.run(gpu_id=gpu_id)
        while not rollups.step(gpu_id, target)[1]:
            pass
    return count_incidents(engine, gpu_ids, first_ms, last_ms)


def _import_rows(
    conn: sa.Connection,
    name: str,
    kind: str,
    rows: Iterable[tuple[Any, int, Reading]],
    to_ms: Callable[[Any], int],
    host: str,
    config: Config,
) -> dict[str, Any]:
    existing = {row.id: row for row in conn.execute(sa.select(gpus).where(gpus.c.host == host))}
    store = LogStore(_InTransaction(conn), host)  # type: ignore[arg-type]  # stands in for Engine
    pipeline = Pipeline(store, backend_name=kind, config=lambda: config, fill_missing=False,
                        row_tuples=True)
    record = TickRecord()
    gpu_ids: set[int] = set()
    totals = {"samples": 0, "transitions": 0, "events": 0}
    first_ts: int | None = None
    earliest_ts: int | None = None  # from here on, the incident detector rescans

    def flush() -> None:
        nonlocal record
        if not record.samples:
            return
        try:
            store.write(record, conn)
        except sa.exc.IntegrityError as exc:
            chunk = record.samples
            uuids = sorted(pipeline.uuids.values())
            raise ImportConflictError(
                f"{name}: the log already holds samples of host {host!r} at times this file "
                f"covers (GPUs {', '.join(uuids)}; a clash among the rows from "
                f"{iso_utc(chunk[0][1])} to {iso_utc(chunk[-1][1])}): was it "
                "imported before? Nothing was imported.") from exc
        gpu_ids.update(map(_gpu_id_of, record.samples))
        totals["samples"] += len(record.samples)
        totals["transitions"] += len(record.transitions)
        totals["events"] += len(record.events)
        record = TickRecord()

    process = pipeline.process
    tick: list[Reading] = []
    lines: list[int] = []
    tick_key: Any = None

    def run_tick() -> None:
        nonlocal first_ts, earliest_ts
        ts = to_ms(tick_key)
        if not 0 <= ts <= MAX_TS_MS:
            raise FormatError(name, lines[0], f"the row's time ({ts} ms since 1970) is "
                                              "outside the years 1970 to 9999")
        if len(tick) > 1:
            _check_distinct(name, tick, lines)
        process(ts, tick, record=record)
        if first_ts is None:
            first_ts = ts
        if earliest_ts is None or ts < earliest_ts:
            earliest_ts = ts
        if len(record.samples) >= CHUNK_SAMPLES:
            flush()

    for key, line, reading in rows:
        if key == tick_key:
            tick.append(reading)
            lines.append(line)
            continue
        if tick:
            run_tick()
        tick_key, tick, lines = key, [reading], [line]
    if tick:
        run_tick()
    flush()
    if not totals["samples"] or earliest_ts is None:
        raise FormatError(name, 2, "no data rows after the header")
    _finish_gpus(conn, existing, gpu_ids)
    _refuse_slot_clashes(conn, name, host, gpu_ids)
    for gpu_id in sorted(gpu_ids):  # committed with the samples, or not at all
        mark_dirty(conn, gpu_id, earliest_ts)
        mark_rollups_dirty(conn, gpu_id, earliest_ts)
    return {**totals, "gpus": len(gpu_ids), "gpu_ids": sorted(gpu_ids), "first_ts_ms": first_ts,
            "last_ts_ms": max(pipeline.last_ts.values(), default=None)}


def _refuse_slot_clashes(conn: sa.Connection, name: str, host: str,
                         gpu_ids: set[int]) -> None:
    """A card is in one slot at a time and a slot holds one card: refuse a file whose GPU
    would take a slot that a different card held during the file's times (rolled back)."""
    s = samples.c
    for gpu_id in sorted(gpu_ids):
        card = gpu_by_id(conn, gpu_id)
        low, high = conn.execute(sa.select(sa.func.min(s.ts_ms), sa.func.max(s.ts_ms))
                                 .where(s.gpu_id == gpu_id)).one()
        rivals = slot_rivals(conn, gpu_id, low, high)
        if card is None or not rivals:
            continue
        other = rivals[0]
        raise SlotClashError(
            f"{name}: GPU {card.index} of host {host!r} was card {other.uuid} from "
            f"{iso_utc(other.first_seen_ms)} to {iso_utc(other.last_seen_ms)}, and this file "
            f"puts card {card.uuid} in that slot at the same times ({iso_utc(low)} to "
            f"{iso_utc(high)}). If the file was recorded on another machine, import it under "
            "that machine's name with --host-name NAME. Nothing was imported.")


def _check_distinct(name: str, tick: list[Reading], lines: list[int]) -> None:
    if len({r.index for r in tick}) == len(tick):
        return
    seen: dict[int, int] = {}
    for reading, line in zip(tick, lines, strict=True):
        if reading.index in seen:
            raise FormatError(name, line, f"GPU {reading.index} has a second row for the same "
                                          f"time (first at line {seen[reading.index]})")
        seen[reading.index] = line


def _finish_gpus(conn: sa.Connection, existing: dict[int, Any], gpu_ids: set[int]) -> None:
    """Make first/last seen span the samples; leave a known GPU's facts as they were.

    A file describes the past, so a GPU the log already knew (say, from the live ``nvml``
    backend) keeps its backend, name and limits; only its first/last seen times widen.
    """
    s = samples.c
    for gpu_id in sorted(gpu_ids):
        low, high = conn.execute(
            sa.select(sa.func.min(s.ts_ms), sa.func.max(s.ts_ms)).where(s.gpu_id == gpu_id)
        ).one()
        old = existing.get(gpu_id)
        if old is None:
            values: dict[str, Any] = {"first_seen_ms": low, "last_seen_ms": high}
        else:
            values = {c.name: getattr(old, c.name) for c in gpus.columns if c.name != "id"}
            values["first_seen_ms"] = min(old.first_seen_ms, low)
            values["last_seen_ms"] = max(old.last_seen_ms, high)
        conn.execute(gpus.update().where(gpus.c.id == gpu_id).values(**values))


__all__ = ["FORMATS", "ImportConflictError", "ImportResult", "SlotClashError", "detect_format",
           "import_file"]
