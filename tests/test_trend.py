"""Temperature trend on synthetic ramps with known slopes, computed in SQL (raw and rollups)."""

from __future__ import annotations

import random

import pytest

from gpuhistory.analytics.rollups import RollupJob
from gpuhistory.clock import FakeClock
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.domain.trend import trend_doc
from gpuhistory.storage.log import TickRecord
from gpuhistory.storage.queries import trend_sums
from tests.test_rollups import add_gpu, row

pytestmark = pytest.mark.postgres

START = 1_767_225_600_000


def ramp(store, slope_per_min: float, seconds: int, base: float = 50.0, noise: float = 0.0,
         seed: int = 7) -> int:
    """One GPU whose temperature follows ``base + slope * minutes`` (± noise), at 1 Hz."""
    gpu = add_gpu(store, 0)
    rng = random.Random(seed)
    record = TickRecord()
    for s in range(seconds):
        temp = base + slope_per_min * s / 60 + rng.uniform(-noise, noise)
        record.samples.append(row(gpu, START + s * 1000, temp=round(temp)))
    store.write(record)
    return gpu


def trend(engine, gpu: int, minutes: float, until_s: int) -> dict:
    until = START + until_s * 1000
    with engine.connect() as conn:
        sums = trend_sums(conn, gpu, until - round(minutes * 60_000), until)
    return trend_doc(sums, DEFAULT_CONFIG)


@pytest.mark.parametrize(("slope", "direction"), [(3.0, "rising"), (-2.0, "falling"),
                                                  (0.0, "stable"), (0.3, "stable")])
def test_slope_and_direction_of_clean_ramps(engine, store, slope, direction) -> None:
    """Least squares recovers the ramp's slope (°C/min, within rounding) and its direction."""
    gpu = ramp(store, slope, 600, base=60)
    doc = trend(engine, gpu, 5, 599)
    assert doc["slope_c_per_min"] == pytest.approx(slope, abs=0.05)
    assert doc["trend"] == direction
    assert doc["samples"] == 301


def test_noisy_ramp(engine, store) -> None:
    """±3 °C of noise around a 1.5 °C/min ramp still reads as rising at about 1.5."""
    gpu = ramp(store, 1.5, 900, base=40, noise=3.0)
    doc = trend(engine, gpu, 10, 899)
    assert doc["trend"] == "rising"
    assert doc["slope_c_per_min"] == pytest.approx(1.5, abs=0.15)


def test_minutes_to_the_next_threshold(engine, store) -> None:
    """At 2 °C/min from 60 °C the next threshold (65) is 2.5 minutes away; falling from 80
    the next one below (75) is reached at the falling rate; stable has none."""
    rising = ramp(store, 2.0, 301, base=50)
    doc = trend(engine, rising, 5, 300)
    assert doc["last"] == 60 and doc["next_threshold_celsius"] == 65
    assert doc["minutes_to_next_threshold"] == pytest.approx(2.5, abs=0.05)


def test_falling_heads_to_the_threshold_below(engine, store) -> None:
    gpu = ramp(store, -1.0, 301, base=85)
    doc = trend(engine, gpu, 5, 300)
    assert doc["trend"] == "falling" and doc["last"] == 80
    assert doc["next_threshold_celsius"] == 75
    assert doc["minutes_to_next_threshold"] == pytest.approx(5.0, abs=0.1)


def test_long_windows_from_rollups_match_the_raw_computation(engine, store) -> None:
    """A 3-hour window reads whole minutes from samples_1m; the answer equals the raw one
    (slope to 1e-3 °C/min, the same count, min, max, first and last)."""
    gpu = ramp(store, 0.2, 4 * 3600 + 37, base=30, noise=2.0)
    until_s = 4 * 3600 + 30
    raw = trend(engine, gpu, 180, until_s)  # before any rollup: all raw
    RollupJob(engine, FakeClock(START + (until_s + 600) * 1000)).run()
    rolled = trend(engine, gpu, 180, until_s)
    for key in ("samples", "min", "max", "first", "last", "avg", "trend"):
        assert rolled[key] == raw[key], key
    assert rolled["slope_c_per_min"] == pytest.approx(raw["slope_c_per_min"], abs=1e-3)


def test_empty_window(engine, store) -> None:
    """No samples: zero count, stable, no slope, no ETA."""
    gpu = ramp(store, 1.0, 10)
    doc = trend(engine, gpu, 5, -3600)
    assert doc == {**doc, "samples": 0, "trend": "stable", "slope_c_per_min": None,
                   "minutes_to_next_threshold": None, "avg": None}
