"""Example 7 — metrics history (the seed's seventh usage example).

Every sample is persisted, so history outlives the process: ``get_metrics_history`` reads
the newest ``limit`` samples (default ``history_size``, 200) back from the log, oldest
first, with the seed's GPUMetrics field names. A fake clock records 40 s of the bundled
trace, a sample a second, covering GPU 0's jump from idle to full load.

    python examples/07_metrics_history.py [--db FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from gpuhistory import GPUManager
from gpuhistory.clock import FakeClock


def run(db: str) -> None:
    clock = FakeClock()
    with GPUManager(db=db, backend="sim", clock=clock) as manager:
        manager.sampler.tick()
        for _ in range(40):
            clock.advance(1)
            manager.sampler.tick()

        history = manager.get_metrics_history(limit=12, gpu_id=0)
        print(f"last {len(history)} samples of GPU 0:")
        for m in history:
            print(f"  {m['timestamp']} {m['state']:8} {m['temperature_celsius']:3d} C "
                  f"load {m['load_percent']:3d} % memory {m['memory_used_mb']:6d} MiB "
                  f"power {m['power_watts']:6.1f} W {','.join(m['clock_event_reasons'])}")
        everything = manager.get_metrics_history(gpu_id=0)
        temps = [m["temperature_celsius"] for m in everything]
        print(f"all {len(everything)} samples: {min(temps)}..{max(temps)} C, "
              f"{sum(m['load_percent'] > 50 for m in everything)} of them under load")

    # A new manager on the same database (another process, or after a restart) sees it all.
    with GPUManager(db=db, backend="sim", clock=clock) as again:
        print(f"after a restart: {len(again.get_metrics_history(gpu_id=0))} samples of GPU 0 "
              "still in the log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLite file to use (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.db or str(Path(tmp) / "example.db"))


if __name__ == "__main__":
    main()
