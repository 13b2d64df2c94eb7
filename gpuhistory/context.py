"""What the web app and the sampler share in one process: the engine, clock, config."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa

from gpuhistory.clock import Clock, SystemClock
from gpuhistory.domain.config import DEFAULT_CONFIG, Config
from gpuhistory.projection import StatusProjection
from gpuhistory.sampling.sampler import Sampler

if TYPE_CHECKING:
    from gpuhistory.config.store import ConfigStore
    from gpuhistory.leases.manager import LeaseManager
    from gpuhistory.storage.file_guard import FileGuard


def machine_name() -> str:
    return socket.gethostname() or "localhost"


@dataclass
class ServiceContext:
    engine: sa.Engine
    host: str = field(default_factory=machine_name)
    clock: Clock = field(default_factory=SystemClock)
    config: Callable[[], Config] = lambda: DEFAULT_CONFIG
    sampler: Sampler | None = None  # None in a process that only serves the API
    config_store: ConfigStore | None = None  # runtime changes; None: ``config`` is fixed
    leases: LeaseManager | None = None
    api_token: str | None = None  # GPUHISTORY_TOKEN: guards every mutating endpoint
    files: FileGuard | None = None  # the SQLite files' watch (None: PostgreSQL, or not serve)
    stream_seconds: float = 300.0  # how long one event-stream response lasts
    # Each open event stream holds one HTTP worker thread; half of them at most, so open
    # dashboards can never starve the API (``serve --threads 8`` → 4 streams).
    max_streams: int = 4
    streams: threading.BoundedSemaphore = field(init=False, repr=False)
    # The latest state of every GPU, kept current from the log (gpuhistory/projection.py):
    # the sampler of this process syncs it after each commit; requests follow the log.
    projection: StatusProjection = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.streams = threading.BoundedSemaphore(max(1, self.max_streams))
        self.projection = StatusProjection(self.engine, self._interval)
        if self.sampler is not None:
            projection, clock = self.projection, self.clock
            self.sampler.committed.append(lambda: projection.sync(clock.now_ms()))

    def _interval(self) -> float:
        """How often an answer follows the log: the sampling interval in force."""
        if self.sampler is not None:
            return self.sampler.interval
        return self.config().monitor_interval
