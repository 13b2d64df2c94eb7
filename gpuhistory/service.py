"""``serve``: the sampler and the WSGI app in one process, with a clean shutdown.

SIGTERM or SIGINT stops the scheduler (the tick in flight finishes and is committed), logs
``monitoring_stopped`` and ``service_stopped``, then closes the HTTP server.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
from dataclasses import dataclass
from types import FrameType

from waitress import wasyncore
from waitress.server import create_server

from gpuhistory.api.app import create_app
from gpuhistory.clock import Clock, SystemClock
from gpuhistory.context import ServiceContext, machine_name
from gpuhistory.domain.config import DEFAULT_CONFIG, Config
from gpuhistory.domain.events import EventDraft, EventKind
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.sampler import Sampler
from gpuhistory.sampling.select import select_backend
from gpuhistory.storage.engine import make_engine, upgrade
from gpuhistory.storage.log import LogStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    db: str | None = None
    bind: str = "127.0.0.1"
    port: int = 8321
    backend: str = "auto"
    trace: str | None = None
    sim_gpus: int | None = None
    interval: float | None = None
    host_name: str | None = None
    threads: int = 8


def is_loopback(address: str) -> bool:
    if address in ("localhost", ""):
        return address == "localhost"
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Service:
    """Everything ``serve`` runs, built but not started (tests start and stop it)."""

    def __init__(self, settings: ServeSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.engine = make_engine(settings.db)
        upgrade(self.engine)
        config = DEFAULT_CONFIG
        if settings.interval is not None:
            config = config.changed(monitor_interval=settings.interval)
        self.config: Config = config
        self.host = settings.host_name or machine_name()
        self.store = LogStore(self.engine, self.host)
        self.backend = select_backend(settings.backend, self.clock, settings.trace,
                                      settings.sim_gpus)
        self.pipeline = Pipeline(self.store, self.backend.name, lambda: self.config)
        self.pipeline.restore(self.clock.now_ms())
        self.sampler = Sampler(self.backend, self.pipeline, self.store, self.clock,
                               interval=lambda: self.config.monitor_interval)
        self.context = ServiceContext(engine=self.engine, host=self.host, clock=self.clock,
                                      config=lambda: self.config, sampler=self.sampler)
        self.app = create_app(self.context)
        self._server = None
        self._stopping = threading.Event()

    def _event(self, kind: EventKind, **payload: object) -> None:
        self.store.append_events([EventDraft(kind=kind, ts_ms=self.clock.now_ms(),
                                             payload=payload)])

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or ``stop()``); then shut down cleanly."""
        s = self.settings
        self._server = create_server(self.app, host=s.bind, port=s.port, threads=s.threads,
                                     ident="gpuhistory", clear_untrusted_proxy_headers=True)
        self._event(EventKind.SERVICE_STARTED, pid=os.getpid(), backend=self.backend.name,
                    bind=f"{s.bind}:{s.port}")
        self.sampler.start()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        log.info("gpuhistory serving on http://%s:%s (backend %s, %d GPU(s), db %s)",
                 s.bind, self._server.effective_port, self.backend.name,  # type: ignore[union-attr]
                 len(self.backend.identities()), self.engine.url.render_as_string())
        try:
            self._server.run()  # returns on SystemExit from the signal handler, or stop()
        except (OSError, ValueError):
            if not self._stopping.is_set():
                raise
        finally:
            self.shutdown()

    @property
    def port(self) -> int | None:
        return None if self._server is None else self._server.effective_port  # type: ignore[union-attr]

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stopping.is_set():
            log.info("received %s again: already stopping", signal.Signals(signum).name)
            return
        log.info("received %s: finishing the tick in flight and stopping",
                 signal.Signals(signum).name)
        self._stopping.set()
        raise SystemExit(0)  # waitress's loop catches it and stops its workers

    def stop(self) -> None:
        """Stop from another thread (tests, embedding)."""
        if self._stopping.is_set() or self._server is None:
            return
        self._stopping.set()
        server = self._server
        server.task_dispatcher.shutdown()  # type: ignore[union-attr]
        wasyncore.close_all(server._map)  # type: ignore[union-attr]

    def shutdown(self) -> None:
        self.sampler.stop(reason="service stopping")
        self._event(EventKind.SERVICE_STOPPED, pid=os.getpid())
        self.backend.close()
        self.engine.dispose()
