"""One sampler per host per database: the claim a sampling process holds on its host.

Two processes sampling the same host into one database would interleave their readings in
the same GPU's history. So ``serve``, ``sampler`` and a sampling ``GPUManager`` first take
the host's claim (a ``sampler_claims`` row): a second one is refused with
:class:`SamplerBusy` (``GPUManager`` then attaches read-only). The holder renews a heartbeat
every HEARTBEAT_SECONDS; a claim whose heartbeat is STALE_AFTER_MS old (six missed
heartbeats), or whose process is gone from this machine, is taken over — so a crashed
sampler never locks its host out.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from gpuhistory import __version__
from gpuhistory.clock import Clock, iso_utc
from gpuhistory.storage import claims
from gpuhistory.storage.claims import ClaimRow

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5
STALE_AFTER_MS = 6 * HEARTBEAT_SECONDS * 1000
CLAIM_JOB_ID = "sampler-claim"


class SamplerBusy(RuntimeError):
    """Another live process samples this host into this database."""

    def __init__(self, host: str, holder: ClaimRow, now_ms: int) -> None:
        age = max(0.0, (now_ms - holder.heartbeat_ms) / 1000)
        super().__init__(
            f"host {host!r} is already sampled into this database by {holder.process} "
            f"(pid {holder.pid} on {holder.node}, since {iso_utc(holder.acquired_ms)}, "
            f"heartbeat {age:.0f} s ago): one sampler per host and database. Stop it, or "
            f"run the api role beside it, or sample another host with --host-name; a claim "
            f"without a heartbeat for {STALE_AFTER_MS // 1000} s is taken over.")
        self.holder = holder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class SamplerClaim:
    """This process's claim on ``host`` (taken by :meth:`acquire`, renewed by the
    scheduler job :meth:`attach` adds, given back by :meth:`release`)."""

    def __init__(self, engine: sa.Engine, host: str, clock: Clock, process: str) -> None:
        self.engine = engine
        self.host = host
        self.clock = clock
        self.process = process
        self.owner = uuid.uuid4().hex
        self.node = socket.gethostname()[:255]
        self.held = False
        self.on_lost: Callable[[], Any] | None = None

    def _row(self) -> ClaimRow:
        now = self.clock.now_ms()
        return ClaimRow(self.host, self.owner, self.node, os.getpid(), self.process, now, now,
                        STALE_AFTER_MS, __version__)

    def try_acquire(self) -> ClaimRow | None:
        """Take the claim; returns the live holder when another process has it."""
        holder = claims.take(self.engine, self._row(), dead_pid=None)
        if holder is not None and holder.node == self.node and not _pid_alive(holder.pid):
            log.warning("taking over the sampler claim of host %s from pid %d, which is "
                        "gone", self.host, holder.pid)
            holder = claims.take(self.engine, self._row(), dead_pid=holder.pid)
        self.held = holder is None
        return holder

    def acquire(self) -> None:
        """Take the claim or raise SamplerBusy."""
        holder = self.try_acquire()
        if holder is not None:
            raise SamplerBusy(self.host, holder, self.clock.now_ms())

    def renew(self) -> bool:
        """The heartbeat; when the claim was taken over meanwhile, stop sampling."""
        if not self.held:
            return False
        try:
            if claims.renew(self.engine, self.host, self.owner, self.clock.now_ms()):
                return True
        except sa.exc.SQLAlchemyError as exc:  # an outage: the claim may go stale; retry
            log.warning("could not renew the sampler claim of %s: %s", self.host, exc)
            return True
        self.held = False
        log.error("the sampler claim of host %s was taken over by another process (this one "
                  "missed its heartbeats); sampling stops here", self.host)
        if self.on_lost is not None:
            self.on_lost()
        return False

    def attach(self, scheduler: Any) -> None:
        scheduler.add_job(self.renew, "interval", seconds=HEARTBEAT_SECONDS, id=CLAIM_JOB_ID,
                          name="renew the sampler claim", max_instances=1, coalesce=True,
                          replace_existing=True)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            claims.give_back(self.engine, self.host, self.owner)
        except sa.exc.SQLAlchemyError as exc:  # it goes stale by itself
            log.warning("could not give back the sampler claim of %s: %s", self.host, exc)


__all__ = ["HEARTBEAT_SECONDS", "STALE_AFTER_MS", "SamplerBusy", "SamplerClaim"]
