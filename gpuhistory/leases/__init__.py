"""GPU-memory leases: rows with an expiry that survive restarts and cannot oversubscribe."""

from gpuhistory.leases.manager import LeaseManager, hash_token
from gpuhistory.leases.model import (
    Capacity,
    DuplicateAllocation,
    GpuNotFound,
    Lease,
    LeaseError,
    LeaseNotActive,
    LeaseNotFound,
    LeaseTokenMismatch,
    OverCapacity,
)

__all__ = [
    "Capacity",
    "DuplicateAllocation",
    "GpuNotFound",
    "Lease",
    "LeaseError",
    "LeaseManager",
    "LeaseNotActive",
    "LeaseNotFound",
    "LeaseTokenMismatch",
    "OverCapacity",
    "hash_token",
]
