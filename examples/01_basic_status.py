"""Example 1 — basic GPU status (the seed's first usage example), on simulated GPUs.

Is a GPU there, what does it read now, what state is it in, and what does the service
advise? Then monitoring: start the sampling job, let it record a few samples, stop it.

    python examples/01_basic_status.py [--db FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gpuhistory import GPUManager


def run(db: str) -> None:
    # backend="sim" replays the bundled recording of an H100 fleet; on a machine with an
    # NVIDIA driver, backend="auto" (the default) reads the real GPUs through NVML.
    with GPUManager(db=db, backend="sim", config={"monitor_interval": 0.2}) as manager:
        print(f"GPU available: {manager.is_available()}")

        metrics = manager.get_gpu_metrics(0)  # the seed's GPUMetrics
        assert metrics is not None
        print(f"GPU {metrics.gpu_id}: {metrics.name} (backend {metrics.backend})")
        print(f"  temperature {metrics.temperature_celsius} C, load {metrics.load_percent} %, "
              f"memory {metrics.memory_used_mb}/{metrics.memory_total_mb} MiB "
              f"({metrics.memory_percent} %), power {metrics.power_watts} W")
        print(f"  state {metrics.state}, clock-event reasons {metrics.clock_event_reasons}")

        status = manager.get_gpu_status(0)  # the same document as GET /api/gpu/status
        advice, memory = status["throttling"], status["memory"]
        print(f"  advice: speed x{advice['speed_multiplier']} ({advice['reason']})")
        print(f"  leasable memory: {memory['available_mb']} of {memory['capacity_mb']} MiB")

        # Monitoring: the sampling job writes one sample per GPU every monitor_interval.
        manager.start_monitoring()
        deadline = time.monotonic() + 5
        while len(manager.get_metrics_history(gpu_id=0)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        manager.stop_monitoring()
        print(f"monitoring recorded {len(manager.get_metrics_history(gpu_id=0))} samples "
              f"of GPU 0, then stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLite file to use (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.db or str(Path(tmp) / "example.db"))


if __name__ == "__main__":
    main()
