"""What the NVML backend knows about the GPU at one index (one record per handle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpuhistory.sampling.procinfo import Owner


@dataclass
class GpuRecord:
    """The GPU at one index: its handle, identity facts, what it cannot answer, and the
    hardware-facts state carried between reads."""

    index: int
    handle: Any = None  # None: (re)acquire the handle and identity on the next read
    uuid: str | None = None
    name: str | None = None
    memory_total_mib: int | None = None
    power_limit_w: float | None = None
    power_limit_read_ms: int | None = None
    slowdown_temp_c: int | None = None
    shutdown_temp_c: int | None = None
    unsupported: set[str] = field(default_factory=set)  # fields never to ask again
    error: str | None = None
    in_call: str = ""  # the field being read now: names what hung when a call does not return
    # read_hardware: the handle XID events were registered with (None: not yet), why XID
    # events are unavailable, the last hardware read's error, the names of the pids seen.
    xid_handle: Any = None
    xid_note: str | None = None
    hardware_error: str | None = None
    process_details: dict[int, tuple[str | None, Owner | None]] = field(default_factory=dict)
    # Error and energy counters last read (RELIABILITY_NAMES), when; the PCI bus id.
    reliability: dict[str, int | None] = field(default_factory=dict)
    reliability_read_ms: int | None = None
    pci_bus_id: str | None = None
    # The throttle-time counters last read, when the slow ones were, the last reasons mask.
    counters: dict[str, int | None] = field(default_factory=dict)
    slow_counters_read_ms: int | None = None
    last_reasons: int | None = None

    def hung_copy(self, why: str) -> GpuRecord:
        """A fresh record for a GPU whose call hung: the identity facts and what it cannot
        answer, no handle (acquired afresh, and its UUID checked, once the call returns)."""
        return GpuRecord(
            index=self.index, uuid=self.uuid, name=self.name,
            memory_total_mib=self.memory_total_mib, power_limit_w=self.power_limit_w,
            slowdown_temp_c=self.slowdown_temp_c, shutdown_temp_c=self.shutdown_temp_c,
            unsupported=set(self.unsupported), error=why)
