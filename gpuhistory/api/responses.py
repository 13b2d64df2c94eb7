"""Response models: what each endpoint returns, for the OpenAPI document and its tests."""

from __future__ import annotations

from typing import Any

from flask_openapi3.types import ResponseDict
from pydantic import BaseModel, Field, RootModel

from gpuhistory.api.schemas import ErrorBody

Iso = str | None


class Metrics(BaseModel):
    gpu_id: int
    uuid: str | None
    name: str | None
    timestamp: Iso
    state: str
    load_percent: int | None
    memory_used_mb: int | None
    memory_total_mb: int | None
    memory_percent: float | None = Field(description="memory_used_mb / memory_total_mb, "
                                                     "as nvidia-smi's figures")
    memory_reserved_mb: int | None = Field(description="held back by the driver "
                                                       "(nvidia-smi's Reserved); null where "
                                                       "unknown")
    memory_free_mb: int | None = Field(description="total - reserved - used "
                                                   "(nvidia-smi's Free)")
    temperature_celsius: int | None
    memory_temperature_celsius: int | None
    power_watts: float | None
    power_limit_watts: float | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    clock_event_reasons: list[str]
    clock_event_reasons_mask: int | None
    pstate: int | None
    fan_percent: int | None
    backend: str


class Throttle(BaseModel):
    state: str = Field(description="the raw state of the newest sample")
    effective_state: str = Field(
        description="the state the advice follows: the raw state, or THROTTLED/CRITICAL "
                    "while a cooldown or critical pause after leaving it runs")
    speed_multiplier: float
    should_throttle: bool
    reason: str
    cooldown_remaining_seconds: float


class ThrottleStatus(Throttle):
    gpu_id: int
    uuid: str
    at: Iso


class CardThresholds(BaseModel):
    slowdown_temp_celsius: int | None
    shutdown_temp_celsius: int | None


class Process(BaseModel):
    """A compute process on a GPU: who ran it and where, as far as /proc said (null:
    unknown or unreadable)."""

    pid: int
    name: str | None
    user: str | None = Field(description="the user name (the uid as text without one)")
    uid: int | None = Field(description="the real uid")
    used_memory_mb: int | None = Field(description="the most GPU memory it held (MiB)")
    slurm_job_id: str | None
    slurm_step: str | None = Field(description="0, 1, ... or batch, extern, interactive")
    container_id: str | None = Field(description="Docker, Podman or a pod's container")
    pod_uid: str | None = Field(description="the Kubernetes pod's UID")
    systemd_unit: str | None
    first_seen_at: Iso
    last_seen_at: Iso = Field(description="refreshed at least once a minute while it runs")
    ended_at: Iso
    running: bool


class ProcessOnGpu(Process):
    gpu_id: int
    uuid: str
    host: str


class GpuUse(BaseModel):
    """One card the processes found ran on, and when."""

    gpu_id: int
    uuid: str
    host: str
    first_seen_at: Iso
    last_seen_at: Iso
    ended_at: Iso = Field(description="when the last of them ended (null: one still runs)")
    running: bool
    processes: int = Field(description="process lifetimes found on it")
    peak_process_memory_mb: int | None = Field(
        description="the most memory one of them held (peaks of several processes may "
                    "come at different times, so they are not added up)")


class ProcessList(BaseModel):
    count: int
    truncated: bool = Field(description="more matched than `limit`: the newest are left out")
    gpus: list[GpuUse]
    processes: list[ProcessOnGpu]


class Status(BaseModel):
    gpu_id: int
    uuid: str
    name: str | None
    host: str
    backend: str
    available: bool
    state: str = Field(description="the raw state of the newest sample")
    effective_state: str = Field(
        description="the state the throttle advice follows (throttling.effective_state): "
                    "show this one, and the raw state beside it when they differ")
    timestamp: Iso
    sample_age_seconds: float | None
    metrics: Metrics | None
    throttling: Throttle
    thresholds: CardThresholds
    memory: dict[str, Any] | None = Field(None, description="lease capacity of the GPU (now)")
    monitoring: dict[str, Any] | None = None
    lease_accounting: dict[str, Any] | None = Field(
        None, description="this host's GPUs, now: each active lease's group use against its "
                          "reservation, and the memory no lease covers (docs/leases.md)")
    leases: list[Lease] | None = Field(None, description="with ``at``: leases active then")
    processes: list[Process] = Field(
        description="the compute processes running on it (with ``at``: then), the largest "
                    "first")
    config: dict[str, Any] | None = Field(None, description="with ``at``: config in force then")


class StatusAll(BaseModel):
    host: str = Field(description="the host asked for, or * for every host")
    hosts: list[str] = Field(description="the hosts whose GPUs are listed")
    timestamp: Iso
    count: int
    gpus: list[Status]


class History(BaseModel):
    gpu_id: int
    uuid: str
    host: str
    since: Iso
    until: Iso
    count: int
    samples: list[Metrics]


class HistoryBucket(BaseModel):
    timestamp: Iso = Field(description="the bucket's start")
    samples: int = Field(description="samples in the bucket")
    temperature_min: int | None
    temperature_max: int | None
    temperature_avg: float | None
    memory_used_max_mb: int | None
    load_avg: float | None
    power_avg_watts: float | None
    power_max_watts: float | None
    clock_event_reasons: list[str] = Field(description="every reason seen in the bucket")
    clock_event_reasons_mask: int | None
    state: str = Field(description="the worst state in the bucket")


class HistoryBuckets(BaseModel):
    """The answer with ``resolution`` or ``points``: about ``points`` buckets."""

    gpu_id: int
    uuid: str
    host: str
    since: Iso
    until: Iso
    resolution: str = Field(description="the source used: raw, 1m or 1h")
    bucket_seconds: float
    points: int
    rolled_up_until: Iso = Field(description="rollups are complete before this time; "
                                             "later buckets come from raw samples")
    count: int
    buckets: list[HistoryBucket]


class HistoryAnswer(RootModel[History | HistoryBuckets]):
    """Raw samples (no ``resolution``/``points``), or buckets."""


class Trend(BaseModel):
    gpu_id: int
    uuid: str
    host: str
    since: Iso
    until: Iso
    duration_minutes: float
    samples: int
    min: float | None
    max: float | None
    avg: float | None
    first: float | None
    last: float | None
    slope_c_per_min: float | None
    trend: str
    next_threshold_celsius: float | None
    minutes_to_next_threshold: float | None


class LeaseCovers(BaseModel):
    pids: list[int]
    slurm_job: str | None
    container: str | None


class Lease(BaseModel):
    allocation_id: str
    gpu_id: int
    host: str
    uuid: str | None
    memory_mb: int
    owner: str | None
    ttl_seconds: float | None
    granted_at: Iso
    expires_at: Iso
    released_at: Iso
    release_reason: str | None
    status: str
    expires_in_seconds: float
    covers: LeaseCovers
    lease_token: str | None = Field(None, description="only in the answer to allocate")


class LeaseList(BaseModel):
    count: int
    leases: list[Lease]


class Capacity(BaseModel):
    gpu_id: int
    uuid: str | None
    capacity_mb: int
    leased_mb: int
    available_mb: int
    active_leases: int
    device_total_mb: int | None
    device_used_mb: int | None
    device_free_mb: int | None
    memory_limit_mb: int | None
    memory_reserve_mb: int


class Event(BaseModel):
    id: int
    timestamp: Iso
    kind: str
    gpu_id: int | None
    uuid: str | None
    payload: dict[str, Any]


class EventList(BaseModel):
    count: int
    last_id: int
    events: list[Event]


class ConfigDoc(BaseModel):
    config: dict[str, Any]
    sources: dict[str, str]
    updated_at: Iso = None
    version: int | None = Field(None, description="the configuration's version, as its ETag")


class Monitoring(BaseModel):
    monitoring: bool
    interval_seconds: float
    backend: str | None
    requested_at: Iso = None


class Health(BaseModel):
    status: str = Field(description="ok, degraded (still answering) or down (HTTP 503)")
    host: str
    database: dict[str, Any]
    reasons: list[str] | None = Field(None, description="why degraded or down, one line each")
    last_sample: dict[str, Any] | None = None
    backend: dict[str, Any] | None = None
    monitoring: bool | None = None
    last_tick: dict[str, Any] | None = None
    storage: dict[str, Any] | None = Field(
        None, description="the sampler's writes: ok, reason, waiting_ticks, dropped_ticks")
    freshness: dict[str, Any] | None = Field(
        None, description="whether the samples are current: stale, reason "
        "(monitoring_stopped, sampler_stale), interval_seconds, stale_after_seconds, "
        "last_tick_age_seconds")


class SystemStatus(BaseModel):
    timestamp: Iso
    host: str
    gpu: StatusAll
    cpu: dict[str, Any]
    memory: dict[str, Any]


class IncidentThresholds(BaseModel):
    temp_throttle: float
    hysteresis_c: float
    temp_critical: float


class Incident(BaseModel):
    id: int
    gpu_id: int
    uuid: str
    name: str | None
    host: str
    start: Iso
    end: Iso = Field(description="null while the incident is ongoing")
    ongoing: bool
    duration_seconds: float = Field(description="to the end, or to now while ongoing")
    last_sample_at: Iso
    peak_temperature_celsius: int
    peak_at: Iso
    mean_temperature_celsius: float | None
    sample_count: int = Field(description="samples with a temperature during the incident")
    above_critical_seconds: float
    severity: str = Field(description="overheat, or severe: a sample above temp_critical")
    peak_power_watts: float | None
    clock_event_reasons: list[str]
    clock_event_reasons_mask: int
    thresholds: IncidentThresholds = Field(description="the thresholds it was detected with")
    detected_at: Iso
    updated_at: Iso


class IncidentList(BaseModel):
    count: int
    incidents: list[Incident]


class ReasonSeen(BaseModel):
    name: str
    mask: int
    samples: int
    seconds: float = Field(description="sum of the gaps to each next sample")


class IncidentReport(Incident):
    """The post-mortem of one incident."""

    summary: str
    context_minutes: float
    window: dict[str, Iso]
    card: dict[str, int | None]
    power: dict[str, float | None]
    memory: dict[str, int | None]
    clock_event_reasons_seen: list[ReasonSeen]
    transitions: list[dict[str, Any]]
    leases: list[Lease]
    processes: list[Process] | None = Field(
        description="compute processes alive during it (null: not recorded by this database)")
    throttle_time_seconds: dict[str, float | None] | None = Field(
        description="hardware throttle time accrued, from NVML's counters (null: unknown)")
    xid_errors: list[dict[str, Any]]
    samples_total: int
    samples_stride: int
    samples: list[Metrics]


class FleetGpu(BaseModel):
    """One GPU of a host, compact (``gpus=true``)."""

    gpu_id: int
    uuid: str
    name: str | None
    state: str = Field(description="the raw state of the newest sample")
    effective_state: str = Field(description="the state the throttle advice follows")
    speed_multiplier: float
    cooldown_remaining_seconds: float
    temperature_celsius: int | None
    memory_used_mb: int | None
    memory_total_mb: int | None
    memory_percent: float | None
    power_watts: float | None
    power_limit_watts: float | None
    timestamp: Iso = Field(description="the newest sample")
    sample_age_seconds: float | None
    state_since: Iso = Field(description="the newest state transition (null: none)")
    state_age_seconds: float | None
    leased_mb: int = Field(description="MiB held by active leases")
    capacity_mb: int = Field(description="MiB that can be leased (0 for a recorded card)")


class FleetSampler(BaseModel):
    """The sampler claim a host's sampling process holds."""

    process: str = Field(description="serve, sampler or python")
    node: str = Field(description="the machine the process runs on")
    pid: int
    version: str | None = Field(description="gpuhistory's version in that process "
                                            "(null: a sampler older than the field)")
    acquired_at: Iso
    heartbeat_at: Iso
    heartbeat_age_seconds: float | None
    stale_after_seconds: float = Field(description="a heartbeat older than this: gone")


class FleetLeases(BaseModel):
    active: int = Field(description="active leases on the host's GPUs")
    used_mb: int = Field(description="MiB they hold")
    capacity_mb: int = Field(description="MiB the host's GPUs can lease in all")


class FleetHost(BaseModel):
    host: str
    recorded: bool = Field(description="every GPU known only from imported recordings and "
                                       "no sampler: history, not a live host (never stale)")
    gpu_count: int
    available_gpus: int
    worst_state: str | None = Field(description="the worst effective state of its GPUs")
    worst_raw_state: str | None = Field(description="the worst raw state of its GPUs")
    states: dict[str, int] = Field(description="GPUs per effective state")
    last_tick: Iso = Field(description="the host's newest sample")
    last_tick_age_seconds: float | None
    stale: bool = Field(description="its values are not current: its sampler stopped, "
                                    "died or hangs")
    stale_reason: str | None = Field(
        description="sampler_gone (claim heartbeat too old), monitoring_stopped, "
                    "sampler_stale (no tick for stale_after_seconds), no_sampler (no claim "
                    "and no recent tick)")
    sampler: FleetSampler | None = Field(description="the sampler claim (null: none held)")
    leases: FleetLeases
    gpus: list[FleetGpu] | None = Field(None, description="with gpus=true")


class FleetHosts(BaseModel):
    timestamp: Iso
    interval_seconds: float = Field(description="the configured monitor_interval")
    stale_after_seconds: float = Field(description="no tick for this long: stale")
    count: int
    gpu_count: int
    stale_count: int
    hosts: list[FleetHost]


def errors(*statuses: int) -> ResponseDict:
    """The error responses an endpoint documents (always with the one error shape)."""
    return {status: ErrorBody for status in (*statuses, 503)}
