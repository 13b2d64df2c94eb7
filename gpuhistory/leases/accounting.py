"""Leases held to account: which processes a lease covers, and what they use. Pure, no I/O.

A process on a GPU is *covered* by an active lease of that GPU when the lease names its
pid, its Slurm job, or its container (the lease's container id equal to the process's, or a
prefix of it of at least ``MIN_CONTAINER_PREFIX`` characters: ``docker ps`` prints 12).

Leases of one GPU that cover a common process are judged together, as one *group*: the
group's processes (those any of its leases covers) use ``used_mib``, its leases reserve
``reserved_mib`` between them, and every lease of the group is *exceeded* while the first
is larger than the second. So two leases of one job on one GPU are not each blamed for the
job's whole use; a lease alone is its own group.

The memory of processes no lease covers is *unleased*. It is an *unleased excursion* while
there is some and the GPU's active leases hold at least ``near_capacity_pct`` % of its lease
capacity: then the unleased memory is eating into what was promised to the leases.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gpuhistory.leases.model import Covers, Lease

MIN_CONTAINER_PREFIX = 12


class ProcessUse(Protocol):
    """What accounting needs of a process on a GPU (a gpu_processes row, a plain object)."""

    @property
    def pid(self) -> int: ...
    @property
    def used_memory_mib(self) -> int | None: ...
    @property
    def slurm_job_id(self) -> str | None: ...
    @property
    def container_id(self) -> str | None: ...


def covered(covers: Covers, process: ProcessUse) -> bool:
    """Whether a lease naming ``covers`` covers ``process`` (see the module docstring)."""
    if process.pid in covers.pids:
        return True
    if covers.slurm_job is not None and process.slurm_job_id == covers.slurm_job:
        return True
    container = process.container_id
    if covers.container is None or container is None:
        return False
    return container == covers.container or (
        len(covers.container) >= MIN_CONTAINER_PREFIX and container.startswith(covers.container))


@dataclass(frozen=True, slots=True)
class LeaseUse:
    """One lease, its group's use and reservation, and whether that use exceeds it."""

    lease: Lease
    used_mib: int  # memory of the group's processes
    reserved_mib: int  # memory the group's leases reserve
    pids: tuple[int, ...]  # the group's processes
    group: tuple[str, ...]  # allocation ids of the group's leases (this one included)

    @property
    def exceeded(self) -> bool:
        return self.used_mib > self.reserved_mib


@dataclass(frozen=True, slots=True)
class GpuAccount:
    """One GPU's leases against its processes at one moment."""

    capacity_mb: int
    leased_mb: int
    leases: tuple[LeaseUse, ...]
    unleased_mib: int
    unleased_pids: tuple[int, ...]
    near_capacity_pct: float

    @property
    def near_capacity(self) -> bool:
        return self.leased_mb * 100 >= self.near_capacity_pct * self.capacity_mb \
            and self.leased_mb > 0

    @property
    def unleased_excursion(self) -> bool:
        return self.unleased_mib > 0 and self.near_capacity

    @property
    def exceeding(self) -> tuple[LeaseUse, ...]:
        return tuple(use for use in self.leases if use.exceeded)


def _mib(process: ProcessUse) -> int:
    return process.used_memory_mib or 0


def account(leases: Sequence[Lease], processes: Iterable[ProcessUse], capacity_mb: int,
            near_capacity_pct: float) -> GpuAccount:
    """Account one GPU: its active ``leases`` against the ``processes`` running on it."""
    procs = list(processes)
    covering = [[i for i, lease in enumerate(leases) if covered(lease.covers, p)]
                for p in procs]
    parent = list(range(len(leases)))  # union-find: leases sharing a process are one group

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for owners in covering:
        for other in owners[1:]:
            parent[root(other)] = root(owners[0])
    used: dict[int, int] = {}
    pids: dict[int, set[int]] = {}
    for p, owners in zip(procs, covering, strict=True):
        if owners:
            group = root(owners[0])
            used[group] = used.get(group, 0) + _mib(p)
            pids.setdefault(group, set()).add(p.pid)
    members: dict[int, list[int]] = {}
    for i in range(len(leases)):
        members.setdefault(root(i), []).append(i)
    uses = []
    for i, lease in enumerate(leases):
        group = root(i)
        uses.append(LeaseUse(
            lease=lease, used_mib=used.get(group, 0),
            reserved_mib=sum(leases[j].memory_mb for j in members[group]),
            pids=tuple(sorted(pids.get(group, ()))),
            group=tuple(leases[j].allocation_id for j in members[group])))
    unleased = [p for p, owners in zip(procs, covering, strict=True) if not owners]
    return GpuAccount(
        capacity_mb=capacity_mb, leased_mb=sum(lease.memory_mb for lease in leases),
        leases=tuple(uses), unleased_mib=sum(_mib(p) for p in unleased),
        unleased_pids=tuple(sorted(p.pid for p in unleased)),
        near_capacity_pct=near_capacity_pct)
