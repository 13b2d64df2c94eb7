"""The long-running processes, one construction path for three roles.

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

import functools
import ipaddress
import logging
import os
import signal
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Any

import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler

from gpuhistory.alerts.deliverer import WebhookDeliverer
from gpuhistory.analytics.incidents import IncidentDetector
from gpuhistory.analytics.retention import RetentionJob
from gpuhistory.analytics.rollups import RollupJob
from gpuhistory.api.app import create_app
from gpuhistory.clock import Clock, SystemClock
from gpuhistory.config.layers import load_static
from gpuhistory.config.store import ConfigStore
from gpuhistory.context import ServiceContext, machine_name
from gpuhistory.domain.events import EventDraft, EventKind
from gpuhistory.leases.manager import LeaseManager
from gpuhistory.sampling.claim import SamplerClaim
from gpuhistory.sampling.control import should_monitor
from gpuhistory.sampling.maintenance import FleetMaintenance, MaintenanceJob, holder_id
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.sampler import Sampler
from gpuhistory.sampling.select import select_backend
from gpuhistory.storage.engine import make_engine, unavailable_reason, upgrade
from gpuhistory.storage.fair_pool import FairQueuePool
from gpuhistory.storage.file_guard import FileGuard
from gpuhistory.storage.log import LogStore
from gpuhistory.wsgi.server import HttpServer
from gpuhistory.wsgi.server import stop_waitress as stop_waitress  # tests, benchmarks
from gpuhistory.wsgi.settings import ConnectionLimits

log = logging.getLogger(__name__)

# This host's own jobs, run by its sampler every period.
REAP_JOB_ID = "gpuhistory.reap_leases"
REAP_EVERY_SECONDS = 5
# Fleet-wide jobs, claimed once per period among every sampler on the database
# (sampling/maintenance.py); each run stops after the chunk that passes its budget.
ROLLUP_JOB_ID = "gpuhistory.rollups"
ROLLUP_EVERY_SECONDS = 30
ROLLUP_MAX_SECONDS = 20  # a long catch-up goes on at the next run
INCIDENTS_JOB_ID = "gpuhistory.detect_incidents"
INCIDENTS_EVERY_SECONDS = 10
INCIDENTS_MAX_SECONDS = 8
RETENTION_JOB_ID = "gpuhistory.retention"
RETENTION_EVERY_SECONDS = 3600
RETENTION_MAX_SECONDS = 60

ROLES = ("both", "sampler", "api")
# Database connections a ``sampler`` keeps at most (docs/fleet.md#connections): its tick
# writer, jobs and heartbeats take turns on one. ``serve`` and ``api`` keep the engine's pool.
SAMPLER_POOL_SIZE = 1
EXIT_UNSAVED = 75  # stopped, but the database refused the final writes (EX_TEMPFAIL)


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
    db_pool_size: int | None = None  # None: SAMPLER_POOL_SIZE for sampler, else the default
    config_file: str | None = None
    api_token: str | None = None
    max_connections: int = ConnectionLimits.max_connections
    max_client_connections: int = ConnectionLimits.max_client_connections
    read_timeout: int = ConnectionLimits.read_timeout
    idle_timeout: int = ConnectionLimits.idle_timeout

    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(
            max_connections=self.max_connections,
            max_client_connections=self.max_client_connections,
            read_timeout=self.read_timeout, idle_timeout=self.idle_timeout)


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
                 role: str = "both") -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        self.settings = settings
        self.role = role
        self.clock = clock or SystemClock()
        static = load_static(settings.config_file,
                             overrides={"monitor_interval": settings.interval})
        self.engine = make_engine(settings.db, **self.pool_settings(settings, role))
        upgrade(self.engine)
        self.files = FileGuard.attach(self.engine)
        self.unsaved: list[str] = []  # what shutdown could not write (see EXIT_UNSAVED)
        self.config = ConfigStore(self.engine, static, self.clock)
        self.host = settings.host_name or machine_name()
        self.store = LogStore(self.engine, self.host)
        self.leases = LeaseManager(self.engine, self.host, self.clock, self.config)
        self.webhooks = static.webhooks
        self.alerts: WebhookDeliverer | None = None  # only where the scheduler runs
        self.backend: Any = None
        self.sampler: Sampler | None = None
        self.scheduler: BackgroundScheduler | None = None
        if self.samples:
            self._build_sampler(settings)
        self.context: ServiceContext | None = None
        self.app: Any = None
        if self.serves_http:
            self.context = ServiceContext(
                engine=self.engine, host=self.host, clock=self.clock, config=self.config,
                sampler=self.sampler, config_store=self.config, leases=self.leases,
                api_token=settings.api_token, max_streams=max(1, settings.threads // 2),
                files=self.files,
            )
            self.app = create_app(self.context)
        self._server: HttpServer | None = None
        self._stopping = threading.Event()

    @staticmethod
    def pool_settings(settings: ServeSettings, role: str) -> dict[str, Any]:
        """The engine's pool: ``db_pool_size`` connections and no overflow when set (a
        ``sampler``: SAMPLER_POOL_SIZE unless set), handed out first come, first served
        (storage/fair_pool.py: a tick never waits behind a job's whole run); else the
        engine's default pool."""
        size = settings.db_pool_size
        if size is None and role == "sampler":
            size = SAMPLER_POOL_SIZE
        if size is None:
            return {}
        return {"pool_size": size, "max_overflow": 0, "poolclass": FairQueuePool}

    def _build_sampler(self, settings: ServeSettings) -> None:
        self.backend = select_backend(
            settings.backend, self.clock, settings.trace, settings.sim_gpus,
            nvml_timeout=lambda: self.config().nvml_timeout_seconds)
        self.pipeline = Pipeline(self.store, self.backend.name, self.config)
        self.pipeline.restore(self.clock.now_ms())
        self.sampler = Sampler(self.backend, self.pipeline, self.store, self.clock,
                               interval=lambda: self.config().monitor_interval,
                               background_writes=True)
        # Fleet-wide: every GPU in the database, imported hosts' included.
        self.rollups = RollupJob(self.engine, self.clock)
        self.incidents = IncidentDetector(self.engine, self.clock, self.config)
        self.retention = RetentionJob(self.engine, self.clock, self.config)
        self.maintenance = FleetMaintenance(self.engine, self.clock, holder_id(self.host))
        self.maintenance_jobs = [
            MaintenanceJob("rollups", ROLLUP_JOB_ID, "roll samples up into 1m/1h buckets",
                           ROLLUP_EVERY_SECONDS, ROLLUP_MAX_SECONDS,
                           functools.partial(self.rollups.run, max_seconds=ROLLUP_MAX_SECONDS)),
            MaintenanceJob("incidents", INCIDENTS_JOB_ID, "detect overheat incidents",
                           INCIDENTS_EVERY_SECONDS, INCIDENTS_MAX_SECONDS,
                           functools.partial(self.incidents.run,
                                             max_seconds=INCIDENTS_MAX_SECONDS)),
            MaintenanceJob("retention", RETENTION_JOB_ID, "delete samples past retention",
                           RETENTION_EVERY_SECONDS, RETENTION_MAX_SECONDS,
                           functools.partial(self.retention.run,
                                             max_seconds=RETENTION_MAX_SECONDS)),
        ]
        self.alerts = WebhookDeliverer(self.engine, self.host, self.webhooks, self.clock)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.sampler.attach(self.scheduler)
        self.claim = SamplerClaim(self.engine, self.host, self.clock,
                                  "serve" if self.role == "both" else "sampler")
        sampler = self.sampler
        self.claim.on_lost = lambda: sampler.stop(reason="sampler claim taken over")

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
        """Add every background job to the scheduler (not started yet).

        This host's own: the sampler claim's heartbeat, the lease reaper (this host's
        leases), webhook delivery (this host's events); the sampling job is added by
        ``Sampler.start``. Fleet-wide, each claimed once per period among all samplers
        (docs/fleet.md#maintenance-in-a-fleet): rollups, incident detection, retention.
        """
        if self.scheduler is None:
            return
        self.claim.attach(self.scheduler)
        self.scheduler.add_job(self.leases.reap, "interval", seconds=REAP_EVERY_SECONDS,
                               id=REAP_JOB_ID, name="expire overdue leases",
                               max_instances=1, coalesce=True, replace_existing=True)
        self.maintenance.schedule(self.scheduler, self.maintenance_jobs)
        if self.alerts is not None:
            self.alerts.start(self.scheduler)  # webhooks: docs/alerts.md

    def start_background(self) -> None:
        """Start the scheduler (``schedule_jobs``'s jobs), and sampling unless stopped by
        request. Nothing in the ``api`` role."""
        if self.scheduler is None or self.sampler is None:
            return
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
        if self.samples and not self.claim.held:
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
        if self.samples:
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
