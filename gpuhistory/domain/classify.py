"""Classification of readings into states and events: pure functions, no I/O.

The same code runs for live sampling and for ``import``. A GPU's state is the worse of its
temperature state and its memory state (DESIGN §3). A state steps up at once and steps
down only when the value is below the boundary by the hysteresis. Around the state sits
the *effective* state used for throttle advice: not better than THROTTLED for
``throttle_cooldown_seconds`` after leaving THROTTLED (or CRITICAL) for a better state, and
not better than CRITICAL for ``critical_pause_seconds`` after leaving CRITICAL.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import NamedTuple

from gpuhistory.domain.config import Config
from gpuhistory.domain.events import EventDraft, EventKind
from gpuhistory.domain.reading import Reading
from gpuhistory.domain.states import GPUState

_HOT = (GPUState.THROTTLED, GPUState.CRITICAL)
_STATES = tuple(GPUState)  # index → member, without Enum.__call__
_COOL = (GPUState.OPTIMAL, GPUState.NORMAL)


def level(value: float | None, boundaries: tuple[float, float, float]) -> int:
    """Raw level 0..3 of a value against three increasing boundaries (None → 0)."""
    # bisect_right counts the boundaries <= value: the first one the value is below.
    return 0 if value is None else bisect_right(boundaries, value)


def level_with_hysteresis(
    value: float | None, boundaries: tuple[float, float, float], previous: int | None, band: float
) -> int:
    """Level that steps up at once and down only ``band`` below a boundary."""
    raw = level(value, boundaries)
    if previous is None or raw >= previous:
        return raw
    low, mid, high = boundaries
    lowered = level(value, (low - band, mid - band, high - band))
    return min(previous, lowered)


def temperature_boundaries(config: Config) -> tuple[float, float, float]:
    return (config.temp_optimal, config.temp_normal, config.temp_throttle)


def memory_boundaries(config: Config) -> tuple[float, float, float]:
    return (config.memory_optimal, config.memory_normal, config.memory_critical)


@dataclass(frozen=True, slots=True)
class GpuTrack:
    """What classification remembers about one GPU between ticks."""

    state: GPUState | None = None
    temp_level: int | None = None
    mem_level: int | None = None
    effective: GPUState | None = None
    throttled_until_ms: int | None = None
    critical_until_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of state, as the transitions table records it."""

    gpu_index: int
    ts_ms: int
    from_state: GPUState | None
    to_state: GPUState
    cause: str
    temperature_c: int | None
    memory_percent: float | None


class Classification(NamedTuple):  # a NamedTuple: built once per reading, 3x cheaper
    state: GPUState
    effective: GPUState
    track: GpuTrack
    transition: Transition | None
    events: tuple[EventDraft, ...]


def effective_state(
    state: GPUState, ts_ms: int, throttled_until_ms: int | None, critical_until_ms: int | None
) -> GPUState:
    """The state throttle advice acts on: held up during a cooldown or a critical pause."""
    if state is GPUState.UNAVAILABLE:
        return state
    if critical_until_ms is not None and ts_ms < critical_until_ms:
        return max(state, GPUState.CRITICAL)
    if throttled_until_ms is not None and ts_ms < throttled_until_ms:
        return max(state, GPUState.THROTTLED)
    return state


def _cause(
    old: GPUState | None, new: GPUState, track: GpuTrack, t_level: int, m_level: int
) -> str:
    if new is GPUState.UNAVAILABLE:
        return "unavailable"
    old_t = track.temp_level if track.temp_level is not None else -1
    old_m = track.mem_level if track.mem_level is not None else -1
    if old is not None and old is not GPUState.UNAVAILABLE and new < old:
        if t_level < old_t and old_t == old:
            return "temperature"
        if m_level < old_m and old_m == old:
            return "memory"
    else:
        if t_level == new and t_level != old_t:
            return "temperature"
        if m_level == new and m_level != old_m:
            return "memory"
    return "temperature" if t_level >= m_level else "memory"


def _cooldowns(
    old: GPUState | None, new: GPUState, ts_ms: int, track: GpuTrack, config: Config
) -> tuple[int | None, int | None]:
    throttled_until, critical_until = track.throttled_until_ms, track.critical_until_ms
    if new is GPUState.UNAVAILABLE or old is None:
        return throttled_until, critical_until
    if old in _HOT and new in _COOL:
        throttled_until = ts_ms + round(config.throttle_cooldown_seconds * 1000)
    if old is GPUState.CRITICAL and new < GPUState.CRITICAL:
        critical_until = ts_ms + round(config.critical_pause_seconds * 1000)
    return throttled_until, critical_until


_boundaries: dict[int, tuple[Config, tuple[float, float, float], tuple[float, float, float]]] = {}


def _boundaries_of(config: Config) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Both boundary triples of a config, built once per Config object."""
    entry = _boundaries.get(id(config))
    if entry is None or entry[0] is not config:
        if len(_boundaries) > 64:
            _boundaries.clear()
        entry = (config, temperature_boundaries(config), memory_boundaries(config))
        _boundaries[id(config)] = entry
    return entry[1], entry[2]


class SteadyBand(NamedTuple):
    """The readings for which :func:`classify` returns ``track`` unchanged.

    A reading whose temperature ``t`` has ``temp_low <= t < temp_high``, whose memory
    percent ``m`` (not None) has ``mem_low <= m < mem_high``, classified at a time in
    ``[from_ms, until_ms)``, keeps both levels, the state and the effective state: no
    transition, no events, the same track. The pipeline checks this before calling
    ``classify`` (the common case of a sample, on the import's and the sampler's hot path).
    """

    temp_low: float
    temp_high: float
    mem_low: float
    mem_high: float
    from_ms: float
    until_ms: float
    state: GPUState
    effective: GPUState


def _level_band(level_now: int, bounds: tuple[float, float, float],
                band: float) -> tuple[float, float]:
    """[low, high) of the values that keep ``level_with_hysteresis`` at ``level_now``.

    Up: a value at or above ``bounds[level_now]`` steps up. Down: a value below
    ``bounds[level_now - 1]`` steps down only once it is below that boundary minus ``band``
    (the lowered boundary computed as ``level_with_hysteresis`` computes it).
    """
    high = bounds[level_now] if level_now < 3 else math.inf
    if level_now == 0:
        return -math.inf, high
    boundary = bounds[level_now - 1]
    return min(boundary, boundary - band), high


def steady_band(track: GpuTrack, config: Config, ts_ms: int) -> SteadyBand | None:
    """The band in which a reading leaves ``track`` as it is, around the time ``ts_ms``;
    None where there is none to trust (no levels yet, an UNAVAILABLE track, a state that
    is not the worse of its levels, boundaries out of order, an effective state that
    ``ts_ms`` would not keep)."""
    state, t_level, m_level = track.state, track.temp_level, track.mem_level
    if state is None or t_level is None or m_level is None:
        return None
    if not (0 <= t_level <= 3 and 0 <= m_level <= 3) or state is not _STATES[max(t_level,
                                                                                  m_level)]:
        return None
    t_bounds, m_bounds = _boundaries_of(config)
    for bounds in (t_bounds, m_bounds):
        if not bounds[0] <= bounds[1] <= bounds[2]:
            return None  # (NaN included): bisect's answer is not a band
    if not (config.hysteresis_c >= 0 and config.hysteresis_pct >= 0):
        return None
    # The effective state changes only where a cooldown or a pause runs out.
    ends = [end for end in (track.throttled_until_ms, track.critical_until_ms)
            if end is not None]
    effective = effective_state(state, ts_ms, track.throttled_until_ms,
                                track.critical_until_ms)
    if effective is not track.effective:
        return None
    t_low, t_high = _level_band(t_level, t_bounds, config.hysteresis_c)
    m_low, m_high = _level_band(m_level, m_bounds, config.hysteresis_pct)
    return SteadyBand(t_low, t_high, m_low, m_high,
                      max((end for end in ends if end <= ts_ms), default=-math.inf),
                      min((end for end in ends if end > ts_ms), default=math.inf),
                      state, effective)


def classify(reading: Reading, track: GpuTrack, config: Config, ts_ms: int) -> Classification:
    """Classify one reading against what was known of the GPU; say what changed."""
    old = track.state
    mem_pct = reading.memory_percent
    if not reading.available:
        new = GPUState.UNAVAILABLE
        t_level = m_level = None
    else:
        t_bounds, m_bounds = _boundaries_of(config)
        t_level = level_with_hysteresis(
            reading.temperature_c, t_bounds, track.temp_level, config.hysteresis_c,
        )
        m_level = level_with_hysteresis(mem_pct, m_bounds, track.mem_level, config.hysteresis_pct)
        new = _STATES[max(t_level, m_level)]

    if new is old and t_level == track.temp_level and m_level == track.mem_level:
        # Steady: no transition, and cooldowns move only on a change of state, so there
        # is nothing to report unless a cooldown or pause ran out (the effective state
        # changes). The same answer as the full path below, without rebuilding the track.
        effective = effective_state(new, ts_ms, track.throttled_until_ms,
                                    track.critical_until_ms)
        if effective is track.effective:
            return Classification(state=new, effective=effective, track=track,
                                  transition=None, events=())

    events: list[EventDraft] = []
    gpu = reading.index

    def emit(kind: EventKind, **payload: object) -> None:
        events.append(EventDraft(kind=kind, ts_ms=ts_ms, gpu_index=gpu, payload=payload))

    throttled_until, critical_until = _cooldowns(old, new, ts_ms, track, config)
    effective = effective_state(new, ts_ms, throttled_until, critical_until)

    transition = None
    if new != old:
        cause = _cause(old, new, track, t_level or 0, m_level or 0)
        transition = Transition(
            gpu_index=gpu, ts_ms=ts_ms, from_state=old, to_state=new, cause=cause,
            temperature_c=reading.temperature_c,
            memory_percent=None if mem_pct is None else round(mem_pct, 2),
        )
        if new is GPUState.UNAVAILABLE:
            emit(EventKind.GPU_LOST, error=reading.error, uuid=reading.uuid)
        elif old is GPUState.UNAVAILABLE:
            emit(EventKind.GPU_FOUND, uuid=reading.uuid, name=reading.name)
        emit(
            EventKind.STATE_CHANGE,
            **{
                "from": None if old is None else old.name,
                "to": new.name,
                "cause": cause,
                "temperature_celsius": reading.temperature_c,
                "memory_percent": transition.memory_percent,
            },
        )
    if new is GPUState.CRITICAL and old is not GPUState.CRITICAL:
        emit(
            EventKind.CRITICAL, cause=transition.cause if transition else None,
            temperature_celsius=reading.temperature_c,
            memory_percent=None if mem_pct is None else round(mem_pct, 2),
        )
    if t_level == 3 and track.temp_level != 3:
        emit(
            EventKind.OVERHEAT, temperature_celsius=reading.temperature_c,
            threshold_celsius=config.temp_throttle,
        )
    old_effective = track.effective
    if effective in _HOT and old_effective not in _HOT:
        emit(EventKind.THROTTLE, state=new.name, effective_state=effective.name,
             temperature_celsius=reading.temperature_c,
             memory_percent=None if mem_pct is None else round(mem_pct, 2))
    elif effective in _COOL and old_effective in _HOT:
        emit(EventKind.RESUME, state=new.name, effective_state=effective.name,
             temperature_celsius=reading.temperature_c)

    new_track = GpuTrack(
        state=new, temp_level=t_level, mem_level=m_level, effective=effective,
        throttled_until_ms=throttled_until, critical_until_ms=critical_until,
    )
    return Classification(
        state=new, effective=effective, track=new_track, transition=transition,
        events=tuple(events),
    )
