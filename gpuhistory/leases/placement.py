"""Where a lease asked for on ``gpu_id: "any"`` goes: a pure rule over the GPUs' log.

1. A GPU is never chosen when its card is known only from a recording (``recorded``), its
   newest sample says UNAVAILABLE or it has none (``unavailable``), or its *effective*
   state — the state throttle advice acts on — is THROTTLED or CRITICAL: because it is
   (``throttled``, ``critical``) or because it left that state less than
   ``throttle_cooldown_seconds`` / ``critical_pause_seconds`` ago (``cooldown``).
2. Of the others, those whose available lease capacity holds the request, the one with the
   least available capacity wins (best fit: large holes stay free for large requests);
   ties go to the lowest GPU index.

The health part (1) is read before the grant takes its lock; the capacity part (2) is
decided under it, in the grant's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuhistory.domain.config import Config
from gpuhistory.domain.slots import RECORDED_BACKENDS
from gpuhistory.domain.states import GPUState
from gpuhistory.domain.throttle import advise
from gpuhistory.leases.model import Capacity
from gpuhistory.storage.queries import LatestSample

ANY = "any"
RECORDED = "recorded"
UNAVAILABLE = "unavailable"
THROTTLED = "throttled"
CRITICAL = "critical"
COOLDOWN = "cooldown"
OVER_CAPACITY = "over_capacity"


def refusal(entry: LatestSample, now_ms: int, config: Config) -> str | None:
    """Why rule 1 keeps this GPU out of placement now; None when it may be chosen."""
    if entry.gpu.backend in RECORDED_BACKENDS:
        return RECORDED
    state = entry.state if entry.state is not None else GPUState.UNAVAILABLE
    if state is GPUState.UNAVAILABLE:
        return UNAVAILABLE
    effective = GPUState[advise(state, now_ms, config, entry.left_hot_ms,
                                entry.left_critical_ms).effective_state]
    if effective is GPUState.CRITICAL:
        return CRITICAL if state is GPUState.CRITICAL else COOLDOWN
    if effective is GPUState.THROTTLED:
        return THROTTLED if state is GPUState.THROTTLED else COOLDOWN
    return None


def effective_state_name(entry: LatestSample, now_ms: int, config: Config) -> str:
    state = entry.state if entry.state is not None else GPUState.UNAVAILABLE
    return advise(state, now_ms, config, entry.left_hot_ms,
                  entry.left_critical_ms).effective_state


def best_fit(capacities: Sequence[Capacity], memory_mb: int) -> Capacity | None:
    """Rule 2: the fitting GPU with the least available MiB, ties by lowest index."""
    fits = [c for c in capacities if c.available_mb >= memory_mb]
    return min(fits, key=lambda c: (c.available_mb, c.gpu_id), default=None)
