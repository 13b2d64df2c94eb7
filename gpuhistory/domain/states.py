"""GPU states, ordered from best to worst, and the throttle multiplier of each."""

from __future__ import annotations

from enum import IntEnum


class GPUState(IntEnum):
    """The seed's states. The integer is what the log stores; higher is worse."""

    OPTIMAL = 0
    NORMAL = 1
    THROTTLED = 2
    CRITICAL = 3
    UNAVAILABLE = 4

    @property
    def label(self) -> str:
        return self.name


SPEED_MULTIPLIER: dict[GPUState, float] = {
    GPUState.OPTIMAL: 1.0,
    GPUState.NORMAL: 0.8,
    GPUState.THROTTLED: 0.5,
    GPUState.CRITICAL: 0.0,
    GPUState.UNAVAILABLE: 0.0,
}
