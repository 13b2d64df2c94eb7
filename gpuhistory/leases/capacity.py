"""What a GPU can lease, from its newest entry and the lease totals (no I/O): the rule of
``LeaseManager`` and of every status answer."""

from __future__ import annotations

from gpuhistory.domain.config import Config
from gpuhistory.domain.slots import RECORDED_BACKENDS
from gpuhistory.leases.model import Capacity, allocatable_mib, lease_capacity_mb
from gpuhistory.storage.queries import LatestSample


def capacity_of(latest: LatestSample, cfg: Config, leased: int, active: int) -> Capacity:
    """The card's lease capacity with ``leased`` MiB held by ``active`` leases."""
    total = latest.gpu.memory_total_mib
    if total is None and latest.reading is not None:
        total = latest.reading.memory_total_mib
    # Used and free as nvidia-smi shows them: the driver's reservation is in neither.
    used = None if latest.reading is None else latest.reading.memory_used_mib
    reserved = None if latest.reading is None else latest.reading.memory_reserved_mib
    # A card known only from a recording is not in the slot now: nothing to lease.
    recorded = latest.gpu.backend in RECORDED_BACKENDS
    return Capacity(
        gpu_id=latest.gpu.index, uuid=latest.gpu.uuid,
        capacity_mb=0 if recorded else lease_capacity_mb(allocatable_mib(total, reserved),
                                                         cfg.memory_limit_mb,
                                                         cfg.memory_reserve_mb),
        leased_mb=int(leased), active_leases=int(active),
        device_total_mb=total, device_used_mb=used,
        device_free_mb=(None if total is None or used is None
                        else max(0, total - (reserved or 0) - used)),
        memory_limit_mb=cfg.memory_limit_mb, memory_reserve_mb=cfg.memory_reserve_mb,
    )
