"""The HTTP server the service runs its WSGI app on: the one place that picks it.

Waitress (pure Python, threads, no extra process), with strict request framing
(``framing``) and connection limits (``limits``) added. ``HttpServer`` is all the rest of
the code sees: build it, ``run()`` it in one thread, ``stop()`` it from another, or let
SIGTERM's ``SystemExit`` end ``run()``.
"""

from __future__ import annotations

import logging
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.task import ThreadedTaskDispatcher

from gpuhistory.wsgi.limits import GuardedServer
from gpuhistory.wsgi.settings import ConnectionLimits

log = logging.getLogger(__name__)

IDENT = "gpuhistory"


class HttpServer:
    """A WSGI app served on ``bind``:``port`` (port 0: a free one) by ``threads`` worker
    threads, within ``limits``. Every address ``bind`` resolves to gets a listener; the
    limits count their connections together."""

    def __init__(self, app: Any, bind: str, port: int, threads: int,
                 limits: ConnectionLimits | None = None) -> None:
        self.limits = limits or ConnectionLimits()
        self.adj = Adjustments(
            host=bind, port=port, threads=threads, ident=IDENT,
            clear_untrusted_proxy_headers=True,
            # waitress's own cap stays above ours, which closes waiting connections first
            connection_limit=self.limits.max_connections + 16,
            channel_timeout=self.limits.idle_timeout,
            cleanup_interval=1,  # the read timeout is checked every second
            asyncore_use_poll=True,  # select() fails beyond 1024 descriptors
            # reading one request ahead lets a long response (the event stream) ask
            # whether its client has gone (environ["waitress.client_disconnected"])
            channel_request_lookahead=1,
        )
        self._map: dict[int, Any] = {}
        self._dispatcher = ThreadedTaskDispatcher()
        self._dispatcher.set_thread_count(threads)
        self._listeners = [
            GuardedServer(app, self._map, dispatcher=self._dispatcher, adj=self.adj,
                          sockinfo=sockinfo, limits=self.limits)
            for sockinfo in self.adj.listen
        ]

    @property
    def port(self) -> int:
        """The port of the first listener (the one chosen when ``port`` was 0)."""
        return int(self._listeners[0].effective_port)

    def run(self) -> None:
        """Serve until ``stop()`` or a ``SystemExit``/``KeyboardInterrupt`` in this thread."""
        try:
            wasyncore.loop(timeout=self.adj.asyncore_loop_timeout, map=self._map,
                           use_poll=self.adj.asyncore_use_poll)
        except (SystemExit, KeyboardInterrupt):
            self._close_all()
        finally:
            self._dispatcher.shutdown()

    def stop(self) -> None:
        """Stop from another thread: the sockets are closed from inside the loop's own
        thread (through its trigger), so it never polls a closed descriptor."""
        try:
            self._listeners[0].trigger.pull_trigger(self._close_all)
        except OSError:  # the loop is already gone
            self._close_all()
        self._dispatcher.shutdown()

    def _close_all(self) -> None:
        wasyncore.close_all(self._map)


def stop_waitress(server: Any) -> None:
    """Stop a plain waitress server (tests, benchmarks) running in another thread: its
    sockets are closed from inside its own loop (through its trigger), so the loop never
    selects on a closed descriptor. ``serve`` runs an ``HttpServer`` (``stop()``)."""
    def close_all() -> None:
        wasyncore.close_all(server._map)

    try:
        server.trigger.pull_trigger(close_all)
    except OSError:  # the loop is already gone
        close_all()
    server.task_dispatcher.shutdown()
