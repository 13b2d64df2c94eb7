"""One way to build the service: ``build(settings, role)`` wires the parts a role runs.

Every process that opens the database builds its parts here, so they are wired alike:

- ``both`` (``serve``): the sampler and its scheduler jobs, and the WSGI app.
- ``sampler`` (``gpuhistory sampler``): the sampler and its jobs; no app, no Flask. Its
  engine keeps SAMPLER_POOL_SIZE connections unless ``db_pool_size`` says otherwise.
- ``api`` (``gpuhistory api``): the WSGI app; no backend, no sampler, no scheduler (the
  NVML backend module is never imported).
- ``python`` (``GPUManager``): a sampler ticked in this process (no scheduler of the
  service's), with the claim ``python``; it attaches read-only while another process holds
  the host's sampler claim (docs/identity.md).
- ``reader`` (the CLI's database commands): the migrated engine and the effective
  configuration, nothing else.

``build`` starts nothing: no thread, no scheduler, no claim taken, no socket opened. The
caller starts what it runs (``Service.run``, ``GPUManager``, a test's ``tick``). Tests
inject the clock, the backend, the engine and the static configuration.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from gpuhistory.clock import Clock, SystemClock
from gpuhistory.config.layers import StaticLayers, load_static
from gpuhistory.config.store import ConfigStore
from gpuhistory.storage.fair_pool import FairQueuePool
from gpuhistory.wsgi.settings import ConnectionLimits

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from gpuhistory.alerts.deliverer import WebhookDeliverer
    from gpuhistory.analytics.incidents import IncidentDetector
    from gpuhistory.analytics.retention import RetentionJob
    from gpuhistory.analytics.rollups import RollupJob
    from gpuhistory.callbacks import CallbackRegistry
    from gpuhistory.context import ServiceContext
    from gpuhistory.leases.manager import LeaseManager
    from gpuhistory.sampling.backend import Backend
    from gpuhistory.sampling.claim import SamplerClaim
    from gpuhistory.sampling.maintenance import FleetMaintenance, MaintenanceJob
    from gpuhistory.sampling.pipeline import Pipeline
    from gpuhistory.sampling.sampler import Sampler
    from gpuhistory.storage.file_guard import FileGuard
    from gpuhistory.storage.log import LogStore

ROLES = ("both", "sampler", "api", "python", "reader")
SAMPLING_ROLES = ("both", "sampler", "python")
HTTP_ROLES = ("both", "api")
SERVICE_ROLES = ("both", "sampler", "api")  # the long-running processes (Service)
# Database connections a ``sampler`` keeps at most (docs/fleet.md#connections): its tick
# writer, jobs and heartbeats take turns on one. The other roles keep the engine's pool.
SAMPLER_POOL_SIZE = 1

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


@dataclass(frozen=True)
class ServeSettings:
    """What a process is built from: the CLI's options, or ``GPUManager``'s arguments."""

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
    config: Mapping[str, Any] | None = None  # static overrides above --interval (Python)
    stream_seconds: float = 300.0  # how long one event-stream response lasts

    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(
            max_connections=self.max_connections,
            max_client_connections=self.max_client_connections,
            read_timeout=self.read_timeout, idle_timeout=self.idle_timeout)

    def overrides(self) -> dict[str, Any]:
        return {"monitor_interval": self.interval, **(self.config or {})}


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


@dataclass
class Parts:
    """The parts of one role, built and not started; those the role lacks are ``None``."""

    role: str
    settings: ServeSettings
    clock: Clock
    engine: sa.Engine
    host: str
    static: StaticLayers
    config: ConfigStore
    files: FileGuard | None = None
    store: LogStore | None = None
    leases: LeaseManager | None = None
    callbacks: CallbackRegistry | None = None
    backend: Backend | None = None
    pipeline: Pipeline | None = None
    sampler: Sampler | None = None
    claim: SamplerClaim | None = None
    scheduler: BackgroundScheduler | None = None
    rollups: RollupJob | None = None
    incidents: IncidentDetector | None = None
    retention: RetentionJob | None = None
    maintenance: FleetMaintenance | None = None
    maintenance_jobs: list[MaintenanceJob] = field(default_factory=list)
    alerts: WebhookDeliverer | None = None
    context: ServiceContext | None = None
    app: Any = None

    def schedule_jobs(self) -> None:
        """Add every background job to the scheduler (not started; none without one).

        This host's own: the sampler claim's heartbeat, the lease reaper (this host's
        leases), webhook delivery (this host's events); the sampling job is added by
        ``Sampler.start``. Fleet-wide, each claimed once per period among all samplers
        (docs/fleet.md#maintenance-in-a-fleet): rollups, incident detection, retention.
        """
        if self.scheduler is None:
            return
        assert self.claim is not None and self.leases is not None
        assert self.maintenance is not None
        self.claim.attach(self.scheduler)
        self.scheduler.add_job(self.leases.reap, "interval", seconds=REAP_EVERY_SECONDS,
                               id=REAP_JOB_ID, name="expire overdue leases",
                               max_instances=1, coalesce=True, replace_existing=True)
        self.maintenance.schedule(self.scheduler, self.maintenance_jobs)
        if self.alerts is not None:
            self.alerts.start(self.scheduler)  # webhooks: docs/alerts.md


def build(settings: ServeSettings, role: str = "both", *, clock: Clock | None = None,
          engine: sa.Engine | None = None, backend: Backend | None = None,
          static: StaticLayers | None = None, config_refresh_ms: int = 1000,
          scheduled: bool = True) -> Parts:
    """The parts ``role`` runs, wired, nothing started.

    ``engine``: an open engine to use (migrated here all the same); else one is made from
    ``settings.db`` with the role's pool. ``backend``: the GPUs to sample (else chosen by
    ``settings.backend``). ``static``: the configuration layers (else ``settings``'s file,
    the environment and the overrides). ``scheduled=False`` (tests that tick by hand): a
    sampling role gets no scheduler, jobs or claim, and writes its ticks in the caller.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    from gpuhistory.context import machine_name
    from gpuhistory.storage.engine import make_engine, upgrade

    clock = clock or SystemClock()
    if static is None:
        static = load_static(settings.config_file, overrides=settings.overrides())
    if engine is None:
        engine = make_engine(settings.db, **pool_settings(settings, role))
    upgrade(engine)
    parts = Parts(role=role, settings=settings, clock=clock, engine=engine,
                  host=settings.host_name or machine_name(), static=static,
                  config=ConfigStore(engine, static, clock, refresh_ms=config_refresh_ms))
    if role == "reader":
        return parts
    from gpuhistory.leases.manager import LeaseManager
    from gpuhistory.storage.log import LogStore

    if role in SERVICE_ROLES:
        from gpuhistory.storage.file_guard import FileGuard

        parts.files = FileGuard.attach(engine)
    parts.store = LogStore(engine, parts.host)
    if role == "python":
        from gpuhistory.callbacks import CallbackRegistry

        parts.callbacks = CallbackRegistry()
    parts.leases = LeaseManager(engine, parts.host, clock, parts.config,
                                callbacks=parts.callbacks)
    if role in SAMPLING_ROLES:
        _sampling_parts(parts, backend, scheduled)
    if role in HTTP_ROLES:
        _http_parts(parts)
    return parts


def _sampling_parts(parts: Parts, backend: Backend | None, scheduled: bool) -> None:
    """The backend, pipeline and sampler; for the service's roles, the scheduler with the
    claim and the maintenance jobs."""
    from gpuhistory.sampling.claim import SamplerClaim
    from gpuhistory.sampling.pipeline import Pipeline
    from gpuhistory.sampling.sampler import Sampler

    s, config, store = parts.settings, parts.config, parts.store
    assert store is not None
    if backend is None:
        from gpuhistory.sampling.select import select_backend

        if parts.role == "python":  # GPUManager: NVML's default timeout
            backend = select_backend(s.backend, parts.clock, s.trace, s.sim_gpus)
        else:
            backend = select_backend(s.backend, parts.clock, s.trace, s.sim_gpus,
                                     nvml_timeout=lambda: config().nvml_timeout_seconds)
    parts.backend = backend
    parts.pipeline = Pipeline(store, backend.name, config)
    parts.pipeline.restore(parts.clock.now_ms())
    service = parts.role != "python"
    parts.sampler = sampler = Sampler(
        backend, parts.pipeline, store, parts.clock,
        interval=lambda: config().monitor_interval, callbacks=parts.callbacks,
        background_writes=service and scheduled)
    if service and not scheduled:
        return
    process = {"both": "serve", "sampler": "sampler", "python": "python"}[parts.role]
    parts.claim = SamplerClaim(parts.engine, parts.host, parts.clock, process)
    parts.claim.on_lost = lambda: sampler.stop(reason="sampler claim taken over")
    if service:
        _scheduled_parts(parts)


def _scheduled_parts(parts: Parts) -> None:
    """The service's scheduler, with the sampler attached, the fleet-wide maintenance
    jobs (each claimed once per period) and webhook delivery."""
    from apscheduler.schedulers.background import BackgroundScheduler

    from gpuhistory.alerts.deliverer import WebhookDeliverer
    from gpuhistory.analytics.incidents import IncidentDetector
    from gpuhistory.analytics.retention import RetentionJob
    from gpuhistory.analytics.rollups import RollupJob
    from gpuhistory.sampling.maintenance import FleetMaintenance, MaintenanceJob, holder_id

    engine, clock, config = parts.engine, parts.clock, parts.config
    # Fleet-wide: every GPU in the database, imported hosts' included.
    parts.rollups = rollups = RollupJob(engine, clock)
    parts.incidents = incidents = IncidentDetector(engine, clock, config)
    parts.retention = retention = RetentionJob(engine, clock, config)
    parts.maintenance = FleetMaintenance(engine, clock, holder_id(parts.host))
    parts.maintenance_jobs = [
        MaintenanceJob("rollups", ROLLUP_JOB_ID, "roll samples up into 1m/1h buckets",
                       ROLLUP_EVERY_SECONDS, ROLLUP_MAX_SECONDS,
                       functools.partial(rollups.run, max_seconds=ROLLUP_MAX_SECONDS)),
        MaintenanceJob("incidents", INCIDENTS_JOB_ID, "detect overheat incidents",
                       INCIDENTS_EVERY_SECONDS, INCIDENTS_MAX_SECONDS,
                       functools.partial(incidents.run, max_seconds=INCIDENTS_MAX_SECONDS)),
        MaintenanceJob("retention", RETENTION_JOB_ID, "delete samples past retention",
                       RETENTION_EVERY_SECONDS, RETENTION_MAX_SECONDS,
                       functools.partial(retention.run, max_seconds=RETENTION_MAX_SECONDS)),
    ]
    parts.alerts = WebhookDeliverer(engine, parts.host, parts.static.webhooks, clock)
    parts.scheduler = BackgroundScheduler(timezone="UTC")
    assert parts.sampler is not None
    parts.sampler.attach(parts.scheduler)


def _http_parts(parts: Parts) -> None:
    """The request context and the WSGI app."""
    from gpuhistory.api.app import create_app
    from gpuhistory.context import ServiceContext

    s = parts.settings
    parts.context = ServiceContext(
        engine=parts.engine, host=parts.host, clock=parts.clock, config=parts.config,
        sampler=parts.sampler, config_store=parts.config, leases=parts.leases,
        api_token=s.api_token, max_streams=max(1, s.threads // 2), files=parts.files,
        stream_seconds=s.stream_seconds)
    parts.app = create_app(parts.context)


__all__ = ["ROLES", "SAMPLER_POOL_SIZE", "Parts", "ServeSettings", "build", "pool_settings"]
