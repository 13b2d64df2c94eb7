"""Leases held to account by the sampler: ``lease_exceeded`` and ``unleased_usage`` events.

Where it runs, and why there: in the sampler's tick, right after the hardware tracker's
process diff is committed (``Sampler._classify``), on each tick that read hardware facts
(every tick at intervals of 1 s or more). That is the one place the processes' *current*
device memory is in hand — the log keeps a process's peak, written only when it changes —
so nothing else could notice an excursion sooner, and nothing is read twice: a scheduler
job would have to read NVML again, or judge by the peaks in the log, on a second timer of
the same cadence. It is at most one tick late: a lease granted or released between ticks
is seen at the next one. Its cost is nothing while no compute process runs on the host;
otherwise one indexed read of the GPUs' active leases, plus one of the running
``gpu_processes`` rows only when a lease names a Slurm job or a container. Its events join
the tick's record: they are written in the tick's transaction (or wait with it while the
database refuses writes), and callbacks see them once committed.

Each event is recorded once per excursion: ``lease_exceeded`` when a lease's group starts
using more than it reserved (again only after it went back within), ``unleased_usage`` when
a GPU starts having unleased memory while its leases are near capacity. After a restart,
an excursion already recorded for a lease still active is not recorded again. Nothing is
ever killed or refused: these are records for people (docs/leases.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gpuhistory.clock import iso_utc
from gpuhistory.domain.config import Config
from gpuhistory.domain.events import EventDraft, EventKind
from gpuhistory.leases.accounting import GpuAccount, LeaseUse, account
from gpuhistory.leases.manager import active_leases
from gpuhistory.leases.model import Lease, lease_capacity_mb
from gpuhistory.sampling.hardware import HardwareFacts
from gpuhistory.sampling.procinfo import Owner
from gpuhistory.storage.log import TickRecord, event_row
from gpuhistory.storage.schema import events, gpu_processes

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Observed:
    """A process on a GPU at this tick: its current memory, and where it runs."""

    pid: int
    used_memory_mib: int | None
    slurm_job_id: str | None = None
    container_id: str | None = None


def _field(row: Any, name: str) -> str | None:
    """A gpu_processes column of a row or a pending insert (None where it is NULL)."""
    mapping = row._mapping if isinstance(row, sa.Row) else row
    value = mapping.get(name)
    return None if value is None else str(value)


def _observed(facts: HardwareFacts, where: Mapping[int, Any]) -> list[Observed]:
    """The fact's processes, one per pid (MIG lists a pid per instance: memory summed),
    with their Slurm job and container: as /proc said this read, else as their
    gpu_processes row recorded them (``where``: pid → row)."""
    memory: dict[int, int | None] = {}
    owners: dict[int, Owner] = {}
    for p in facts.processes or ():
        if p.owner is not None:
            owners.setdefault(p.pid, p.owner)
        if p.pid in memory:
            before = memory[p.pid]
            memory[p.pid] = None if before is None or p.used_memory_mib is None \
                else before + p.used_memory_mib
        else:
            memory[p.pid] = p.used_memory_mib
    out = []
    for pid, mib in memory.items():
        owner, row = owners.get(pid), where.get(pid)
        job = owner.slurm_job_id if owner is not None else None
        container = owner.container_id if owner is not None else None
        if row is not None:
            job = job or _field(row, "slurm_job_id")
            container = container or _field(row, "container_id")
        out.append(Observed(pid, mib, job, container))
    return out


class LeaseWatch:
    """The open excursions of one host's leases and GPUs, and the newest accounts."""

    def __init__(self, engine: sa.Engine, config: Callable[[], Config]) -> None:
        self.engine = engine
        self.config = config
        self.exceeding: dict[int, LeaseUse] = {}  # leases.id → the use that exceeded
        self.unleased: set[int] = set()  # gpus.id with an open unleased excursion
        self.accounts: dict[int, tuple[int, GpuAccount]] = {}  # GPU index → (when, account)
        self.error: str | None = None  # why the last check failed, if it did
        self._restored = False

    def check(self, ts_ms: int, facts: Iterable[HardwareFacts], gpu_ids: Mapping[int, int],
              totals: Mapping[int, int | None], record: TickRecord) -> None:
        """Account each GPU whose process list was read; add the events of excursions that
        start now to ``record``. ``gpu_ids``: index → gpus.id; ``totals``: index → the
        card's memory in MiB. A failure is logged and remembered, never raised."""
        try:
            self._check(ts_ms, facts, gpu_ids, totals, record)
        except Exception as exc:  # accounting never fails a tick
            if self.error is None:
                log.exception("lease accounting failed")
            self.error = f"{type(exc).__name__}: {exc}"
        else:
            self.error = None

    def _check(self, ts_ms: int, facts: Iterable[HardwareFacts], gpu_ids: Mapping[int, int],
               totals: Mapping[int, int | None], record: TickRecord) -> None:
        read = {f.index: f for f in facts if f.processes is not None and f.index in gpu_ids}
        if not read:
            return
        cfg = self.config()
        leases: list[Lease] = []  # no process: nothing can exceed or go unleased
        rows: dict[int, dict[int, Any]] = {}
        if any(f.processes for f in read.values()):
            with self.engine.connect() as conn:
                ids = [gpu_ids[i] for i in read]
                leases = active_leases(conn, ids, ts_ms)
                if not self._restored:
                    self._restore(conn, ids, leases)
                rows = self._attribution(conn, ids, leases, record)
        self._restored = True
        accounts = dict(self.accounts)
        for index, fact in read.items():
            gpu_id = gpu_ids[index]
            mine = [lease for lease in leases if lease.gpu_db_id == gpu_id]
            capacity = lease_capacity_mb(totals.get(index), cfg.memory_limit_mb,
                                         cfg.memory_reserve_mb)
            found = account(mine, _observed(fact, rows.get(gpu_id, {})), capacity,
                            cfg.lease_near_capacity_pct)
            accounts[index] = (ts_ms, found)
            self._leases_of(gpu_id, index, ts_ms, found, record)
            self._unleased_of(gpu_id, index, ts_ms, found, record)
        alive = {lease.id for lease in leases}
        accounted = {gpu_ids[i] for i in read}
        for lease_id in [i for i, use in self.exceeding.items()
                         if i not in alive and use.lease.gpu_db_id in accounted]:
            del self.exceeding[lease_id]  # the lease ended: so did its excursion
        self.accounts = accounts

    def _leases_of(self, gpu_id: int, index: int, ts_ms: int, found: GpuAccount,
                   record: TickRecord) -> None:
        for use in found.leases:
            lease_id = use.lease.id
            assert lease_id is not None
            if not use.exceeded:
                self.exceeding.pop(lease_id, None)
                continue
            if lease_id in self.exceeding:
                self.exceeding[lease_id] = use
                continue
            self.exceeding[lease_id] = use
            payload: dict[str, Any] = {
                "lease_id": lease_id, "allocation_id": use.lease.allocation_id,
                "owner": use.lease.owner, "memory_mb": use.lease.memory_mb,
                "reserved_mib": use.reserved_mib, "used_mib": use.used_mib,
                "pids": list(use.pids), "covers": use.lease.covers.to_dict()}
            if len(use.group) > 1:
                payload["group"] = list(use.group)
            _event(record, gpu_id, index, ts_ms, EventKind.LEASE_EXCEEDED, payload)
            log.warning("lease %r on GPU %d: its processes use %d MiB, %d MiB reserved",
                        use.lease.allocation_id, index, use.used_mib, use.reserved_mib)

    def _unleased_of(self, gpu_id: int, index: int, ts_ms: int, found: GpuAccount,
                     record: TickRecord) -> None:
        if not found.unleased_excursion:
            self.unleased.discard(gpu_id)
            return
        if gpu_id in self.unleased:
            return
        self.unleased.add(gpu_id)
        _event(record, gpu_id, index, ts_ms, EventKind.UNLEASED_USAGE, {
            "unleased_mib": found.unleased_mib, "pids": list(found.unleased_pids),
            "leased_mb": found.leased_mb, "capacity_mb": found.capacity_mb,
            "near_capacity_pct": found.near_capacity_pct})
        log.warning("GPU %d: %d MiB used by processes no lease covers (pids %s) while leases "
                    "hold %d of %d MiB", index, found.unleased_mib, list(found.unleased_pids),
                    found.leased_mb, found.capacity_mb)

    def _attribution(self, conn: sa.Connection, gpu_db_ids: Sequence[int],
                     leases: Sequence[Lease], record: TickRecord) -> dict[int, dict[int, Any]]:
        """gpus.id → pid → the running gpu_processes row (or this tick's pending insert),
        read only when some lease names a Slurm job or a container."""
        if not any(lease.covers.slurm_job or lease.covers.container for lease in leases):
            return {}
        p = gpu_processes.c
        found: dict[int, dict[int, Any]] = {}
        for row in conn.execute(sa.select(gpu_processes).where(
                p.gpu_id.in_(list(gpu_db_ids)), p.ended_ms.is_(None))):
            found.setdefault(row.gpu_id, {})[row.pid] = row
        for pending in record.processes:  # started this tick: not in the table yet
            found.setdefault(pending["gpu_id"], {})[pending["pid"]] = pending
        return found

    def _restore(self, conn: sa.Connection, gpu_db_ids: Sequence[int],
                 leases: Sequence[Lease]) -> None:
        """After a start: excursions the log already records for leases still active stay
        open, so a restart does not record them again."""
        if not leases:
            return
        e = events.c
        since = min(lease.granted_ms for lease in leases)
        by_id = {lease.id: lease for lease in leases}
        rows = conn.execute(sa.select(e.payload).where(
            e.kind == str(EventKind.LEASE_EXCEEDED), e.gpu_id.in_(list(gpu_db_ids)),
            e.ts_ms >= since))
        for (payload,) in rows:
            lease = by_id.get(payload.get("lease_id") if isinstance(payload, dict) else None)
            if lease is not None and lease.id is not None:
                self.exceeding[lease.id] = LeaseUse(
                    lease, int(payload.get("used_mib") or 0),
                    int(payload.get("reserved_mib") or 0), tuple(payload.get("pids") or ()),
                    (lease.allocation_id,))

    def snapshot(self, index: int) -> dict[str, Any] | None:
        """The GPU's newest account, as status and the dashboard show it."""
        newest = self.accounts.get(index)
        if newest is None:
            return None
        ts_ms, found = newest
        return {
            "timestamp": iso_utc(ts_ms),
            "unleased_mib": found.unleased_mib, "unleased_pids": list(found.unleased_pids),
            "unleased_usage": found.unleased_excursion,
            "near_capacity_pct": found.near_capacity_pct,
            "leases": [{"allocation_id": use.lease.allocation_id, "used_mib": use.used_mib,
                        "reserved_mib": use.reserved_mib, "pids": list(use.pids),
                        "exceeded": use.exceeded} for use in found.leases],
        }


def _event(record: TickRecord, gpu_id: int, index: int, ts_ms: int, kind: EventKind,
           payload: dict[str, Any]) -> None:
    draft = EventDraft(kind=kind, ts_ms=ts_ms, gpu_index=index, payload=payload)
    record.events.append(event_row(gpu_id, draft))
    record.drafts.append(draft)
