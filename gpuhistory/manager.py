"""``GPUManager``: the seed's in-process Python API, backed by the persistent log.

    from gpuhistory import get_gpu_manager
    manager = get_gpu_manager(db="gpu.db", backend="sim")
    if manager.should_throttle_processing():
        batch = int(batch * manager.get_processing_speed_multiplier())

The method names are the seed's. Every answer comes from the same SQL log the service
writes, so a manager started in a job sees the history the service recorded, and its
allocations are leases other processes honour.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from gpuhistory.assembly import ServeSettings, build
from gpuhistory.callbacks import Callback, make_event
from gpuhistory.clock import Clock
from gpuhistory.documents import Monitoring, history_doc, metrics_doc, status_docs, throttle_doc
from gpuhistory.domain.config import Config
from gpuhistory.domain.metrics import GPUMetrics
from gpuhistory.domain.states import GPUState
from gpuhistory.domain.trend import trend_doc
from gpuhistory.identity import GpuRef, UnknownGpu, resolve_latest
from gpuhistory.leases.model import Covers, LeaseError
from gpuhistory.sampling.claim import HEARTBEAT_SECONDS, SamplerBusy
from gpuhistory.storage.queries import LatestSample, latest_samples, trend_sums

log = logging.getLogger(__name__)


class GPUManager:
    """Monitoring, leases and throttle advice for this machine's GPUs, in this process."""

    def __init__(
        self,
        db: str | os.PathLike[str] | None = None,
        backend: str = "auto",
        trace: str | os.PathLike[str] | None = None,
        sim_gpus: int | None = None,
        config: Mapping[str, Any] | None = None,
        config_file: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        host_name: str | None = None,
    ) -> None:
        settings = ServeSettings(
            db=None if db is None else os.fspath(db), backend=backend,
            trace=None if trace is None else os.fspath(trace), sim_gpus=sim_gpus,
            host_name=host_name, config=dict(config or {}),
            config_file=None if config_file is None else os.fspath(config_file))
        parts = build(settings, "python", clock=clock)
        assert parts.backend is not None and parts.pipeline is not None
        assert parts.sampler is not None and parts.leases is not None
        assert parts.claim is not None and parts.callbacks is not None
        self.clock, self.engine, self.host = parts.clock, parts.engine, parts.host
        self.config_store, self.store = parts.config, parts.store
        self.backend, self.pipeline, self.sampler = parts.backend, parts.pipeline, parts.sampler
        self.callbacks, self.leases = parts.callbacks, parts.leases
        # One sampler per host and database: where a service already samples this host,
        # this manager attaches read-only (it reads the log and leases; it writes no samples).
        self.claim = parts.claim
        holder = self.claim.try_acquire()
        self.read_only = holder is not None
        if holder is not None:
            log.info("GPUManager attached read-only: %s", SamplerBusy(self.host, holder,
                                                                     self.clock.now_ms()))
        self._claim_renewed_ms = self.clock.now_ms()
        self._tokens: dict[str, str] = {}  # allocation id → lease token, for this process

    # -- readings ----------------------------------------------------------------------
    @property
    def config(self) -> Config:
        return self.config_store.current()

    def _fresh(self) -> None:
        """Sample now unless the monitoring job sampled within the interval (never when
        attached read-only)."""
        if self.read_only or not self._keep_claim():
            return
        last = self.sampler.last_success_ms
        if last is None or self.clock.now_ms() - last >= self.config.monitor_interval * 1000:
            self.sampler.tick()

    def _entry(self, gpu_id: int) -> LatestSample | None:
        """The card in slot ``gpu_id`` now (gpuhistory.identity), with its newest sample."""
        with self.engine.connect() as conn:
            try:
                return resolve_latest(conn, GpuRef(gpu_id), self.host, self.clock.now_ms())
            except UnknownGpu:
                return None

    def is_available(self, gpu_id: int | None = None) -> bool:
        """Whether a GPU (any, or ``gpu_id``) answers now."""
        self._fresh()
        latest = self.pipeline.latest
        if gpu_id is not None:
            entry = latest.get(gpu_id)
            return entry is not None and entry.state is not GPUState.UNAVAILABLE
        return any(e.state is not GPUState.UNAVAILABLE for e in latest.values())

    def get_gpu_metrics(self, gpu_id: int = 0) -> GPUMetrics | None:
        """The current reading of a GPU (sampled now if the last sample is stale)."""
        self._fresh()
        latest = self.pipeline.latest.get(gpu_id)
        if latest is None:
            return None
        return GPUMetrics.from_reading(latest.reading, latest.state, latest.ts_ms,
                                       self.backend.name)

    def get_gpu_status(self, gpu_id: int = 0) -> dict[str, Any]:
        """State, metrics, throttle advice and lease capacity, as ``/api/gpu/status``."""
        self._fresh()
        entry = self._entry(gpu_id)
        if entry is None:
            return {"gpu_id": gpu_id, "available": False, "state": GPUState.UNAVAILABLE.name}
        now = self.clock.now_ms()
        held = self.leases.capacity(gpu_id)
        return status_docs([entry], now, self.config,
                           usage={entry.gpu.id: (held.leased_mb, held.active_leases)},
                           monitoring=Monitoring(self.sampler.running, self.sampler.interval,
                                                 entry.gpu.host))[0]

    def get_all_gpus_status(self) -> dict[str, Any]:
        self._fresh()
        with self.engine.connect() as conn:
            indexes = [e.gpu.index for e in latest_samples(conn, self.host,
                                                            now_ms=self.clock.now_ms())]
        gpus = [self.get_gpu_status(i) for i in indexes]
        return {"host": self.host, "count": len(gpus), "gpus": gpus}

    # -- leases ------------------------------------------------------------------------
    def allocate_memory(self, allocation_id: str, memory_mb: int, gpu_id: int | str = 0,
                        ttl_seconds: float | None = None, owner: str | None = None,
                        pids: Sequence[int] = (), slurm_job: str | None = None,
                        container: str | None = None) -> bool:
        """Lease ``memory_mb`` MiB; False when it does not fit or the id is taken.

        ``gpu_id="any"``: placed on a GPU that fits (``leases.get(allocation_id).gpu_id``
        says which). ``pids``, ``slurm_job``, ``container``: the processes it covers.
        """
        if not self.pipeline.gpu_ids:
            self._fresh()  # a first sample registers the GPUs and their memory
        try:
            lease, token = self.leases.grant(allocation_id, memory_mb, gpu_index=gpu_id,
                                             ttl_seconds=ttl_seconds, owner=owner,
                                             covers=Covers(tuple(pids), slurm_job, container))
        except LeaseError:
            return False
        self._tokens[lease.allocation_id] = token
        return True

    def renew_memory(self, allocation_id: str, ttl_seconds: float | None = None) -> bool:
        try:
            self.leases.renew(allocation_id, self._tokens.get(allocation_id),
                              ttl_seconds=ttl_seconds)
        except LeaseError:
            return False
        return True

    def deallocate_memory(self, allocation_id: str) -> bool:
        """Release a lease this manager granted; False when there is no such active lease."""
        try:
            self.leases.release(allocation_id, self._tokens.get(allocation_id))
        except LeaseError:
            return False
        self._tokens.pop(allocation_id, None)
        return True

    def get_available_memory(self, gpu_id: int = 0) -> int:
        """MiB still leasable on the GPU (capacity minus active leases)."""
        self._fresh()
        try:
            return self.leases.capacity(gpu_id).available_mb
        except LeaseError:
            return 0

    # -- advice and history ------------------------------------------------------------
    def _throttle(self, gpu_id: int) -> dict[str, Any]:
        self._fresh()
        entry = self._entry(gpu_id)
        if entry is None:
            return {"speed_multiplier": 0.0, "should_throttle": True}
        with self.engine.connect() as conn:
            return throttle_doc(conn, entry, self.clock.now_ms(), self.config)

    def should_throttle_processing(self, gpu_id: int = 0) -> bool:
        return bool(self._throttle(gpu_id)["should_throttle"])

    def get_processing_speed_multiplier(self, gpu_id: int = 0) -> float:
        return float(self._throttle(gpu_id)["speed_multiplier"])

    def get_temperature_trend(self, duration_minutes: float = 5, gpu_id: int = 0) -> dict:
        entry = self._entry(gpu_id)
        if entry is None:
            return {"samples": 0, "trend": "stable"}
        until = self.clock.now_ms()
        since = until - round(duration_minutes * 60_000)
        with self.engine.connect() as conn:
            sums = trend_sums(conn, entry.gpu.id, since, until)
        return {"gpu_id": gpu_id, "uuid": entry.gpu.uuid, **trend_doc(sums, self.config)}

    def get_metrics_history(self, limit: int | None = None, gpu_id: int = 0,
                            since_ms: int | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` samples (default history_size), oldest first."""
        entry = self._entry(gpu_id)
        if entry is None:
            return []
        with self.engine.connect() as conn:
            doc = history_doc(conn, entry, since_ms, None, limit or self.config.history_size)
        return doc["samples"]

    def latest_metrics(self, gpu_id: int = 0) -> dict[str, Any] | None:
        entry = self._entry(gpu_id)
        return None if entry is None else metrics_doc(entry)

    # -- control -----------------------------------------------------------------------
    def register_callback(self, event_type: str, callback: Callback) -> None:
        """Call ``callback(event)`` on each event of that kind ("*" for all)."""
        self.callbacks.register(event_type, callback)

    def update_config(self, changes: Mapping[str, Any]) -> Config:
        """Validate and apply config changes (persisted as a config_changed event)."""
        config, diff = self.config_store.update(dict(changes), actor="python")
        if diff:
            self.callbacks.dispatch([make_event(None, "config_changed", None,
                                                self.clock.now_ms(), {"changes": diff})])
        return config

    def _keep_claim(self) -> bool:
        """Renew the claim's heartbeat when due; False (now read-only) when it was lost."""
        now = self.clock.now_ms()
        if now - self._claim_renewed_ms >= HEARTBEAT_SECONDS * 1000:
            self._claim_renewed_ms = now
            if not self.claim.renew():
                self.read_only = True
        return not self.read_only

    def start_monitoring(self) -> bool:
        """Start background sampling; False when attached read-only (a service samples)."""
        if self.read_only:
            return False
        started = self.sampler.start(requested_by="python")
        if self.sampler.scheduler is not None:
            self.claim.attach(self.sampler.scheduler)
        return started

    def stop_monitoring(self) -> bool:
        return self.sampler.stop(reason="requested from Python", requested_by="python")

    def close(self) -> None:
        self.sampler.stop(reason="manager closed")
        self.claim.release()
        self.backend.close()
        self.engine.dispose()

    def __enter__(self) -> GPUManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_instance: GPUManager | None = None
_instance_lock = threading.Lock()


def get_gpu_manager(**kwargs: Any) -> GPUManager:
    """The process-wide GPUManager, created on first use with ``kwargs``."""
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = GPUManager(**kwargs)
        return _instance


def reset_gpu_manager() -> None:
    """Close and forget the process-wide manager (tests, reconfiguration)."""
    global _instance
    with _instance_lock:
        if _instance is not None:
            _instance.close()
        _instance = None
