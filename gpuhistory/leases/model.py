"""What a lease is, what a GPU's lease capacity is, and how lease requests fail.

Plain data with no I/O. Status is computed against a time given by the caller, so an
expired lease stops counting the moment its expiry passes, whether or not the reaper has
recorded it yet. Field names in ``to_dict`` are DESIGN §5's, the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gpuhistory.clock import iso_utc

LeaseStatus = Literal["active", "expired", "released"]
STATUSES: tuple[LeaseStatus, ...] = ("active", "expired", "released")

REASON_RELEASED = "released"
REASON_EXPIRED = "expired"


def seconds(ms: int) -> int | float:
    """Milliseconds as seconds: an int when whole (300, not 300.0)."""
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


@dataclass(frozen=True, slots=True)
class Covers:
    """The processes a lease is held for: pids, a Slurm job, a container (each optional).

    A process on the lease's GPU is covered when its pid is listed, or it belongs to the
    Slurm job, or to the container (docs/leases.md "Covers").
    """

    pids: tuple[int, ...] = ()
    slurm_job: str | None = None
    container: str | None = None

    def __bool__(self) -> bool:
        return bool(self.pids) or self.slurm_job is not None or self.container is not None

    def to_dict(self) -> dict[str, Any]:
        return {"pids": list(self.pids), "slurm_job": self.slurm_job,
                "container": self.container}


@dataclass(frozen=True, slots=True)
class Lease:
    """One lease row, with its GPU named by index and uuid on its host."""

    allocation_id: str
    gpu_id: int  # the GPU's index on its host, as every interface names GPUs
    host: str
    gpu_uuid: str
    memory_mb: int
    owner: str | None
    ttl_seconds: int | float
    granted_ms: int
    expires_ms: int
    released_ms: int | None = None
    release_reason: str | None = None
    id: int | None = None  # leases.id
    gpu_db_id: int | None = None  # gpus.id
    covers: Covers = field(default_factory=lambda: Covers())

    def status(self, now_ms: int) -> LeaseStatus:
        if self.release_reason == REASON_EXPIRED:
            return "expired"
        if self.released_ms is not None:
            return "released"
        return "active" if self.expires_ms > now_ms else "expired"

    def is_active(self, now_ms: int) -> bool:
        return self.status(now_ms) == "active"

    def to_dict(self, now_ms: int, token: str | None = None) -> dict[str, Any]:
        """The lease as JSON; ``lease_token`` only when given (i.e. in the grant answer)."""
        status = self.status(now_ms)
        remaining = max(0, self.expires_ms - now_ms) if status == "active" else 0
        out: dict[str, Any] = {
            "allocation_id": self.allocation_id,
            "gpu_id": self.gpu_id,
            "uuid": self.gpu_uuid,
            "host": self.host,
            "memory_mb": self.memory_mb,
            "owner": self.owner,
            "ttl_seconds": self.ttl_seconds,
            "granted_at": iso_utc(self.granted_ms),
            "expires_at": iso_utc(self.expires_ms),
            "released_at": iso_utc(self.released_ms),
            "release_reason": self.release_reason,
            "status": status,
            "expires_in_seconds": seconds(remaining),
        }
        out["covers"] = self.covers.to_dict()
        if token is not None:
            out["lease_token"] = token
        return out


@dataclass(frozen=True, slots=True)
class Capacity:
    """How much of one GPU's memory can be leased now, and how much is."""

    gpu_id: int  # index on the host
    capacity_mb: int
    leased_mb: int
    active_leases: int
    device_total_mb: int | None
    device_used_mb: int | None
    device_free_mb: int | None
    memory_limit_mb: int | None
    memory_reserve_mb: int
    uuid: str | None = None  # the card in the slot now

    @property
    def available_mb(self) -> int:
        return max(0, self.capacity_mb - self.leased_mb)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu_id": self.gpu_id,
            "uuid": self.uuid,
            "capacity_mb": self.capacity_mb,
            "leased_mb": self.leased_mb,
            "available_mb": self.available_mb,
            "active_leases": self.active_leases,
            "device_total_mb": self.device_total_mb,
            "device_used_mb": self.device_used_mb,
            "device_free_mb": self.device_free_mb,
            "memory_limit_mb": self.memory_limit_mb,
            "memory_reserve_mb": self.memory_reserve_mb,
        }


def allocatable_mib(total_mib: int | None, driver_reserved_mib: int | None) -> int | None:
    """What processes can allocate on a card: its total less what the driver holds back
    (NVML v2's ``reserved``; unknown counts as nothing, and ``memory_reserve_mb`` is the
    operator's margin for it)."""
    if total_mib is None:
        return None
    return max(0, total_mib - (driver_reserved_mib or 0))


def lease_capacity_mb(device_total_mb: int | None, memory_limit_mb: int | None,
                      memory_reserve_mb: int) -> int:
    """min(card, limit if set) - reserve, never below 0; 0 when the card's size is unknown."""
    sizes = [s for s in (device_total_mb, memory_limit_mb) if s is not None]
    if not sizes:
        return 0
    return max(0, min(sizes) - memory_reserve_mb)


# -- errors ----------------------------------------------------------------------------
class LeaseError(Exception):
    """A lease request that cannot be done; carries the HTTP status and error code.

    Messages and details never contain a lease token.
    """

    status: int = 400
    code: str = "lease_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def to_dict(self) -> dict[str, Any]:
        """The body of DESIGN §5's error shape."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class GpuNotFound(LeaseError):
    status, code = 404, "gpu_not_found"

    def __init__(self, gpu_id: int, host: str, message: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message or f"no GPU {gpu_id} is known on host {host!r}",
                         details or {"gpu_id": gpu_id, "host": host})


class LeaseNotFound(LeaseError):
    status, code = 404, "lease_not_found"

    def __init__(self, allocation_id: str) -> None:
        super().__init__(f"no lease with allocation id {allocation_id!r}",
                         {"allocation_id": allocation_id})


class LeaseTokenMismatch(LeaseError):
    status, code = 403, "lease_token_mismatch"

    def __init__(self, allocation_id: str, missing: bool = False) -> None:
        what = "a lease token is required" if missing else "the lease token does not match"
        super().__init__(f"{what} for allocation {allocation_id!r}",
                         {"allocation_id": allocation_id})


class DuplicateAllocation(LeaseError):
    status, code = 409, "duplicate_allocation"

    def __init__(self, allocation_id: str, gpu_id: int | None, expires_at: str | None) -> None:
        super().__init__(
            f"allocation id {allocation_id!r} already has an active lease",
            {"allocation_id": allocation_id, "gpu_id": gpu_id, "expires_at": expires_at},
        )


class OverCapacity(LeaseError):
    status, code = 409, "over_capacity"

    def __init__(self, gpu_id: int, requested_mb: int, capacity: Capacity) -> None:
        super().__init__(
            f"GPU {gpu_id} has {capacity.available_mb} MiB available to lease; "
            f"{requested_mb} MiB requested",
            {"gpu_id": gpu_id, "requested_mb": requested_mb,
             "available_mb": capacity.available_mb, "capacity_mb": capacity.capacity_mb,
             "leased_mb": capacity.leased_mb},
        )


class LeaseNotActive(LeaseError):
    status, code = 409, "lease_not_active"

    def __init__(self, allocation_id: str, status: str) -> None:
        super().__init__(f"the lease {allocation_id!r} is {status}",
                         {"allocation_id": allocation_id, "status": status})


class NoGpuFits(LeaseError):
    """``gpu_id: "any"``: no GPU of the host may take the lease; ``details.gpus`` says why,
    per GPU (its health, or the MiB it has available)."""

    status, code = 409, "no_gpu_fits"

    def __init__(self, host: str, requested_mb: int, gpus: list[dict[str, Any]]) -> None:
        reasons = ", ".join(f"GPU {g['gpu_id']}: {g['reason']}" for g in gpus) or "no GPUs"
        super().__init__(f"no GPU on host {host!r} can take {requested_mb} MiB ({reasons})",
                         {"host": host, "requested_mb": requested_mb, "gpus": gpus})
