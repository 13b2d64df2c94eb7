"""Throttle advice (DESIGN §3): a pure function of the state and the last cool-down starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpuhistory.domain.classify import effective_state
from gpuhistory.domain.config import Config
from gpuhistory.domain.states import SPEED_MULTIPLIER, GPUState


@dataclass(frozen=True, slots=True)
class ThrottleAdvice:
    state: str
    effective_state: str
    speed_multiplier: float
    should_throttle: bool
    reason: str
    cooldown_remaining_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "effective_state": self.effective_state,
                "speed_multiplier": self.speed_multiplier,
                "should_throttle": self.should_throttle, "reason": self.reason,
                "cooldown_remaining_seconds": self.cooldown_remaining_seconds}


def advise(
    state: GPUState,
    now_ms: int,
    config: Config,
    left_hot_ms: int | None = None,
    left_critical_ms: int | None = None,
) -> ThrottleAdvice:
    """Advice at ``now_ms`` given the GPU's state and when it last left THROTTLED/CRITICAL.

    ``left_hot_ms``: the last time the state dropped from THROTTLED or CRITICAL to NORMAL or
    OPTIMAL; ``left_critical_ms``: the last time it dropped out of CRITICAL.
    """
    throttled_until = (None if left_hot_ms is None
                       else left_hot_ms + round(config.throttle_cooldown_seconds * 1000))
    critical_until = (None if left_critical_ms is None
                      else left_critical_ms + round(config.critical_pause_seconds * 1000))
    effective = effective_state(state, now_ms, throttled_until, critical_until)
    remaining = 0.0
    if state is GPUState.UNAVAILABLE:
        reason = "GPU unavailable: do not schedule work on it"
    elif effective != state and effective is GPUState.CRITICAL and critical_until is not None:
        remaining = (critical_until - now_ms) / 1000
        reason = f"critical pause: {remaining:.0f} s left after leaving CRITICAL"
    elif effective != state and throttled_until is not None:
        remaining = (throttled_until - now_ms) / 1000
        reason = f"throttle cooldown: {remaining:.0f} s left after leaving THROTTLED"
    else:
        reason = {
            GPUState.OPTIMAL: "GPU is OPTIMAL: full speed",
            GPUState.NORMAL: "GPU is NORMAL: slightly reduced speed",
            GPUState.THROTTLED: "GPU is THROTTLED: half speed",
            GPUState.CRITICAL: "GPU is CRITICAL: pause processing",
        }[state]
    multiplier = SPEED_MULTIPLIER[effective]
    return ThrottleAdvice(
        state=state.name, effective_state=effective.name, speed_multiplier=multiplier,
        should_throttle=multiplier < 1.0, reason=reason,
        cooldown_remaining_seconds=round(max(0.0, remaining), 3),
    )
