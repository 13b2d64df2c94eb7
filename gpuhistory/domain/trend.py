"""Temperature trend (DESIGN §3): least-squares slope from SQL aggregates, direction, ETA."""

from __future__ import annotations

from dataclasses import dataclass

from gpuhistory.domain.config import Config


@dataclass(frozen=True, slots=True)
class TrendSums:
    """What the SQL aggregate returns: x in minutes from the window start, y in °C."""

    n: int
    sum_x: float
    sum_y: float
    sum_xx: float
    sum_xy: float
    min: float | None
    max: float | None
    first: float | None
    last: float | None


def slope(s: TrendSums) -> float | None:
    """Least-squares slope in °C per minute (None with fewer than 2 distinct times)."""
    if s.n < 2:
        return None
    denominator = s.n * s.sum_xx - s.sum_x * s.sum_x
    if abs(denominator) < 1e-12:
        return None
    return (s.n * s.sum_xy - s.sum_x * s.sum_y) / denominator


def direction(value: float | None, config: Config) -> str:
    if value is None or abs(value) <= config.trend_threshold_c_per_min:
        return "stable"
    return "rising" if value > 0 else "falling"


def next_threshold(last: float | None, value: float | None, trend: str,
                   config: Config) -> tuple[float | None, float | None]:
    """The threshold the temperature is heading to and the minutes until it gets there."""
    if last is None or value is None or trend == "stable":
        return None, None
    boundaries = sorted({config.temp_optimal, config.temp_normal, config.temp_throttle,
                         config.temp_critical})
    if trend == "rising":
        ahead = [b for b in boundaries if b > last]
        target = ahead[0] if ahead else None
    else:
        behind = [b for b in boundaries if b <= last]
        target = behind[-1] if behind else None
    if target is None:
        return None, None
    return target, round(abs(target - last) / abs(value), 2)


def trend_doc(s: TrendSums, config: Config) -> dict[str, object]:
    value = slope(s)
    trend = direction(value, config)
    target, minutes = next_threshold(s.last, value, trend, config)
    return {
        "samples": s.n,
        "min": s.min, "max": s.max,
        "avg": None if s.n == 0 else round(s.sum_y / s.n, 3),
        "first": s.first, "last": s.last,
        "slope_c_per_min": None if value is None else round(value, 4),
        "trend": trend,
        "next_threshold_celsius": target,
        "minutes_to_next_threshold": minutes,
    }
