"""Example 3 — temperature monitoring and trend (the seed's third usage example).

GPU 1 of the bundled fleet trace is a badly cooled card: under load it climbs from 31 C to
90 C, then cools when the load stops. A fake clock drives the sampler through the trace in
a moment (``sampler.tick()`` is what the monitoring job runs every ``monitor_interval``),
and the trend over the last minute is asked every 30 s of trace time.

    python examples/03_temperature_monitoring.py [--db FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from gpuhistory import GPUManager
from gpuhistory.clock import FakeClock

GPU = 1
STEP_S = 2  # seconds of trace time per sample


def minutes(value: float) -> str:
    return f"{value * 60:.0f} s" if value < 1 else f"{value:.1f} min"


def run(db: str) -> None:
    clock = FakeClock()
    with GPUManager(db=db, backend="sim", clock=clock) as manager:
        manager.sampler.tick()
        for second in range(STEP_S, 241, STEP_S):
            clock.advance(STEP_S)
            manager.sampler.tick()
            if second % 30:
                continue
            trend = manager.get_temperature_trend(duration_minutes=1, gpu_id=GPU)
            now = manager.latest_metrics(GPU)
            assert now is not None
            eta = trend["minutes_to_next_threshold"]
            ahead = "" if eta is None else (
                f", {trend['next_threshold_celsius']:g} C in {minutes(eta)} at this rate")
            print(f"t={second:3d}s GPU {GPU}: {now['temperature_celsius']} C {now['state']:9} "
                  f"last minute {trend['min']:g}..{trend['max']:g} C "
                  f"(avg {trend['avg']:.1f}), trend {trend['trend']} "
                  f"{trend['slope_c_per_min']:+.1f} C/min{ahead}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLite file to use (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.db or str(Path(tmp) / "example.db"))


if __name__ == "__main__":
    main()
