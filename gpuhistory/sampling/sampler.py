"""The sampling job: read every GPU, classify, persist the tick in one transaction.

Scheduled by APScheduler 3's BackgroundScheduler as one interval job (explicit id,
``max_instances=1``, ``coalesce=True``): the interval trigger computes fire times from its
start, so the cadence does not drift. ``tick()`` is also callable directly, which is how
tests drive it with a fake clock.

Every ``hardware_every`` ticks a tick also asks a backend that can tell (``read_hardware``)
what runs on each GPU and what the hardware did; the changes go into the same transaction
as the tick's samples. A failing hardware read is logged and reported, never fails the tick.

Ticks reach the log through a WriteBuffer (gpuhistory/sampling/write_buffer.py): while the
database cannot take writes, ticks wait in memory (``write_buffer_ticks`` at most) and are
written in order once it can; then ``storage_recovered`` (and ``ticks_dropped``, if the
buffer overflowed) are logged. Callbacks see a tick's events once they are committed.

With ``background_writes`` (``serve`` and ``sampler``), the scheduled ticks hand their
records to a writer thread and return: a tick never waits for the database's write lock (an
import holding SQLite's lock for seconds, a slow commit), so every tick is taken on time and
its samples are written, in order, as soon as the log takes them. A direct ``tick()`` call
waits for its own write.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from gpuhistory.callbacks import CallbackRegistry, Event, make_event
from gpuhistory.clock import Clock, SystemClock, iso_utc
from gpuhistory.domain.events import EventDraft, EventKind
from gpuhistory.domain.metrics import GPUMetrics
from gpuhistory.domain.reading import Reading
from gpuhistory.leases.model import allocatable_mib
from gpuhistory.sampling.backend import Backend, HardwareSource
from gpuhistory.sampling.clockwatch import ClockWatch
from gpuhistory.sampling.hardware import HardwareChanges, HardwareFacts
from gpuhistory.sampling.lease_watch import LeaseWatch
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.write_buffer import STORAGE_ERRORS, Outage, WriteBuffer, Written
from gpuhistory.storage.engine import unavailable_reason
from gpuhistory.storage.log import LogStore, TickRecord

log = logging.getLogger(__name__)

SAMPLE_JOB_ID = "gpuhistory.sample"
HARDWARE_MIN_PERIOD_S = 1.0  # by default hardware facts are read about once a second at most


def default_hardware_every(interval_s: float) -> int:
    """Every tick when the interval is at least 1 s, else about once a second."""
    return max(1, math.ceil(HARDWARE_MIN_PERIOD_S / interval_s - 1e-9))


@dataclass(frozen=True, slots=True)
class TickStats:
    ts_ms: int
    gpus: int
    seconds: float
    error: str | None = None


class Sampler:
    def __init__(
        self,
        backend: Backend,
        pipeline: Pipeline,
        store: LogStore,
        clock: Clock,
        interval: Callable[[], float] | float = 3.0,
        callbacks: CallbackRegistry | None = None,
        hardware_every: int | None = None,
        background_writes: bool = False,
    ) -> None:
        self.backend = backend
        self.pipeline = pipeline
        self.store = store
        self.clock = clock
        self._interval = interval
        self.callbacks = callbacks if callbacks is not None else CallbackRegistry()
        self.last_tick: TickStats | None = None
        self.last_success_ms: int | None = None
        self.stopped_ms: int | None = None  # when monitoring was stopped (None: running/never)
        # Ticks between hardware reads; None: default_hardware_every(interval).
        self.hardware_every = hardware_every
        self.hardware_error: str | None = None  # why the last hardware read failed, if it did
        # The newest hardware facts by GPU index (what /metrics serves of processes and of the
        # error and energy counters, which the log does not keep).
        self.hardware_facts: dict[int, HardwareFacts] = {}
        # Leases held to account against those facts' processes.
        self.lease_watch = LeaseWatch(store.engine, pipeline.config)
        self._ticks = 0
        self._scheduler: BackgroundScheduler | None = None
        self._owns_scheduler = False
        self._job_interval: float | None = None
        self._tick_lock = threading.Lock()
        self._control_lock = threading.RLock()
        self.buffer = WriteBuffer(store, lambda: self.pipeline.config().write_buffer_ticks)
        self._clock_watch: ClockWatch | None = None
        # What a stop could not write because the database refused it (one line each).
        self.unsaved: list[str] = []
        self.background_writes = background_writes
        self._writes: queue.SimpleQueue[tuple[TickRecord, int, threading.Event] | None] = (
            queue.SimpleQueue())
        self._writer: threading.Thread | None = None
        # Called after each commit of ticks (the status projection follows them at once).
        self.committed: list[Callable[[], object]] = []

    @property
    def interval(self) -> float:
        return float(self._interval() if callable(self._interval) else self._interval)

    # -- one tick ----------------------------------------------------------------------
    def tick(self, write_later: bool = False) -> TickRecord:
        """Sample every GPU once and append the result to the log (or keep it until the log
        can take it: see the module's docstring). A storage fault never raises here.
        ``write_later``: with the writer thread running, return once the tick is handed to
        it (the scheduled job); a direct call waits for its write."""
        if self._writer is not None:
            return self._tick_to_writer(write_later)
        with self._tick_lock:
            record, outage, written = self._tick_now()
        self._after_write(outage, written)
        return record

    def _classify(self) -> tuple[TickRecord, int, float] | None:
        """Read and classify a tick (the caller holds the tick lock): the record, its time
        and when it started; None when a new device's gpus row could not be written."""
        started = time.perf_counter()
        readings, facts = self._read()
        ts_ms = self.clock.now_ms()
        try:
            record = self.pipeline.process(
                ts_ms, readings, {i.uuid: i for i in self.backend.identities()}
            )
        except STORAGE_ERRORS as exc:
            self.buffer.count_lost(ts_ms, exc)
            self.last_tick = TickStats(ts_ms, 0, time.perf_counter() - started,
                                       self._storage_error())
            return None
        changes = self._hardware_changes(facts, record)
        if changes is not None:  # the record is in the log, or waits to be: in order
            self.pipeline.hardware.commit(changes)
        if facts:  # leases against the processes just read (sampling/lease_watch.py)
            self.lease_watch.check(ts_ms, facts, self.pipeline.gpu_ids,
                                   {r.index: allocatable_mib(r.memory_total_mib,
                                                             r.memory_reserved_mib)
                                    for r in readings}, record)
        return record, ts_ms, started

    def _tick_now(self) -> tuple[TickRecord, Outage | None, list[Written]]:
        """A tick written before it returns (the caller holds the tick lock)."""
        tick = self._classify()
        if tick is None:
            return TickRecord(), None, []
        record, ts_ms, started = tick
        written = self.buffer.submit(record, ts_ms)
        outage = self.buffer.end_outage()
        if self.buffer.outage is None:
            self.last_success_ms = ts_ms
        self.last_tick = TickStats(ts_ms, len(record.samples),
                                   time.perf_counter() - started, self._storage_error())
        return record, outage, written

    def _after_write(self, outage: Outage | None, written: list[Written]) -> None:
        """Outside the tick lock: log a recovered outage, then the committed events'
        callbacks."""
        if outage is not None:
            self._recovered(outage)
        if written:
            for follow in self.committed:
                try:
                    follow()
                except Exception:  # a reader's failure never breaks sampling
                    log.exception("following a commit failed")
        if self.callbacks:
            for done in written:
                if done.record.drafts:
                    self.callbacks.dispatch(self._events(done.record.drafts, done.event_ids))

    def _tick_to_writer(self, write_later: bool) -> TickRecord:
        with self._tick_lock:
            stopped = self._writer is None  # stopped meanwhile: written here instead
            if not stopped:
                record, done = self._hand_over()
        if stopped:
            return self.tick()
        if not write_later:
            done.wait()
        return record

    def _hand_over(self) -> tuple[TickRecord, threading.Event]:
        """Read and classify a tick, and hand it to the writer (the caller holds the lock)."""
        done = threading.Event()
        tick = self._classify()
        if tick is None:
            done.set()
            return TickRecord(), done
        record, ts_ms, started = tick
        self._writes.put((record, ts_ms, done))
        self.last_tick = TickStats(ts_ms, len(record.samples), time.perf_counter() - started,
                                   self._storage_error())
        return record, done

    def _write_loop(self) -> None:
        """The writer thread: move every handed-over tick into the buffer, then write what
        the log takes, oldest first; until the stop sentinel."""
        stopping = False
        while not stopping:
            items = [self._writes.get()]
            while True:
                try:
                    items.append(self._writes.get_nowait())
                except queue.Empty:
                    break
            handed = [i for i in items if i is not None]
            stopping = len(handed) != len(items)
            for record, _ts, _done in handed:
                self.buffer.add(record)
            now = handed[-1][1] if handed else self.clock.now_ms()
            try:
                written = self.buffer.flush(now)
                outage = self.buffer.end_outage()
                if self.buffer.outage is None and handed:
                    self.last_success_ms = now
                self._after_write(outage, written)
            except Exception:  # the writer must outlive any one failure
                log.exception("writing ticks failed")
            finally:
                for _record, _ts, done in handed:
                    done.set()

    def _start_writer(self) -> None:
        if self.background_writes and self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="gpuhistory-writer",
                                            daemon=True)
            self._writer.start()

    def _stop_writer(self) -> None:
        """Write what was handed over (as far as the log takes it) and end the thread."""
        with self._tick_lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                self._writes.put(None)
        if writer is not None:
            writer.join()

    @property
    def storage(self) -> dict[str, object]:
        """Whether ticks reach the log, for /healthz: ticks waiting, dropped, the error."""
        outage = self.buffer.outage
        body: dict[str, object] = {"ok": outage is None, "waiting_ticks": self.buffer.waiting,
                                   "buffer_ticks": self.buffer.capacity}
        if outage is not None:
            body.update(reason=outage.reason, error=outage.error, since=iso_utc(outage.since_ms),
                        dropped_ticks=outage.dropped)
        return body

    def _storage_error(self) -> str | None:
        outage = self.buffer.outage
        if outage is None:
            return None
        return (f"database unavailable ({outage.reason}): {self.buffer.waiting} tick(s) "
                f"waiting, {outage.dropped} dropped; {outage.error}")

    def _recovered(self, outage: Outage) -> None:
        """Log what the outage cost; rebuild classification if state rows had to go."""
        assert outage.ended_ms is not None
        self._append(EventKind.STORAGE_RECOVERED, since=iso_utc(outage.since_ms),
                     seconds=round((outage.ended_ms - outage.since_ms) / 1000, 3),
                     reason=outage.reason, error=outage.error,
                     buffered_ticks=outage.buffered, dropped_ticks=outage.dropped)
        if outage.dropped:
            self._append(EventKind.TICKS_DROPPED, count=outage.dropped,
                         first_at=iso_utc(outage.first_dropped_ms),
                         last_at=iso_utc(outage.last_dropped_ms),
                         state_rebuilt=outage.state_lost)
        if outage.state_lost:
            with self._tick_lock:
                self.pipeline.resync(self.clock.now_ms())

    def _read(self) -> tuple[list[Reading], list[HardwareFacts] | None]:
        """This tick's readings, and its hardware facts when due (None: not due, or the
        hardware read failed). A backend that can read both in one go does."""
        if not isinstance(self.backend, HardwareSource):
            return self.backend.read(), None
        every = self.hardware_every or default_hardware_every(self.interval)
        due = self._ticks % every == 0
        self._ticks += 1
        if not due:
            return self.backend.read(), None
        both = getattr(self.backend, "read_with_hardware", None)
        if both is not None:
            readings, facts, error = both()
            return readings, self._hardware_read(facts, error)
        readings = self.backend.read()
        try:
            facts = self.backend.read_hardware()
        except Exception as exc:  # a hardware read never fails the tick
            return readings, self._hardware_read(None, f"{type(exc).__name__}: {exc}")
        return readings, self._hardware_read(facts, None)

    def _hardware_read(self, facts: list[HardwareFacts] | None,
                       error: str | None) -> list[HardwareFacts] | None:
        """Note how the hardware read went; the facts, or None when it failed."""
        if error is not None:
            if self.hardware_error is None:
                log.error("reading hardware facts failed: %s", error)
            self.hardware_error = error
            return None
        if self.hardware_error is not None:
            log.info("hardware facts read again (after: %s)", self.hardware_error)
        self.hardware_error = None
        if facts:
            self.hardware_facts = {fact.index: fact for fact in facts}
        return facts

    def _hardware_changes(self, facts: list[HardwareFacts] | None,
                          record: TickRecord) -> HardwareChanges | None:
        if not facts:
            return None
        try:
            return self.pipeline.process_hardware(facts, record)
        except Exception as exc:  # nor does a surprise in comparing them
            log.exception("processing hardware facts failed")
            self.hardware_error = f"{type(exc).__name__}: {exc}"
            return None

    def _events(self, drafts: list[EventDraft], ids: list[int]) -> list[Event]:
        out = []
        for draft, event_id in zip(drafts, ids, strict=True):
            metrics = None
            latest = self.pipeline.latest.get(draft.gpu_index) if draft.gpu_index is not None \
                else None
            if latest is not None:
                metrics = GPUMetrics.from_reading(latest.reading, latest.state, latest.ts_ms,
                                                  self.backend.name)
            out.append(make_event(event_id, str(draft.kind), draft.gpu_index, draft.ts_ms,
                                  dict(draft.payload), metrics))
        return out

    def safe_tick(self) -> None:
        """The scheduled job: a failing tick is logged and recorded, never raised."""
        try:
            if self._writer is not None:
                self.tick(write_later=True)
            else:
                self.tick()
            self._follow_interval()
        except Exception as exc:  # the next tick must still run
            log.exception("sampling tick failed")
            self.last_tick = TickStats(self.clock.now_ms(), 0, 0.0, f"{type(exc).__name__}: {exc}")

    # -- schedule ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._job_interval is not None

    @property
    def scheduler(self) -> BackgroundScheduler | None:
        """The scheduler the sampling job runs on (None before start or attach)."""
        return self._scheduler

    def attach(self, scheduler: BackgroundScheduler) -> None:
        """Use a scheduler shared with other jobs (the service's); started by its owner."""
        self._scheduler = scheduler
        self._owns_scheduler = False

    def start(self, requested_by: str | None = None) -> bool:
        """Add the interval job (first tick at once) and log ``monitoring_started``.

        Returns False when it was already running. A request (``requested_by``) is logged
        first: if the log cannot take it, the error is raised and nothing changes.
        """
        with self._control_lock:
            if self.running:
                return False
            if self._scheduler is None:
                self._scheduler = BackgroundScheduler(timezone="UTC")
                self._owns_scheduler = True
            if requested_by is not None:  # an operator's request is durable before it acts
                self._append(EventKind.MONITORING_STARTED, durable=True,
                             interval_seconds=self.interval, backend=self.backend.name,
                             requested_by=requested_by)
            interval = self.interval
            self._start_writer()
            self._scheduler.add_job(
                self.safe_tick, "interval", seconds=interval, id=SAMPLE_JOB_ID,
                name="sample every GPU", next_run_time=datetime.now().astimezone(),
                max_instances=1, coalesce=True, misfire_grace_time=None,
                replace_existing=True,
            )
            self._job_interval = interval
            self.stopped_ms = None
            if requested_by is None:
                self._append(EventKind.MONITORING_STARTED, interval_seconds=interval,
                             backend=self.backend.name, requested_by=None)
            if not self._scheduler.running:
                self._scheduler.start()
            self._watch_clock()
            return True

    def _watch_clock(self) -> None:
        """Watch the wall clock for steps (only a real one: a test's fake clock stands still
        while time passes, which would look like one)."""
        if self._clock_watch is not None or not isinstance(self.clock, SystemClock) \
                or self._scheduler is None:
            return
        self._clock_watch = ClockWatch(
            self._scheduler, self._clock_jumped, wall=lambda: self.clock.now_ms() / 1000)
        self._clock_watch.start()

    def _clock_jumped(self, seconds: float) -> None:
        self._append(EventKind.CLOCK_JUMPED, seconds=round(seconds, 3),
                     direction="backwards" if seconds < 0 else "forwards")

    def stop(self, reason: str = "requested", requested_by: str | None = None) -> bool:
        """Remove the job, wait for the tick in flight, log ``monitoring_stopped``.

        Returns False when it was not running. A request (``requested_by``) is logged
        first: if the log cannot take it, the error is raised and nothing changes.
        """
        with self._control_lock:
            if not self.running or self._scheduler is None:
                return False
            self.unsaved = []
            if requested_by is not None:  # an operator's request is durable before it acts
                self._append(EventKind.MONITORING_STOPPED, durable=True, reason=reason,
                             requested_by=requested_by)
            self._job_interval = None
            self.stopped_ms = self.clock.now_ms()
            with contextlib.suppress(JobLookupError):
                self._scheduler.remove_job(SAMPLE_JOB_ID)
            if self._owns_scheduler:
                if self._clock_watch is not None:  # a shared scheduler keeps its watch
                    self._clock_watch.stop()
                    self._clock_watch = None
                self._scheduler.shutdown(wait=True)
                self._scheduler = None
            with self._tick_lock:  # the tick in flight finishes first
                pass
            self._stop_writer()  # then what it handed over is written
            with self._tick_lock:
                self._flush_waiting()
            if requested_by is None:
                self._append(EventKind.MONITORING_STOPPED, reason=reason, requested_by=None)
            try:
                self.store.finalize_last_seen(self.clock.now_ms(),
                                              list(self.pipeline.gpu_ids.values()))
            except STORAGE_ERRORS as exc:
                self._refused("the GPUs' last-seen times", exc)
            self._finalize_processes()
            return True

    def _finalize_processes(self) -> None:
        """On stop: each running process's last_seen_ms becomes the last read it was in."""
        with self._tick_lock:
            record, changes = self.pipeline.hardware.last_seen_updates()
            if not record.process_updates:
                return
            try:
                self.store.write(record)
            except STORAGE_ERRORS as exc:
                self._refused("when the running processes were last seen", exc)
                return
            except Exception:
                log.exception("could not record when the running processes were last seen")
                return
            self.pipeline.hardware.commit(changes)

    def _flush_waiting(self) -> None:
        """On stop: one more try for the ticks still waiting (the caller holds the tick lock)."""
        if not self.buffer.waiting:
            return
        written = self.buffer.flush(self.clock.now_ms())
        if self.buffer.waiting:
            log.error("stopping with %d tick(s) that the log could not take: they are lost",
                      self.buffer.waiting)
            self.unsaved.append(f"{self.buffer.waiting} tick(s)")
        elif written:
            outage = self.buffer.end_outage()
            if outage is not None:
                self._append(EventKind.STORAGE_RECOVERED, since=iso_utc(outage.since_ms),
                             reason=outage.reason, error=outage.error,
                             buffered_ticks=outage.buffered, dropped_ticks=outage.dropped)

    def _refused(self, what: str, exc: BaseException) -> None:
        """The database refused a write of the sampler's own: one error line, no traceback
        (the fault is the database's, and /healthz already says which)."""
        log.error("could not record %s: the database refuses writes (%s): %s", what,
                  unavailable_reason(exc), getattr(exc, "orig", None) or exc)
        self.unsaved.append(what)

    def _follow_interval(self) -> None:
        """Reschedule when the configured interval changed (a runtime config change)."""
        interval = self.interval
        if self._job_interval is not None and interval != self._job_interval \
                and self._scheduler is not None:
            with contextlib.suppress(JobLookupError):
                self._scheduler.reschedule_job(SAMPLE_JOB_ID, trigger="interval",
                                               seconds=interval)
                self._job_interval = interval
                log.info("sampling interval now %s s", interval)

    def _append(self, kind: EventKind, durable: bool = False, **payload: object) -> None:
        """Log an event of the service's own; ``durable``: raise if it cannot be written
        (an operator's request must not take effect unrecorded), else log the failure."""
        draft = EventDraft(kind=kind, ts_ms=self.clock.now_ms(), payload=payload)
        try:
            ids = self.store.append_events([draft])
        except STORAGE_ERRORS as exc:
            if durable:
                raise
            self._refused(str(kind), exc)
            return
        except Exception:
            if durable:
                raise
            log.exception("could not log %s", kind)
            return
        if self.callbacks:
            self.callbacks.dispatch([make_event(ids[0], str(kind), None, draft.ts_ms, payload)])
