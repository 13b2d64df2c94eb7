"""What was running and what the hardware did: compute processes, throttle time, XIDs.

A backend that can tell (``read_hardware``) reports one ``HardwareFacts`` per GPU: the
compute processes on it, the card's cumulative throttle-time counters and the XID errors
that arrived since the last call. These move slowly, so the ``HardwareTracker`` compares
them with what the log last recorded and turns only the changes into rows of the tick's
``TickRecord``:

- ``gpu_processes``: one row per (GPU, pid) lifetime, with events ``process_started`` and
  ``process_exited``; the row's ``used_memory_mib`` is the most the process held, its
  ``last_seen_ms`` is refreshed at most once a minute (and when that peak grows); who runs
  it and where (uid, user, Slurm job, container, pod, systemd unit: procinfo.py) is
  written with the row, and again only when it becomes known later;
- ``throttle_counters``: a row only when a counter changed since the last stored row, so an
  idle card writes one baseline row and then nothing;
- ``xid`` events, one per XID error (no table).

The tracker's memory of what is stored changes only after the tick committed
(``commit``), so a failed write is simply computed again on the next tick. ``restore``
reloads it from the log on start, so a restart writes no spurious ``process_started`` and
no duplicate counter row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import sqlalchemy as sa

from gpuhistory.domain.events import EventDraft, EventKind
from gpuhistory.sampling.procinfo import OWNER_COLUMNS, Owner
from gpuhistory.storage.log import TickRecord, event_row
from gpuhistory.storage.schema import gpu_processes, throttle_counters

# The throttle-time counters, as throttle_counters columns, in NVML's cumulative ns.
COUNTER_NAMES: tuple[str, ...] = ("power_cap_ns", "sw_thermal_ns", "hw_thermal_ns",
                                  "power_brake_ns")
# The clock-event reason bit each counter accumulates while set (DESIGN §4, reading.py).
COUNTER_BITS: dict[str, int] = {
    "power_cap_ns": 0x04,  # SwPowerCap
    "sw_thermal_ns": 0x20,  # SwThermalSlowdown
    "hw_thermal_ns": 0x40,  # HwThermalSlowdown
    "power_brake_ns": 0x80,  # HwPowerBrakeSlowdown
}
LAST_SEEN_EVERY_MS = 60_000  # a running process's last_seen_ms is refreshed this often
# Error and energy counters (cumulative, as NVML reports them; kept in memory, not in the
# log): ECC error totals since the driver loaded (volatile) and over the card's life
# (aggregate), remapped memory rows and whether remapping failed, PCIe replays, and the
# energy used since the driver loaded in millijoules.
RELIABILITY_NAMES: tuple[str, ...] = (
    "ecc_volatile_corrected", "ecc_volatile_uncorrected", "ecc_aggregate_corrected",
    "ecc_aggregate_uncorrected", "remapped_rows_correctable", "remapped_rows_uncorrectable",
    "remapped_rows_pending", "remap_failure", "pcie_replays", "energy_mj",
)


class ProcessInfo(NamedTuple):
    """One compute process on one GPU, as the backend saw it."""

    pid: int
    name: str | None = None  # None: the name could not be read (gone, denied, other namespace)
    used_memory_mib: int | None = None  # None: NVML could not say
    owner: Owner | None = None  # who runs it and where; None: nothing could be read

    @property
    def user(self) -> str | None:
        """The user it runs as; None: unknown."""
        return self.owner.user_name if self.owner is not None else None


class Xid(NamedTuple):
    """One XID error: its code and whatever else the source said about it."""

    code: int
    details: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True)
class HardwareFacts:
    """What one GPU's hardware said at one read.

    ``processes`` is None when the list could not be read (unsupported, or the GPU failed
    this time): then nothing is concluded about processes; ``[]`` means none run.
    ``counters`` maps each of ``COUNTER_NAMES`` to nanoseconds or None (unsupported), and
    is None as a whole when no counter could be read. ``reliability`` maps each of
    ``RELIABILITY_NAMES`` to its count or None (unsupported), None as a whole when none is
    known. ``pci_bus_id`` and ``driver_version`` label the GPU where the source knows them.
    """

    index: int
    processes: list[ProcessInfo] | None = None
    counters: dict[str, int | None] | None = None
    xids: list[Xid] = field(default_factory=list)
    reliability: dict[str, int | None] | None = None
    pci_bus_id: str | None = None
    driver_version: str | None = None


@dataclass(frozen=True, slots=True)
class _Running:
    """A process the log records as running (ended_ms IS NULL)."""

    pid: int
    name: str | None
    used_memory_mib: int | None  # the most it held
    last_seen_ms: int  # the last read it was seen in
    written_ms: int  # the last_seen_ms the row holds
    owner: Owner | None = None  # who runs it and where, as the row records it


@dataclass(slots=True)
class HardwareChanges:
    """The tracker's new memory after one tick's facts; applied by ``commit``."""

    running: dict[int, dict[int, _Running]] = field(default_factory=dict)  # gpu_id → pid →
    counters: dict[int, tuple[int | None, ...]] = field(default_factory=dict)  # gpu_id →


def _same_process(known: _Running, seen: ProcessInfo) -> bool:
    """The pid names the same process unless both names, or both uids, are known and
    differ (pid reuse)."""
    if known.name is not None and seen.name is not None and known.name != seen.name:
        return False
    a, b = (None if o is None else o.uid for o in (known.owner, seen.owner))
    return a is None or b is None or a == b


def _peak(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _process_payload(p: _Running | ProcessInfo) -> dict[str, Any]:
    """An event's payload: pid, name, memory, and who runs it and where as far as known
    (named as in the API's process documents: ``user``, ``uid``, ``slurm_job_id``, ...)."""
    known = {("user" if k == "user_name" else k): v
             for k, v in _owner_columns(p.owner).items() if v is not None}
    return {"pid": p.pid, "name": p.name, "used_memory_mib": p.used_memory_mib, **known}


class HardwareTracker:
    """What the log holds about each GPU's processes and counters, and the diff to facts."""

    def __init__(self) -> None:
        self.running: dict[int, dict[int, _Running]] = {}  # gpu_id → pid → process
        self.counters: dict[int, tuple[int | None, ...]] = {}  # gpu_id → last stored row

    # -- restart -----------------------------------------------------------------------
    def restore(self, conn: sa.Connection, gpu_ids: Iterable[int]) -> None:
        """Load the running processes and the last counter row of each GPU from the log."""
        ids = list(gpu_ids)
        if not ids:
            return
        p = gpu_processes.c
        rows = conn.execute(
            sa.select(p.gpu_id, p.pid, p.name, p.used_memory_mib, p.last_seen_ms,
                      *(p[name] for name in OWNER_COLUMNS))
            .where(p.gpu_id.in_(ids), p.ended_ms.is_(None))
        )
        for row in rows:
            self.running.setdefault(row.gpu_id, {})[row.pid] = _Running(
                row.pid, row.name, row.used_memory_mib, row.last_seen_ms, row.last_seen_ms,
                Owner.from_columns(row))
        t = throttle_counters.c
        for gpu_id in ids:
            last = conn.execute(
                sa.select(*(t[name] for name in COUNTER_NAMES))
                .where(t.gpu_id == gpu_id).order_by(t.ts_ms.desc()).limit(1)
            ).first()
            if last is not None:
                self.counters[gpu_id] = tuple(last)

    # -- ticks -------------------------------------------------------------------------
    def diff(
        self,
        facts: Iterable[HardwareFacts],
        gpu_ids: Mapping[int, int],
        ts_by_gpu: Mapping[int, int],
        record: TickRecord,
    ) -> HardwareChanges:
        """Add to ``record`` the rows and events the facts call for.

        ``gpu_ids`` maps GPU index to gpus.id, ``ts_by_gpu`` gpus.id to the time of this
        tick's sample of it: facts are stamped like the sample they go with. Nothing is
        remembered until ``commit`` is given the returned changes (after the transaction).
        """
        changes = HardwareChanges()
        for fact in facts:
            gpu_id = gpu_ids.get(fact.index)
            ts = None if gpu_id is None else ts_by_gpu.get(gpu_id)
            if gpu_id is None or ts is None:
                continue  # no row for this GPU this tick: nothing to attach facts to
            for xid in fact.xids:
                self._event(record, gpu_id, fact.index, ts, EventKind.XID,
                            {"code": xid.code, **xid.details})
            if fact.processes is not None:
                changes.running[gpu_id] = self._diff_processes(
                    record, gpu_id, fact.index, ts, fact.processes)
            if fact.counters is not None:
                values = tuple(fact.counters.get(name) for name in COUNTER_NAMES)
                if any(v is not None for v in values) and values != self.counters.get(gpu_id):
                    record.counters.append({"gpu_id": gpu_id, "ts_ms": ts,
                                            **dict(zip(COUNTER_NAMES, values, strict=True))})
                    changes.counters[gpu_id] = values
        return changes

    def _diff_processes(self, record: TickRecord, gpu_id: int, index: int, ts: int,
                        processes: list[ProcessInfo]) -> dict[int, _Running]:
        known = self.running.get(gpu_id, {})
        seen: dict[int, ProcessInfo] = {}
        for p in processes:  # one pid twice (MIG instances): one process, memory summed
            twice = seen.get(p.pid)
            seen[p.pid] = p if twice is None else twice._replace(
                used_memory_mib=None if p.used_memory_mib is None
                or twice.used_memory_mib is None
                else p.used_memory_mib + twice.used_memory_mib)
        now: dict[int, _Running] = {}
        for pid, old in known.items():
            new = seen.get(pid)
            if new is not None and _same_process(old, new):
                peak = _peak(old.used_memory_mib, new.used_memory_mib)
                current = replace(old, name=old.name or new.name, used_memory_mib=peak,
                                  last_seen_ms=ts, owner=old.owner or new.owner)
                if (peak != old.used_memory_mib or current.name != old.name
                        or current.owner != old.owner
                        or ts - old.written_ms >= LAST_SEEN_EVERY_MS):
                    record.process_updates.append(_update(gpu_id, current, ended_ms=None))
                    current = replace(current, written_ms=ts)
                now[pid] = current
                continue
            record.process_updates.append(_update(gpu_id, old, ended_ms=ts))
            self._event(record, gpu_id, index, ts, EventKind.PROCESS_EXITED,
                        _process_payload(old))
        for pid, new in seen.items():
            if pid in now:
                continue
            record.processes.append({
                "gpu_id": gpu_id, "pid": pid, "name": new.name,
                "used_memory_mib": new.used_memory_mib, "first_seen_ms": ts,
                "last_seen_ms": ts, "ended_ms": None, **_owner_columns(new.owner),
            })
            self._event(record, gpu_id, index, ts, EventKind.PROCESS_STARTED,
                        _process_payload(new))
            now[pid] = _Running(pid, new.name, new.used_memory_mib, ts, ts, new.owner)
        return now

    @staticmethod
    def _event(record: TickRecord, gpu_id: int, index: int, ts: int, kind: EventKind,
               payload: dict[str, Any]) -> None:
        draft = EventDraft(kind=kind, ts_ms=ts, gpu_index=index, payload=payload)
        record.events.append(event_row(gpu_id, draft))
        record.drafts.append(draft)

    def commit(self, changes: HardwareChanges) -> None:
        """Remember what the committed tick stored."""
        self.running.update(changes.running)
        self.counters.update(changes.counters)

    # -- shutdown ----------------------------------------------------------------------
    def last_seen_updates(self) -> tuple[TickRecord, HardwareChanges]:
        """Rows that make each running process's ``last_seen_ms`` exact (on stop)."""
        record, changes = TickRecord(), HardwareChanges()
        for gpu_id, processes in self.running.items():
            stale = {pid: p for pid, p in processes.items() if p.last_seen_ms > p.written_ms}
            if not stale:
                continue
            changes.running[gpu_id] = dict(processes)
            for pid, p in stale.items():
                record.process_updates.append(_update(gpu_id, p, ended_ms=None))
                changes.running[gpu_id][pid] = replace(p, written_ms=p.last_seen_ms)
        return record, changes


def _update(gpu_id: int, p: _Running, ended_ms: int | None) -> dict[str, Any]:
    """A gpu_processes update for the running row of (gpu, pid) (LogStore's bind names)."""
    return {"b_gpu_id": gpu_id, "b_pid": p.pid, "name": p.name,
            "used_memory_mib": p.used_memory_mib, "last_seen_ms": p.last_seen_ms,
            "ended_ms": ended_ms, **_owner_columns(p.owner)}


def _owner_columns(owner: Owner | None) -> dict[str, Any]:
    """The attribution columns of a gpu_processes row (all None: unknown)."""
    return (owner or Owner()).columns()
