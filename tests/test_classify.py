"""Classification: the state table, hysteresis, causes, and events once per edge."""

from __future__ import annotations

import pytest

from gpuhistory.domain.classify import GpuTrack, classify, level, level_with_hysteresis
from gpuhistory.domain.config import Config
from gpuhistory.domain.events import EventKind
from gpuhistory.domain.reading import Reading, unavailable
from gpuhistory.domain.states import GPUState

CFG = Config()
NO_HYST = Config(hysteresis_c=0, hysteresis_pct=0)
TOTAL = 10_000


def r(temp: int | None = 40, mem_pct: float | None = 10.0, index: int = 0) -> Reading:
    used = None if mem_pct is None else round(mem_pct * TOTAL / 100)
    return Reading(index=index, uuid="GPU-x", temperature_c=temp, memory_used_mib=used,
                   memory_total_mib=TOTAL)


def run(values: list[tuple[int | None, float | None]], config: Config = CFG, step_ms: int = 1000):
    """Classify a sequence of (temperature, memory %) readings; return every result."""
    track, out = GpuTrack(), []
    for i, (t, m) in enumerate(values):
        res = classify(r(t, m), track, config, 1_000_000 + i * step_ms)
        track = res.track
        out.append(res)
    return out


def kinds(result) -> list[str]:
    return [str(e.kind) for e in result.events]


@pytest.mark.parametrize(
    ("temp", "expected"),
    [(-5, GPUState.OPTIMAL), (64, GPUState.OPTIMAL), (65, GPUState.NORMAL),
     (74, GPUState.NORMAL), (75, GPUState.THROTTLED), (84, GPUState.THROTTLED),
     (85, GPUState.CRITICAL), (120, GPUState.CRITICAL)],
)
def test_temperature_boundaries(temp: int, expected: GPUState) -> None:
    """Each temperature boundary of the seed's table: below it one state, at it the next."""
    assert run([(temp, 10)])[0].state is expected


@pytest.mark.parametrize(
    ("pct", "expected"),
    [(0, GPUState.OPTIMAL), (69.99, GPUState.OPTIMAL), (70, GPUState.NORMAL),
     (84.99, GPUState.NORMAL), (85, GPUState.THROTTLED), (94.99, GPUState.THROTTLED),
     (95, GPUState.CRITICAL), (100, GPUState.CRITICAL)],
)
def test_memory_boundaries(pct: float, expected: GPUState) -> None:
    """Each memory-percentage boundary of the seed's table."""
    assert run([(30, pct)])[0].state is expected


def test_state_is_the_worse_of_temperature_and_memory() -> None:
    """A cool GPU with full memory is CRITICAL; a hot GPU with empty memory is CRITICAL."""
    assert run([(30, 96)])[0].state is GPUState.CRITICAL
    assert run([(86, 1)])[0].state is GPUState.CRITICAL
    assert run([(70, 86)])[0].state is GPUState.THROTTLED


def test_not_supported_fields_do_not_raise_the_state() -> None:
    """A None temperature or memory (NOT_SUPPORTED) counts as no pressure from it."""
    assert run([(None, None)])[0].state is GPUState.OPTIMAL
    assert run([(None, 90)])[0].state is GPUState.THROTTLED


def test_hysteresis_steps_down_only_below_the_band() -> None:
    """Up at once; down only when 2 °C below the boundary (75 → 73 stays, 72.9 falls)."""
    results = run([(70, 10), (75, 10), (74, 10), (73, 10), (72, 10), (75, 10)])
    assert [x.state for x in results] == [
        GPUState.NORMAL, GPUState.THROTTLED, GPUState.THROTTLED, GPUState.THROTTLED,
        GPUState.NORMAL, GPUState.THROTTLED]


def test_idling_at_a_boundary_writes_one_transition_not_one_per_tick() -> None:
    """A GPU oscillating 74/75 °C changes state once with hysteresis, every tick without."""
    wobble = [(74, 10), (75, 10)] * 10
    with_h = [x for x in run(wobble) if x.transition]
    without = [x for x in run(wobble, NO_HYST) if x.transition]
    assert len(with_h) == 2  # initial NORMAL, then THROTTLED for good
    assert len(without) == 20


def test_zero_hysteresis_steps_down_at_the_boundary() -> None:
    """hysteresis 0 disables the band: 74 °C right after 75 °C is NORMAL again."""
    assert run([(75, 10), (74, 10)], NO_HYST)[1].state is GPUState.NORMAL


def test_memory_hysteresis() -> None:
    """The memory state has its own band: 85 % → 83.5 % stays THROTTLED, 82.9 % drops."""
    results = run([(30, 85), (30, 83.5), (30, 82.9)])
    assert [x.state for x in results] == [GPUState.THROTTLED, GPUState.THROTTLED,
                                          GPUState.NORMAL]


def test_multi_level_jump_is_one_transition_with_every_event() -> None:
    """OPTIMAL → CRITICAL in one tick: one transition, and throttle, critical, overheat."""
    results = run([(40, 10), (90, 10)])
    t = results[1].transition
    assert t is not None and t.from_state is GPUState.OPTIMAL and t.to_state is GPUState.CRITICAL
    assert t.cause == "temperature"
    assert sorted(kinds(results[1])) == ["critical", "overheat", "state_change", "throttle"]


def test_memory_caused_versus_temperature_caused_transitions() -> None:
    """The cause names what moved: memory filling up, or the card heating."""
    mem = run([(40, 10), (40, 90)])[1].transition
    temp = run([(40, 10), (80, 10)])[1].transition
    assert mem is not None and mem.cause == "memory" and mem.to_state is GPUState.THROTTLED
    assert temp is not None and temp.cause == "temperature"
    # Stepping down: the component that dropped is the cause.
    down = run([(40, 90), (40, 10)])[1].transition
    assert down is not None and down.cause == "memory"


def test_memory_critical_without_overheat() -> None:
    """CRITICAL by memory emits critical and throttle but not overheat."""
    res = run([(40, 10), (40, 97)])[1]
    assert sorted(kinds(res)) == ["critical", "state_change", "throttle"]


def test_events_emitted_once_per_edge() -> None:
    """Staying hot emits nothing more; only the crossing does."""
    results = run([(40, 10), (86, 10), (88, 10), (90, 10), (87, 10)])
    assert kinds(results[2]) == kinds(results[3]) == kinds(results[4]) == []
    overheats = [e for x in results for e in x.events if e.kind is EventKind.OVERHEAT]
    assert len(overheats) == 1


def test_overheat_rearms_only_after_falling_below_the_band() -> None:
    """85 → 84 → 85 is one overheat (hysteresis); 85 → 82 → 85 is two."""
    one = run([(85, 10), (84, 10), (85, 10)])
    two = run([(85, 10), (82, 10), (85, 10)])
    count = lambda rs: sum(e.kind is EventKind.OVERHEAT for x in rs for e in x.events)  # noqa: E731
    assert count(one) == 1
    assert count(two) == 2


def test_first_reading_records_the_initial_state() -> None:
    """The first tick of a GPU writes a transition from nothing, so 'state at T' has a start."""
    t = run([(40, 10)])[0].transition
    assert t is not None and t.from_state is None and t.to_state is GPUState.OPTIMAL


def test_throttle_cooldown_holds_effective_state_then_resumes() -> None:
    """After leaving THROTTLED, effective stays THROTTLED for 30 s; resume comes after that."""
    seq = [(40, 10), (80, 10)] + [(60, 10)] * 40  # 1 s ticks
    results = run(seq)
    assert kinds(results[1]).count("throttle") == 1
    assert results[2].state is GPUState.OPTIMAL and results[2].effective is GPUState.THROTTLED
    resumed = [i for i, x in enumerate(results) if "resume" in kinds(x)]
    assert resumed == [32]  # left THROTTLED at tick 2 (t=2 s); cooldown ends at t=32 s
    assert results[31].effective is GPUState.THROTTLED
    assert results[32].effective is GPUState.OPTIMAL


def test_critical_pause_holds_effective_critical_for_60_seconds() -> None:
    """Leaving CRITICAL keeps the advice at CRITICAL for 60 s, then the cooldown applies."""
    seq = [(90, 10)] + [(80, 10)] * 70
    results = run(seq)
    assert results[1].state is GPUState.THROTTLED and results[1].effective is GPUState.CRITICAL
    assert results[60].effective is GPUState.CRITICAL
    assert results[61].effective is GPUState.THROTTLED


def test_reentering_hot_during_cooldown_emits_no_new_throttle() -> None:
    """Back to THROTTLED inside the cooldown: the effective state never left, so no event."""
    results = run([(80, 10), (60, 10), (80, 10)])
    assert kinds(results[0]).count("throttle") == 1
    assert "throttle" not in kinds(results[2]) and "resume" not in kinds(results[1])


def test_gpu_lost_and_found() -> None:
    """A lost GPU becomes UNAVAILABLE with gpu_lost once; on return, gpu_found and its state."""
    track = classify(r(40, 10), GpuTrack(), CFG, 1000).track
    lost = classify(unavailable(0, "GPU is lost", "GPU-x"), track, CFG, 2000)
    assert lost.state is GPUState.UNAVAILABLE
    assert lost.transition is not None and lost.transition.cause == "unavailable"
    assert kinds(lost) == ["gpu_lost", "state_change"]
    again = classify(unavailable(0, "GPU is lost", "GPU-x"), lost.track, CFG, 3000)
    assert again.transition is None and again.events == ()
    found = classify(r(70, 10), again.track, CFG, 4000)
    assert found.state is GPUState.NORMAL
    assert kinds(found) == ["gpu_found", "state_change"]


def test_level_helpers() -> None:
    """level() and level_with_hysteresis() on their own."""
    b = (10.0, 20.0, 30.0)
    assert [level(v, b) for v in (None, 9.9, 10, 29.9, 30)] == [0, 0, 1, 2, 3]
    assert level_with_hysteresis(19, b, previous=2, band=2) == 2
    assert level_with_hysteresis(17.9, b, previous=2, band=2) == 1
    assert level_with_hysteresis(5, b, previous=3, band=2) == 0
