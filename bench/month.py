"""A large, realistic log for the analytics benchmarks: N days of 8 GPUs at 1 Hz.

Each GPU runs six one-hour jobs a day; during a job the card heats towards its own peak the
way the recorded H100 did (31 °C idle, ~62 °C under load, memory at 77 %, ~700 W, power
capped), and cools after it. GPUs 1 and 5 are badly cooled and peak near 90 °C, so they
have overheat incidents. Every sample goes through the real pipeline (classification,
transitions, events) and the real write path. The log is built once per size and reused
from ``bench/data/`` (ignored by git).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from pathlib import Path

from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.domain.reading import Reading
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.storage.engine import make_engine, upgrade
from gpuhistory.storage.log import LogStore, TickRecord

DATA = Path(__file__).resolve().parent / "data"
START_MS = 1_764_547_200_000  # 2025-12-01T00:00:00Z
GPUS = 8
TOTAL_MIB = 81559
PEAKS = {0: 62, 1: 90, 2: 64, 3: 58, 4: 63, 5: 89, 6: 61, 7: 66}
JOB_HOURS = (1, 5, 9, 13, 17, 21)
HOST = "bench-host"


def _reading(gpu: int, second_of_day: int, rng: random.Random) -> Reading:
    offset = gpu * 7 * 60  # GPUs start their jobs a few minutes apart
    t = (second_of_day - offset) % 86_400
    idle = 31 + gpu % 3
    peak = PEAKS[gpu]
    job_start = max((h * 3600 for h in JOB_HOURS if h * 3600 <= t), default=None)
    in_job = job_start is not None and t - job_start < 3600
    since_end = None if job_start is None or in_job else t - job_start - 3600
    if in_job:
        into = t - job_start  # type: ignore[operator]
        temp = idle + (peak - idle) * (1 - math.exp(-into / 25))
    elif since_end is not None and since_end < 600:
        temp = idle + (peak - idle) * math.exp(-since_end / 40)
    else:
        temp = idle
    temp += rng.uniform(-0.6, 0.6)
    uuid = f"GPU-bench-{gpu:02d}"
    if in_job:
        return Reading(index=gpu, uuid=uuid, name="NVIDIA H100 80GB HBM3 (bench)",
                       temperature_c=round(temp), memory_temperature_c=round(temp - 6),
                       memory_used_mib=63020, memory_total_mib=TOTAL_MIB,
                       utilization_pct=99 + rng.randint(0, 1),
                       power_w=690 + rng.uniform(0, 12), power_limit_w=700.0,
                       sm_clock_mhz=1365 + rng.randint(-45, 45), mem_clock_mhz=2619,
                       clock_event_reasons=4, pstate=0)
    return Reading(index=gpu, uuid=uuid, name="NVIDIA H100 80GB HBM3 (bench)",
                   temperature_c=round(temp), memory_temperature_c=round(temp + 2),
                   memory_used_mib=480, memory_total_mib=TOTAL_MIB, utilization_pct=0,
                   power_w=71.5 + rng.uniform(0, 2), power_limit_w=700.0, sm_clock_mhz=345,
                   mem_clock_mhz=2619, clock_event_reasons=1, pstate=0)


def build(path: Path, days: float, gpus: int = GPUS) -> dict[str, float]:
    """Write ``days`` of 1 Hz samples for ``gpus`` GPUs into a fresh database at ``path``."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(path)
    upgrade(engine)
    store = LogStore(engine, HOST)
    pipeline = Pipeline(store, "sim", lambda: DEFAULT_CONFIG, fill_missing=False)
    rng = random.Random(42)
    seconds = round(days * 86_400)
    started = time.perf_counter()
    record = TickRecord()
    with engine.connect() as conn, conn.begin():
        for s in range(seconds):
            second_of_day = s % 86_400
            pipeline.process(START_MS + s * 1000,
                             [_reading(g, second_of_day, rng) for g in range(gpus)],
                             record=record)
            if len(record.samples) >= 50_000:
                store.write(record, conn)
                record = TickRecord()
        store.write(record, conn)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return {"samples": seconds * gpus, "seconds": elapsed}


def month_log(days: float) -> Path:
    """The cached log of ``days`` days (built on first use)."""
    path = DATA / f"log-{days:g}d-{GPUS}gpu.db"
    if not path.exists() or os.environ.get("GPUHISTORY_BENCH_REBUILD"):
        figures = build(path, days)
        print(f"built {path.name}: {figures['samples']:,} samples in "
              f"{figures['seconds']:.0f} s", file=sys.stderr, flush=True)  # stdout: the table
    return path
