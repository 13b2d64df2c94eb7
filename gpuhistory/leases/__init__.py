"""GPU-memory leases: rows with an expiry that survive restarts and cannot oversubscribe."""

from gpuhistory.leases.manager import LeaseManager, check_covers, hash_token
from gpuhistory.leases.model import (
    Capacity,
    Covers,
    DuplicateAllocation,
    GpuNotFound,
    Lease,
    LeaseError,
    LeaseNotActive,
    LeaseNotFound,
    LeaseTokenMismatch,
    NoGpuFits,
    OverCapacity,
)

__all__ = [
    "Capacity",
    "Covers",
    "DuplicateAllocation",
    "GpuNotFound",
    "Lease",
    "LeaseError",
    "LeaseManager",
    "LeaseNotActive",
    "LeaseNotFound",
    "LeaseTokenMismatch",
    "NoGpuFits",
    "OverCapacity",
    "check_covers",
    "hash_token",
]
