"""The steady fast path: a reading inside its track's band is what ``classify`` leaves
unchanged, and ``Pipeline.process`` with the fast path writes and remembers exactly what
it writes and remembers without it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from gpuhistory.domain.classify import GpuTrack, classify, steady_band
from gpuhistory.domain.config import Config
from gpuhistory.domain.reading import GpuIdentity, Reading, unavailable
from gpuhistory.sampling import pipeline as pipeline_module
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.storage.engine import make_engine, upgrade
from gpuhistory.storage.log import LogStore, TickRecord

TOTAL = 1000
CONFIGS = [Config(), Config(hysteresis_c=0, hysteresis_pct=0),
           Config(hysteresis_c=7.5, hysteresis_pct=12.5, throttle_cooldown_seconds=5,
                  critical_pause_seconds=9)]


def reading(temp: int | None, used: int | None, index: int = 0) -> Reading:
    return Reading(index=index, uuid=f"GPU-{index}", temperature_c=temp,
                   memory_used_mib=used, memory_total_mib=TOTAL)


def tracks_of(config: Config, seed: int) -> list[tuple[GpuTrack, int]]:
    """(track, time it was made) along a random walk through every state and cooldown."""
    rng = random.Random(seed)
    track, temp, used, out = GpuTrack(), 50.0, 500.0, []
    for step in range(400):
        temp = min(105.0, max(20.0, temp + rng.uniform(-6, 6)))
        used = min(1000.0, max(0.0, used + rng.uniform(-80, 80)))
        ts = 1_000_000 + step * 700
        track = classify(reading(round(temp), round(used)), track, config, ts).track
        out.append((track, ts))
    return out


@pytest.mark.parametrize("config", CONFIGS)
def test_inside_the_band_is_exactly_what_classify_leaves_unchanged(config: Config) -> None:
    """For every temperature and memory use on a grid, at times inside and outside the
    band's window: inside ⇔ classify returns the same track, no transition, no events."""
    checked = inside_seen = 0
    for track, made in tracks_of(config, seed=7)[::40]:
        band = steady_band(track, config, made)
        if band is None:
            assert track.state is None or track.effective is not track.state or \
                track.temp_level is None
            continue
        for ts in (made, made + 1, made + 4_999, made + 5_000, made + 60_001):
            for temp in range(50, 96):
                for used in range(0, 1001, 40):
                    result = classify(reading(temp, used), track, config, ts)
                    inside = (band.temp_low <= temp < band.temp_high
                              and band.mem_low <= 100.0 * used / TOTAL < band.mem_high
                              and band.from_ms <= ts < band.until_ms)
                    unchanged = (result.track is track and result.transition is None
                                 and not result.events)
                    if inside:
                        assert unchanged, (track, ts, temp, used)
                        assert (result.state, result.effective) == (band.state,
                                                                    band.effective)
                        inside_seen += 1
                    elif band.from_ms <= ts < band.until_ms:
                        assert not unchanged, (track, ts, temp, used)
                    checked += 1
    assert inside_seen > 500 and checked > inside_seen


def random_tick(rng: random.Random, tick: int, walk: dict[int, list[float]]) -> list[Reading]:
    """Four GPUs; implausible values, empty fields, lost GPUs, a renamed and a swapped
    card, duplicated indexes now and then."""
    out = []
    for index in range(4):
        temp, used = walk.setdefault(index, [50.0, 400.0])
        walk[index] = [min(104.0, max(20.0, temp + rng.uniform(-3, 3.1))),
                       min(1000.0, max(0.0, used + rng.uniform(-40, 41)))]
        roll = rng.random()
        if roll < 0.01:
            out.append(unavailable(index, "lost", f"GPU-{index}"))
            continue
        fields: dict[str, Any] = {
            "temperature_c": round(walk[index][0]), "memory_used_mib": round(walk[index][1]),
            "memory_total_mib": TOTAL, "utilization_pct": rng.randint(0, 100),
            "memory_temperature_c": round(walk[index][0]) + 3, "power_w": 300.5,
        }
        if roll < 0.02:
            fields["temperature_c"] = rng.choice((0, 150, 255, None))
        elif roll < 0.03:
            fields["memory_used_mib"] = rng.choice((TOTAL + 1, -1, None))
        elif roll < 0.035:
            fields["utilization_pct"] = 101
        elif roll < 0.04:
            fields["memory_temperature_c"] = 0
        elif roll < 0.045:
            fields["memory_total_mib"] = None
        uuid = f"GPU-{index}" if not (index == 3 and tick > 600) else "GPU-swapped"
        name = "H100" if tick < 500 or index != 2 else "H100 renamed"
        out.append(Reading(index=index, uuid=uuid, name=name, **fields))
        if roll > 0.995:
            out.append(out[-1])  # the same index twice in one tick
    return out


def replay(tmp_path: Path, name: str, fast: bool, config: Config,
           monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], dict[str, Any]]:
    engine = make_engine(tmp_path / f"{name}.db")
    upgrade(engine)
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(pipeline_module, "steady_band", lambda *_: None)
        pipeline = Pipeline(LogStore(engine, "h"), "sim", config=lambda: config)
        rng = random.Random(3)
        walk: dict[int, list[float]] = {}
        records = []
        for tick in range(900):
            batch = random_tick(rng, tick, walk)
            identities = ({r.uuid: GpuIdentity(index=r.index, uuid=r.uuid, name="id")
                           for r in batch if r.uuid} if tick % 300 < 100 else None)
            ts = 1_000_000 + tick * 400 - (200 if tick % 97 == 0 else 0)
            record = pipeline.process(ts, batch, identities, record=TickRecord())
            records.append((record.samples, record.transitions, record.events))
        assert not fast or pipeline._steady, "the fast path was never armed"
    engine.dispose()
    memory = {"tracks": pipeline.tracks, "latest": pipeline.latest, "last_ts": pipeline.last_ts,
              "invalid": pipeline.invalid, "gpu_ids": pipeline.gpu_ids}
    return records, memory


@pytest.mark.parametrize("config", CONFIGS)
def test_process_writes_and_remembers_the_same_with_and_without_the_fast_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: Config) -> None:
    """900 ticks of four GPUs through two pipelines, one never taking the fast path:
    every tick's samples, transitions and events, and what each pipeline holds, agree."""
    fast_records, fast_memory = replay(tmp_path, "fast", True, config, monkeypatch)
    slow_records, slow_memory = replay(tmp_path, "slow", False, config, monkeypatch)
    assert fast_records == slow_records
    assert fast_memory == slow_memory
    assert sum(len(t) for _, t, _ in fast_records) > 20  # transitions happened


def test_new_thresholds_end_the_fast_path_at_once(tmp_path: Path) -> None:
    """A GPU steady at 31 °C is OPTIMAL under the defaults; the thresholds change so that
    31 °C is NORMAL: the very next tick classifies it NORMAL (the steady band made with the
    old thresholds is not trusted), as a run without the fast path would."""
    engine = make_engine(tmp_path / "cfg.db")
    upgrade(engine)
    current = {"config": Config()}
    pipeline = Pipeline(LogStore(engine, "h"), "sim", config=lambda: current["config"])
    ts = 1_000_000
    for _ in range(5):
        ts += 1000
        pipeline.process(ts, [reading(31, 100)], record=TickRecord())
    assert pipeline._steady, "the fast path was never armed"
    assert pipeline.latest[0].state.name == "OPTIMAL"
    current["config"] = Config(temp_optimal=30, temp_normal=32)
    record = pipeline.process(ts + 1000, [reading(31, 100)], record=TickRecord())
    assert pipeline.latest[0].state.name == "NORMAL"
    assert [t["to_state"] for t in record.transitions] != []
    engine.dispose()
