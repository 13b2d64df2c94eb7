"""The HTTP server's connection settings (``serve``/``api`` flags and GPUHISTORY_* variables;
docs/configuration.md#http-connections). No server imported here: the CLI reads the
defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectionLimits:
    """Bounds on the connections one HTTP server holds (defaults: docs/configuration.md)."""

    max_connections: int = 512
    max_client_connections: int = 128  # 0: no per-client limit (e.g. behind one proxy)
    read_timeout: int = 10  # seconds from a request's first byte to its last
    idle_timeout: int = 60  # seconds without traffic between requests

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_client_connections < 0:
            raise ValueError("connection limits: max_connections >= 1, "
                             "max_client_connections >= 0")
        if self.read_timeout < 1 or self.idle_timeout < 1:
            raise ValueError("connection limits: timeouts are at least 1 second")
