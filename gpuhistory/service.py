"""The long-running processes of three roles, their parts built by ``assembly.build``.

- ``both`` (``serve``): the sampler, the lease reaper, rollups, the incident detector,
  retention and the WSGI app in one process.
- ``sampler`` (``gpuhistory sampler``): the scheduler only; no HTTP server. One per host.
- ``api`` (``gpuhistory api``): the WSGI app only; no scheduler, no backend, no NVML. Any
  number may serve one database; runtime config changes reach the sampler as events.

SIGTERM or SIGINT stops the scheduler (the tick in flight finishes and is committed), logs
``monitoring_stopped`` and ``service_stopped``, then closes the HTTP server. When the
database refuses those last writes (disk full, files lost), each refusal is logged as one
error line and ``unsaved`` says so: the CLI then exits with EXIT_UNSAVED.

On SQLite a FileGuard (storage/file_guard.py) watches the database and WAL files: once one
is deleted or replaced, writes are refused and /healthz says why.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

import sqlalchemy as sa

from gpuhistory.assembly import (  # noqa: F401  (re-exported: the CLI, tests, benchmarks)
    INCIDENTS_EVERY_SECONDS,
    INCIDENTS_JOB_ID,
    INCIDENTS_MAX_SECONDS,
    REAP_EVERY_SECONDS,
    REAP_JOB_ID,
    RETENTION_EVERY_SECONDS,
    RETENTION_JOB_ID,
    RETENTION_MAX_SECONDS,
    ROLLUP_EVERY_SECONDS,
    ROLLUP_JOB_ID,
    ROLLUP_MAX_SECONDS,
    SAMPLER_POOL_SIZE,
    SERVICE_ROLES,
    Parts,
    ServeSettings,
    build,
    pool_settings,
)
from gpuhistory.clock import Clock
from gpuhistory.domain.events import EventDraft, EventKind
from gpuhistory.sampling.control import should_monitor
from gpuhistory.storage.engine import unavailable_reason
from gpuhistory.wsgi.server import HttpServer
from gpuhistory.wsgi.server import stop_waitress as stop_waitress  # tests, benchmarks

log = logging.getLogger(__name__)

ROLES = SERVICE_ROLES
EXIT_UNSAVED = 75  # stopped, but the database refused the final writes (EX_TEMPFAIL)


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Service:
    """Everything one role runs, built but not started (tests start and stop it).

    ``role`` is ``both`` (scheduler and HTTP), ``sampler`` (scheduler only) or ``api``
    (HTTP only); parts a role does not run are ``None``.
    """

    def __init__(self, settings: ServeSettings, clock: Clock | None = None,
                 role: str = "both", **inject: Any) -> None:
        """``inject``: ``build``'s engine, backend or static configuration (tests)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        self.settings = settings
        self.role = role
        self.parts: Parts = build(settings, role, clock=clock, **inject)
        p = self.parts
        self.clock, self.engine, self.files, self.host = p.clock, p.engine, p.files, p.host
        assert p.store is not None and p.leases is not None  # every service role has them
        self.config, self.store, self.leases = p.config, p.store, p.leases
        self.webhooks = p.static.webhooks
        self.alerts = p.alerts  # only where the scheduler runs
        self.backend, self.pipeline, self.sampler = p.backend, p.pipeline, p.sampler
        self.scheduler, self.claim = p.scheduler, p.claim
        self.rollups, self.incidents, self.retention = p.rollups, p.incidents, p.retention
        self.maintenance, self.maintenance_jobs = p.maintenance, p.maintenance_jobs
        self.context, self.app = p.context, p.app
        self.unsaved: list[str] = []  # what shutdown could not write (see EXIT_UNSAVED)
        self._server: HttpServer | None = None
        self._stopping = threading.Event()

    pool_settings = staticmethod(pool_settings)

    @property
    def samples(self) -> bool:
        """Whether this role runs the scheduler (sampling, reaper, rollups, ...)."""
        return self.role in ("both", "sampler")

    @property
    def serves_http(self) -> bool:
        return self.role in ("both", "api")

    def _event(self, kind: EventKind, **payload: object) -> None:
        self.store.append_events([EventDraft(kind=kind, ts_ms=self.clock.now_ms(),
                                             payload=payload)])

    def schedule_jobs(self) -> None:
        """Add every background job to the scheduler, not started (``Parts.schedule_jobs``)."""
        self.parts.schedule_jobs()

    def start_background(self) -> None:
        """Start the scheduler (``schedule_jobs``'s jobs), and sampling unless stopped by
        request. Nothing in the ``api`` role."""
        if self.scheduler is None or self.sampler is None:
            return
        assert self.claim is not None
        if not self.claim.held:
            self.claim.acquire()  # SamplerBusy: another process samples this host
        self.schedule_jobs()
        self.scheduler.start()
        if should_monitor(self.engine):
            self.sampler.start()
        else:
            log.warning("monitoring stays stopped: it was stopped over the API; "
                        "POST /api/gpu/monitoring/start (to a serve process) resumes it")

    def run(self) -> None:
        """Run until SIGTERM/SIGINT (or ``stop()``); then shut down cleanly."""
        s = self.settings
        if self.claim is not None and not self.claim.held:
            self.claim.acquire()  # before anything starts: SamplerBusy ends the process
        if self.serves_http:
            self._server = HttpServer(self.app, s.bind, s.port, s.threads,
                                      s.connection_limits())
        started: dict[str, object] = {"pid": os.getpid(), "role": self.role,
                                      "host": self.host}
        if self.backend is not None:
            started["backend"] = self.backend.name
        if self._server is not None:
            started["bind"] = f"{s.bind}:{self.port}"
        self._event(EventKind.SERVICE_STARTED, **started)
        try:
            self.start_background()
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, self._on_signal)
                signal.signal(signal.SIGINT, self._on_signal)
            self._log_started()
            if self._server is None:
                # Wake twice a second so the signal handler runs promptly in this thread.
                while not self._stopping.wait(0.5):
                    continue
            else:
                try:
                    self._server.run()  # returns on SystemExit from the signal handler
                except (OSError, ValueError):
                    if not self._stopping.is_set():
                        raise
        finally:
            self.shutdown()

    def _log_started(self) -> None:
        s = self.settings
        db = self.engine.url.render_as_string()
        if self.backend is not None:
            what = (f"sampling {len(self.backend.identities())} GPU(s) "
                    f"(backend {self.backend.name}, host {self.host}, db {db})")
        else:
            what = f"no sampler in this process (host {self.host}, db {db})"
        if self._server is not None:
            command = "serve" if self.role == "both" else self.role
            log.info("gpuhistory %s listening on http://%s:%s; %s", command, s.bind,
                     self.port, what)
        else:
            log.info("gpuhistory sampler running, no HTTP server; %s", what)

    @property
    def port(self) -> int | None:
        return None if self._server is None else self._server.port

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stopping.is_set():
            log.info("received %s again: already stopping", signal.Signals(signum).name)
            return
        log.info("received %s: finishing the tick in flight and stopping",
                 signal.Signals(signum).name)
        self._stopping.set()
        if self._server is not None:
            raise SystemExit(0)  # the server's loop catches it and stops its workers

    def stop(self) -> None:
        """Stop from another thread (tests, embedding)."""
        if self._stopping.is_set() or (self.serves_http and self._server is None):
            return
        self._stopping.set()
        if self._server is not None:
            self._server.stop()

    def shutdown(self) -> None:
        """Stop everything; a database refusing writes keeps nothing from shutting down."""
        if self.sampler is not None:
            self.sampler.stop(reason="service stopping")
            self.unsaved += self.sampler.unsaved
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self.claim is not None:
            self.claim.release()
        if self.alerts is not None:
            self.alerts.close()
        try:
            self._event(EventKind.SERVICE_STOPPED, pid=os.getpid(), role=self.role)
        except (sa.exc.OperationalError, sa.exc.TimeoutError) as exc:
            log.error("could not log service_stopped: the database refuses writes (%s)",
                      unavailable_reason(exc))
            self.unsaved.append("service_stopped")
        except Exception:
            log.exception("could not log service_stopped")
            self.unsaved.append("service_stopped")
        if self.backend is not None:
            self.backend.close()
        self.engine.dispose()
        if self.files is not None:
            self.files.close()
