"""The seed's GPUMetrics: one GPU's reading as every interface prints it (DESIGN §5)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from gpuhistory.clock import iso_utc
from gpuhistory.domain.reading import Reading, clock_event_reason_names
from gpuhistory.domain.states import GPUState


@dataclass(frozen=True, slots=True)
class GPUMetrics:
    """A snapshot with the field names that stay the same in the API, CLI and Python."""

    gpu_id: int
    uuid: str | None
    name: str | None
    timestamp: str | None
    state: str
    load_percent: int | None
    memory_used_mb: int | None
    memory_total_mb: int | None
    memory_percent: float | None
    memory_reserved_mb: int | None  # held back by the driver; None where unknown
    memory_free_mb: int | None  # total - reserved - used, as nvidia-smi shows it
    temperature_celsius: int | None
    memory_temperature_celsius: int | None
    power_watts: float | None
    power_limit_watts: float | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    clock_event_reasons: list[str]
    clock_event_reasons_mask: int | None
    pstate: int | None
    fan_percent: int | None
    backend: str

    @classmethod
    def from_reading(
        cls, reading: Reading, state: GPUState, ts_ms: int | None, backend: str
    ) -> GPUMetrics:
        pct = reading.memory_percent
        return cls(
            gpu_id=reading.index, uuid=reading.uuid, name=reading.name,
            timestamp=iso_utc(ts_ms), state=state.name,
            load_percent=reading.utilization_pct, memory_used_mb=reading.memory_used_mib,
            memory_total_mb=reading.memory_total_mib,
            memory_percent=None if pct is None else round(pct, 2),
            memory_reserved_mb=reading.memory_reserved_mib,
            memory_free_mb=reading.memory_free_mib,
            temperature_celsius=reading.temperature_c,
            memory_temperature_celsius=reading.memory_temperature_c,
            power_watts=None if reading.power_w is None else round(reading.power_w, 1),
            power_limit_watts=reading.power_limit_w,
            sm_clock_mhz=reading.sm_clock_mhz, mem_clock_mhz=reading.mem_clock_mhz,
            clock_event_reasons=clock_event_reason_names(reading.clock_event_reasons),
            clock_event_reasons_mask=reading.clock_event_reasons,
            pstate=reading.pstate, fan_percent=reading.fan_pct, backend=backend,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _FIELDS}
        out["clock_event_reasons"] = list(self.clock_event_reasons)
        return out


_FIELDS = tuple(f.name for f in fields(GPUMetrics))
