"""Example 4 — throttling management (the seed's fourth usage example and its job queue).

Before each batch, a job asks whether to throttle and by how much, and scales its batch
size by the speed multiplier: 1.0 OPTIMAL, 0.8 NORMAL, 0.5 THROTTLED, 0.0 CRITICAL (pause).
After a GPU leaves CRITICAL the advice stays at 0.0 for ``critical_pause_seconds`` (60),
and after leaving THROTTLED at 0.5 for ``throttle_cooldown_seconds`` (30). The advice is a
query over the persisted transitions, so it survives restarts.

GPU 1 of the bundled fleet trace overheats under load and then cools; a fake clock walks
through it in a moment. A line is printed whenever the advice changes.

    python examples/04_throttling.py [--db FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from gpuhistory import GPUManager
from gpuhistory.clock import FakeClock

GPU = 1
BATCH_SIZE = 64


def batch_size_for(manager: GPUManager, gpu_id: int) -> int:
    """The seed's job-queue integration: 0 means pause and try again later."""
    if manager.should_throttle_processing(gpu_id):
        speed = manager.get_processing_speed_multiplier(gpu_id)
        return int(BATCH_SIZE * speed)
    return BATCH_SIZE


def run(db: str) -> None:
    clock = FakeClock()
    with GPUManager(db=db, backend="sim", clock=clock) as manager:
        manager.sampler.tick()
        last = None
        for second in range(0, 271):
            if second:
                clock.advance(1)
                manager.sampler.tick()
            status = manager.get_gpu_status(GPU)
            advice = status["throttling"]
            key = (advice["state"], advice["effective_state"], advice["speed_multiplier"])
            if key == last:
                continue
            last = key
            print(f"t={second:3d}s GPU {GPU} {status['metrics']['temperature_celsius']:3d} C "
                  f"state {advice['state']:9} -> speed x{advice['speed_multiplier']}, "
                  f"batch {batch_size_for(manager, GPU):2d}/{BATCH_SIZE}: {advice['reason']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLite file to use (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.db or str(Path(tmp) / "example.db"))


if __name__ == "__main__":
    main()
