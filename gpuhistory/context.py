"""What the web app and the sampler share in one process: the engine, clock, config."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from gpuhistory.clock import Clock, SystemClock
from gpuhistory.domain.config import DEFAULT_CONFIG, Config
from gpuhistory.sampling.sampler import Sampler


def machine_name() -> str:
    return socket.gethostname() or "localhost"


@dataclass
class ServiceContext:
    engine: sa.Engine
    host: str = field(default_factory=machine_name)
    clock: Clock = field(default_factory=SystemClock)
    config: Callable[[], Config] = lambda: DEFAULT_CONFIG
    sampler: Sampler | None = None  # None in a process that only serves the API
