"""Maintenance once per fleet: each fleet-wide job runs in one sampler per period.

Every ``serve``/``sampler`` process schedules the same maintenance jobs (rollups, incident
detection, retention: work over every GPU in the database, imported hosts' included). When
its scheduler fires one, :meth:`FleetMaintenance.fire` first claims the job's current
period in ``maintenance_runs`` (gpuhistory/storage/maintenance_runs.py) and runs the job
only when the claim is won; the other samplers' firings in that period do nothing.

Periods are aligned to the clock: the period of a job every ``P`` seconds that holds time
``t`` is ``[t // P * P, (t // P + 1) * P)``. The first firing in a period, in whichever
process, runs the job; so with one or a hundred samplers the job runs once per period, and
when its last holder stops or dies, the next period is simply claimed by whoever fires
first in it. A holder that dies mid-run blocks the job until its ``busy_until_ms`` (the
run's budget twice over) passes; the jobs are idempotent, so the next run redoes whatever
the dead one left half done.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from gpuhistory.clock import Clock
from gpuhistory.storage import maintenance_runs

log = logging.getLogger(__name__)

PHASE_LOW, PHASE_HIGH = 0.1, 0.9  # where in its period a process's firing of a job falls


@dataclass(frozen=True)
class MaintenanceJob:
    """One fleet-wide job: ``run()`` does the work in at most about ``budget_s`` seconds
    (it stops after the chunk that passes it; the next run goes on); raising marks the run
    failed (``last_error``)."""

    name: str  # the maintenance_runs key, e.g. "rollups"
    job_id: str  # the scheduler's job id
    description: str
    period_s: float
    budget_s: float
    run: Callable[[], Any]

    @property
    def period_ms(self) -> int:
        return round(self.period_s * 1000)

    @property
    def busy_ms(self) -> int:
        """How long a claimed run keeps others off before its holder counts as dead."""
        return round(2 * self.budget_s * 1000)


def holder_id(host: str) -> str:
    """This process, as ``maintenance_runs.holder`` shows it: host, machine, pid, and a
    random suffix (a restarted process with a reused pid is another holder)."""
    return f"{host}@{socket.gethostname()}:{os.getpid()}/{uuid.uuid4().hex[:8]}"[:255]


class FleetMaintenance:
    """Claims and runs fleet-wide jobs for one process (``holder``)."""

    def __init__(self, engine: sa.Engine, clock: Clock, holder: str) -> None:
        self.engine = engine
        self.clock = clock
        self.holder = holder
        self.ran: Counter[str] = Counter()  # runs this process did, by job name
        self.failed: Counter[str] = Counter()

    def fire(self, job: MaintenanceJob) -> bool:
        """The scheduler's call: claim the job's current period and run it if claimed.

        True when this process ran it (successfully or not). Never raises: a database that
        refuses the claim is logged, and the next firing tries again.
        """
        now = self.clock.now_ms()
        period_end = (now // job.period_ms + 1) * job.period_ms
        try:
            won = maintenance_runs.claim(self.engine, job.name, self.holder, now, period_end,
                                         job.busy_ms, job.period_ms)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("maintenance %s: could not claim this period (the next firing "
                        "retries): %s", job.name, exc)
            return False
        if not won:
            return False
        started = time.perf_counter()
        error: str | None = None
        try:
            job.run()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.failed[job.name] += 1
            if isinstance(exc, sa.exc.SQLAlchemyError):
                log.warning("maintenance %s failed (the next period retries): %s",
                            job.name, exc)
            else:
                log.exception("maintenance %s failed (the next period retries)", job.name)
        self.ran[job.name] += 1
        log.debug("maintenance %s ran in %.3f s", job.name, time.perf_counter() - started)
        try:
            if not maintenance_runs.finish(self.engine, job.name, self.holder, now,
                                           self.clock.now_ms(), error):
                log.warning("maintenance %s: the run took longer than %g s and another "
                            "process has taken the job over", job.name, job.busy_ms / 1000)
        except sa.exc.SQLAlchemyError as exc:  # the busy time lapses by itself
            log.warning("maintenance %s: could not record the end of the run: %s",
                        job.name, exc)
        return True

    def schedule(self, scheduler: Any, jobs: Sequence[MaintenanceJob],
                 rng: random.Random | None = None) -> None:
        """Add each job to ``scheduler`` as an interval job firing :meth:`fire`, at a random
        phase inside the period (10-90 % of it): away from the period's edges, so a firing
        delayed by a few milliseconds stays in its period, and the samplers' firings are
        spread over the period rather than lined up."""
        rng = rng or random.Random()
        now_s = time.time()  # the scheduler's own (wall) time, not the injected clock
        for job in jobs:
            phase = rng.uniform(PHASE_LOW, PHASE_HIGH) * job.period_s
            start = now_s // job.period_s * job.period_s + phase
            scheduler.add_job(self.fire, "interval", seconds=job.period_s, args=[job],
                              start_date=datetime.fromtimestamp(start, UTC),
                              id=job.job_id, name=job.description, max_instances=1,
                              coalesce=True, replace_existing=True)


__all__ = ["FleetMaintenance", "MaintenanceJob", "holder_id"]
