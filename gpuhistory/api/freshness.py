"""Are this host's newest samples current? One answer for /healthz, /metrics and the dashboard.

Stale means the newest values must not be served as if they were the GPUs' state now:

- ``monitoring_stopped``: the in-process sampler was stopped (by an operator or on
  shutdown), or is not running and the newest start/stop request in the log is a stop (a
  restart honours it); in an API-only process, that newest request is a stop;
- ``sampler_stale``: sampling should be running but its newest tick (the in-process
  sampler's, else the newest sample of this host in the log) is older than
  ``stale_after(interval)``: the sampler died, hangs or cannot keep up.

A sampler that was never started (ticks driven by hand, as tests and imports do) is not
judged. An API-only process judges with its own configured ``monitor_interval``: give it the
same configuration as the sampler it serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gpuhistory.context import ServiceContext
from gpuhistory.domain.events import EventKind
from gpuhistory.sampling.control import last_request

STALE_INTERVALS = 3  # ticks that may be missed before the samples are stale
STALE_GRACE_S = 2.0  # at least this much beyond one interval (a loaded machine's jitter)
MONITORING_STOPPED = "monitoring_stopped"
SAMPLER_STALE = "sampler_stale"
REASONS = (SAMPLER_STALE, MONITORING_STOPPED)


def stale_after(interval_s: float) -> float:
    """Seconds without a tick after which the samples are stale."""
    return max(STALE_INTERVALS * interval_s, interval_s + STALE_GRACE_S)


@dataclass(frozen=True, slots=True)
class Freshness:
    """The verdict: ``reason`` is None while the samples are current."""

    reason: str | None
    interval_s: float
    tick_age_s: float | None  # seconds since the newest tick (None: none known)

    @property
    def stale(self) -> bool:
        return self.reason is not None

    def sentence(self) -> str:
        """The /healthz reason line: the code first, then what it means."""
        age = ("no tick yet" if self.tick_age_s is None
               else f"the last tick {self.tick_age_s:g} s ago")
        if self.reason == MONITORING_STOPPED:
            return f"{MONITORING_STOPPED}: sampling is stopped ({age}); values are not current"
        return (f"{SAMPLER_STALE}: {age}, interval {self.interval_s:g} s (stale after "
                f"{stale_after(self.interval_s):g} s); values are not current")

    def to_dict(self) -> dict[str, Any]:
        return {"stale": self.stale, "reason": self.reason, "interval_seconds": self.interval_s,
                "stale_after_seconds": stale_after(self.interval_s),
                "last_tick_age_seconds": self.tick_age_s}


def _stop_requested(conn: sa.Connection) -> bool:
    """Whether the newest start/stop an operator asked for is a stop."""
    request = last_request(conn)
    return request is not None and request[0] == str(EventKind.MONITORING_STOPPED)


def judge(c: ServiceContext, conn: sa.Connection, newest_sample_ms: int | None) -> Freshness:
    """The freshness of ``c.host``'s samples now (``newest_sample_ms``: its newest sample)."""
    now = c.clock.now_ms()
    sampler = c.sampler
    if sampler is not None:
        interval = sampler.interval
        tick = sampler.last_tick
        age = None if tick is None else round(max(0, now - tick.ts_ms) / 1000, 3)
        if not sampler.running:  # stopped here, or kept stopped by a request across a restart
            stopped = sampler.stopped_ms is not None or _stop_requested(conn)
            return Freshness(MONITORING_STOPPED if stopped else None, interval, age)
        stale = age is not None and age > stale_after(interval)
        return Freshness(SAMPLER_STALE if stale else None, interval, age)
    interval = c.config().monitor_interval
    age = (None if newest_sample_ms is None
           else round(max(0, now - newest_sample_ms) / 1000, 3))
    if age is None:
        return Freshness(None, interval, None)  # nothing sampled yet: nothing served as current
    if _stop_requested(conn):
        return Freshness(MONITORING_STOPPED, interval, age)
    return Freshness(SAMPLER_STALE if age > stale_after(interval) else None, interval, age)
