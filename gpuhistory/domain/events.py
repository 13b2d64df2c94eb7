"""Event kinds of the append-only log, and the draft an event starts as."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    STATE_CHANGE = "state_change"
    THROTTLE = "throttle"
    RESUME = "resume"
    CRITICAL = "critical"
    OVERHEAT = "overheat"
    GPU_LOST = "gpu_lost"
    GPU_FOUND = "gpu_found"
    SERVICE_STARTED = "service_started"
    SERVICE_STOPPED = "service_stopped"
    MONITORING_STARTED = "monitoring_started"
    MONITORING_STOPPED = "monitoring_stopped"
    CONFIG_CHANGED = "config_changed"
    LEASE_GRANTED = "lease_granted"
    LEASE_RENEWED = "lease_renewed"
    LEASE_RELEASED = "lease_released"
    LEASE_EXPIRED = "lease_expired"
    LEASE_EXCEEDED = "lease_exceeded"
    UNLEASED_USAGE = "unleased_usage"
    PROCESS_STARTED = "process_started"
    PROCESS_EXITED = "process_exited"
    XID = "xid"
    BACKEND_ERROR = "backend_error"
    READING_INVALID = "reading_invalid"
    READING_VALID = "reading_valid"
    STORAGE_RECOVERED = "storage_recovered"
    TICKS_DROPPED = "ticks_dropped"
    CLOCK_JUMPED = "clock_jumped"


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event before it has an id: what classification or a command produced."""

    kind: EventKind
    ts_ms: int
    gpu_index: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)
