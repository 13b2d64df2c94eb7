"""The tunable thresholds and policies (the seed's config keys plus DESIGN §3's), as data.

Each key carries its default, its bounds and its help text; `docs/configuration.md` lists
them and a test fails when one is missing there. Validation is pydantic's, so a bad value
is named with the reason, and the cross-key rule (thresholds strictly increasing) is one
model validator.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Config(BaseModel):
    """Effective monitoring configuration. Immutable: a change makes a new one."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    temp_optimal: float = Field(65, ge=-50, le=150, description="Below this °C a GPU is OPTIMAL.")
    temp_normal: float = Field(75, ge=-50, le=150, description="Below this °C a GPU is NORMAL.")
    temp_throttle: float = Field(
        85, ge=-50, le=150,
        description="Below this °C a GPU is THROTTLED; at or above it, CRITICAL (an overheat).",
    )
    temp_critical: float = Field(
        90, ge=-50, le=150,
        description="Above this °C an overheat incident is severe.",
    )
    memory_optimal: float = Field(70, ge=0, le=100, description="Below this memory % OPTIMAL.")
    memory_normal: float = Field(85, ge=0, le=100, description="Below this memory % NORMAL.")
    memory_critical: float = Field(
        95, ge=0, le=100, description="Below this memory % THROTTLED; at or above, CRITICAL."
    )
    memory_limit_mb: int | None = Field(
        None, ge=1, le=10_000_000,
        description="Cap on leasable MiB per GPU when smaller than the card (unset: the card).",
    )
    memory_reserve_mb: int = Field(
        512, ge=0, le=10_000_000, description="MiB per GPU never handed out as leases."
    )
    monitor_interval: float = Field(
        3, ge=0.1, le=3600, description="Seconds between samples (the sampler's interval)."
    )
    nvml_timeout_seconds: float = Field(
        5, ge=0.05, le=600,
        description="Seconds a tick waits for NVML before a GPU that does not answer is hung.",
    )
    write_buffer_ticks: int = Field(
        300, ge=0, le=100_000,
        description="Ticks kept in memory while the database cannot take writes.",
    )
    history_size: int = Field(
        200, ge=1, le=100_000, description="Default number of samples a history query returns."
    )
    throttle_cooldown_seconds: float = Field(
        30, ge=0, le=86_400,
        description="After leaving THROTTLED, advice stays THROTTLED this long.",
    )
    critical_pause_seconds: float = Field(
        60, ge=0, le=86_400,
        description="After leaving CRITICAL, advice stays CRITICAL (paused) this long.",
    )
    hysteresis_c: float = Field(
        2, ge=0, le=50,
        description="°C below a boundary before a temperature state steps down (0 disables).",
    )
    hysteresis_pct: float = Field(
        2, ge=0, le=50,
        description="Memory % below a boundary before a memory state steps down (0 disables).",
    )
    trend_threshold_c_per_min: float = Field(
        0.5, ge=0, le=100, description="|slope| at or below this °C/min is 'stable'."
    )
    lease_ttl_seconds: float = Field(
        300, ge=1, le=30 * 86_400, description="Default lease lifetime in seconds."
    )
    lease_near_capacity_pct: float = Field(
        90, ge=1, le=100,
        description="Memory used by processes no lease covers is recorded (unleased_usage) "
        "while a GPU's active leases hold at least this % of its lease capacity.",
    )
    incident_merge_seconds: float = Field(
        10, ge=0, le=86_400, description="Overheat runs closer than this are one incident."
    )
    incident_context_minutes: float = Field(
        10, ge=0, le=1440, description="Minutes of samples shown before and after an incident."
    )
    retention_raw_days: float = Field(14, ge=1, le=36_500, description="Days raw samples kept.")
    retention_rollup_days: float = Field(
        365, ge=1, le=36_500, description="Days 1-minute rollups are kept."
    )
    retention_delivery_days: float = Field(
        30, ge=1, le=36_500, description="Days webhook delivery-log rows are kept."
    )
    metrics_dcgm: bool = Field(
        False,
        description="Also serve dcgm-exporter's metric names and labels on /metrics "
        "(for DCGM dashboards).",
    )

    @model_validator(mode="after")
    def _thresholds_increase(self) -> Config:
        problems = []
        if not self.temp_optimal < self.temp_normal < self.temp_throttle <= self.temp_critical:
            problems.append(
                "temperature thresholds must increase: "
                "temp_optimal < temp_normal < temp_throttle <= temp_critical"
            )
        if not self.memory_optimal < self.memory_normal < self.memory_critical:
            problems.append(
                "memory thresholds must increase: "
                "memory_optimal < memory_normal < memory_critical"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def changed(self, **updates: Any) -> Config:
        """A new, validated Config with ``updates`` applied (raises ValidationError)."""
        return Config.model_validate({**self.model_dump(), **updates})


DEFAULT_CONFIG = Config()

__all__ = ["DEFAULT_CONFIG", "Config", "ValidationError"]
