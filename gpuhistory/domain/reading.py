"""One GPU's reading at one tick, as every backend reports it."""

from __future__ import annotations

from dataclasses import dataclass, field

# NVML clock-event (throttle) reason bits, named as NVML names them.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x0001: "GpuIdle",
    0x0002: "ApplicationsClocksSetting",
    0x0004: "SwPowerCap",
    0x0008: "HwSlowdown",
    0x0010: "SyncBoost",
    0x0020: "SwThermalSlowdown",
    0x0040: "HwThermalSlowdown",
    0x0080: "HwPowerBrakeSlowdown",
    0x0100: "DisplayClockSetting",
}


def clock_event_reason_names(mask: int | None) -> list[str]:
    """Names of the bits set in an NVML clock-event reasons mask (unknown bits as hex)."""
    if not mask:
        return []
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    if unknown:
        names.append(f"0x{unknown:x}")
    return names


@dataclass(frozen=True, slots=True)
class GpuIdentity:
    """Slow-moving facts about a device, read once per (re)discovery."""

    index: int
    uuid: str
    name: str | None = None
    memory_total_mib: int | None = None
    power_limit_w: float | None = None
    slowdown_temp_c: int | None = None
    shutdown_temp_c: int | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    """What one GPU said at one tick.

    Every measurement is nullable: data-centre cards answer NOT_SUPPORTED for some fields
    (fan), consumer cards for others. ``available`` is False when the GPU is lost or NVML
    is failing for it; then ``error`` says why and the measurements are None.

    Memory is as ``nvidia-smi`` shows it: ``memory_used_mib`` without what the driver
    reserves, ``memory_reserved_mib`` that reservation (None where unknown: NVML's v1 memory
    info, which counts it as used, or a source that does not say); free is total - reserved
    - used (see ``memory_free_mib``).
    """

    index: int
    uuid: str | None = None
    name: str | None = None
    available: bool = True
    error: str | None = None
    temperature_c: int | None = None
    memory_temperature_c: int | None = None
    memory_used_mib: int | None = None
    memory_total_mib: int | None = None
    utilization_pct: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    clock_event_reasons: int | None = None
    pstate: int | None = None
    fan_pct: int | None = None
    memory_reserved_mib: int | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def memory_free_mib(self) -> int | None:
        """Free device memory as ``nvidia-smi`` shows it: total - reserved - used."""
        if self.memory_used_mib is None or self.memory_total_mib is None:
            return None
        return max(0, self.memory_total_mib - (self.memory_reserved_mib or 0)
                   - self.memory_used_mib)

    @property
    def memory_percent(self) -> float | None:
        if self.memory_used_mib is None or not self.memory_total_mib:
            return None
        return 100.0 * self.memory_used_mib / self.memory_total_mib


def unavailable(index: int, error: str, uuid: str | None = None) -> Reading:
    """A reading for a GPU that could not be read this tick."""
    return Reading(index=index, uuid=uuid, available=False, error=error)
