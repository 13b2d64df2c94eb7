"""Noticing a step of the wall clock, and keeping the scheduler's jobs on time across it.

NTP stepping the clock, an operator's ``date -s``, a virtual machine resumed: the wall
clock jumps while the monotonic clock does not. APScheduler 3 times its jobs by the wall
clock, so after a step *back* of an hour every job would wait that hour out — no ticks, no
lease reaping. A ClockWatch compares the two clocks once a ``period_s``; when their
difference moves by more than ``tolerance_s`` it reports the jump (the sampler logs a
``clock_jumped`` event) and, for a step back, makes every job of the scheduler run now, so
each one's next run is timed from the new clock. Sample timestamps stay monotonic per GPU
by themselves (gpuhistory/sampling/pipeline.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN, SchedulerEvent
from apscheduler.schedulers.base import BaseScheduler

log = logging.getLogger(__name__)


class ClockWatch:
    def __init__(self, scheduler: BaseScheduler, on_jump: Callable[[float], None], *,
                 wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 period_s: float = 1.0, tolerance_s: float = 1.0) -> None:
        self.scheduler = scheduler
        self.on_jump = on_jump
        self.wall, self.monotonic = wall, monotonic
        self.period_s, self.tolerance_s = period_s, tolerance_s
        self._offset = wall() - monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._offset = self.wall() - self.monotonic()
            # The watch ends with its scheduler: at once, not at its next look a period later.
            self.scheduler.add_listener(self._scheduler_stopped, EVENT_SCHEDULER_SHUTDOWN)
            self._thread = threading.Thread(target=self._run, name="gpuhistory-clockwatch",
                                            daemon=True)
            self._thread.start()

    def _scheduler_stopped(self, _event: SchedulerEvent) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self.scheduler.remove_listener(self._scheduler_stopped)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._thread = None

    def check(self) -> float | None:
        """Seconds the wall clock jumped since the last check (None: it did not)."""
        offset = self.wall() - self.monotonic()
        jump = offset - self._offset
        self._offset = offset
        if abs(jump) <= self.tolerance_s:
            return None
        log.warning("the wall clock jumped %+.3f s", jump)
        if jump < 0:
            self._retime_jobs()
        try:
            self.on_jump(jump)
        except Exception:  # reporting it must not stop the watch
            log.exception("could not report the clock jump")
        return jump

    def _retime_jobs(self) -> None:
        """Run every scheduled job now: its next run is then timed from the new clock."""
        now = datetime.fromtimestamp(self.wall(), tz=self.scheduler.timezone)
        for job in self.scheduler.get_jobs():
            if job.next_run_time is not None and job.next_run_time > now:
                self.scheduler.modify_job(job.id, next_run_time=now)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            if not self.scheduler.running:
                return
            try:
                self.check()
            except Exception:  # the watch must outlive a surprise in one check
                log.exception("checking the wall clock failed")
