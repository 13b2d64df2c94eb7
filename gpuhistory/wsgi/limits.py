"""Connections that cannot starve the server: a read timeout and connection limits.

Waitress alone stops accepting at its connection limit, and closes only connections idle
for ``channel_timeout``; a client sending one header line every few seconds is never idle,
so 100 such connections leave every later client (``/healthz`` too) waiting in the listen
backlog. Here:

- a request must arrive whole (request line, headers, body) within ``read_timeout``
  seconds of its first byte, else its connection is closed;
- a connection with no request in progress is closed after ``idle_timeout`` seconds
  without traffic (waitress's ``channel_timeout``);
- a client (an IP address) holds at most ``max_client_connections`` connections, and
  all clients together ``max_connections``. A new connection over a limit takes the place
  of the connection that has waited longest for its request (idle, or still sending one);
  connections whose request is queued or running are never closed. Over the per-client
  limit with all of that client's connections busy, the new one is closed; over the total
  limit with all connections busy, new ones wait in the listen backlog.

So connections that send nothing useful are bounded in number and in time, and a client
that sends a whole request is answered (a busy server queues it, never drops it for them).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer

from gpuhistory.wsgi.framing import StrictFramingParser
from gpuhistory.wsgi.settings import ConnectionLimits

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 10.0


class GuardedChannel(HTTPChannel):
    """One client connection, parsed with strict framing; admitted by its server."""

    parser_class = StrictFramingParser

    def __init__(self, server: Any, sock: Any, addr: Any, adj: Any,
                 map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map)
        admit = getattr(server, "admit", None)
        if admit is not None:
            admit(self)

    def waiting_since(self) -> float | None:
        """When this connection began waiting for its request (the request's first byte,
        or its last traffic when idle); None while a request is queued or running, or when
        it is already closing."""
        if self.requests or self.will_close or not self.connected:
            return None
        partial = self.request
        if partial is not None:
            return float(getattr(partial, "started", self.last_activity))
        return float(self.last_activity)


class GuardedServer(TcpWSGIServer):
    """One listening socket. Every listener of an ``HttpServer`` shares one socket map, so
    the limits count the connections of all of them."""

    channel_class = GuardedChannel
    limits = ConnectionLimits()

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        self.limits = limits
        self.closed_counts: Counter[str] = Counter()
        self._last_report = time.monotonic()
        super().__init__(*args, **kwargs)

    def channels(self) -> list[GuardedChannel]:
        return [c for c in list(self._map.values()) if isinstance(c, GuardedChannel)]

    @staticmethod
    def _longest_waiting(channels: list[GuardedChannel],
                         spare: GuardedChannel | None) -> GuardedChannel | None:
        waiting = [(since, id(c), c) for c in channels
                   if c is not spare and (since := c.waiting_since()) is not None]
        return min(waiting)[2] if waiting else None

    def readable(self) -> bool:
        if not super().readable():  # runs maintenance; False when not accepting
            return False
        if len(self._map) < self.limits.max_connections:  # the map also holds listeners
            return True
        channels = self.channels()
        if len(channels) < self.limits.max_connections:
            return True
        return self._longest_waiting(channels, None) is not None  # else: wait in backlog

    def admit(self, new: GuardedChannel) -> None:
        """Make room for ``new`` within the limits, or close it."""
        channels = self.channels()
        per_client = self.limits.max_client_connections
        if per_client:
            same = [c for c in channels if _client(c) == _client(new)]
            if len(same) > per_client:
                if not self._close(self._longest_waiting(same, new), "client_limit"):
                    self._close(new, "client_limit_refused")
                    return
                channels = self.channels()
        if (len(channels) > self.limits.max_connections
                and not self._close(self._longest_waiting(channels, new), "total_limit")):
            self._close(new, "total_limit_refused")

    def _close(self, channel: GuardedChannel | None, why: str) -> bool:
        if channel is None:
            return False
        self.closed_counts[why] += 1
        channel.handle_close()  # this loop's thread; no task uses a waiting connection
        return True

    def maintenance(self, now: float) -> None:
        """Waitress's idle timeout, then the read timeout; report what was closed."""
        super().maintenance(now)
        cutoff = now - self.limits.read_timeout
        for channel in list(self.active_channels.values()):
            partial = channel.request
            if (partial is not None and not channel.requests and not channel.will_close
                    and getattr(partial, "started", now) < cutoff):
                self.closed_counts["read_timeout"] += 1
                channel.will_close = True
        self._report()

    def _report(self) -> None:
        if not self.closed_counts or time.monotonic() - self._last_report < LOG_EVERY_SECONDS:
            return
        log.warning("closed connections over the HTTP limits: %s",
                    ", ".join(f"{why} {n}" for why, n in sorted(self.closed_counts.items())))
        self.closed_counts.clear()
        self._last_report = time.monotonic()


def _client(channel: HTTPChannel) -> str:
    addr = channel.addr
    return str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)
