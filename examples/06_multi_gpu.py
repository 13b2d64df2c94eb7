"""Example 6 — multi-GPU support (the seed's sixth usage example).

Every method takes ``gpu_id``; ``get_all_gpus_status()`` answers for every GPU at once.
The bundled fleet trace has four GPUs that behave differently: GPU 0 a real H100 under
load, GPU 1 the same load on a badly cooled card, GPU 2 the load started 60 s later,
GPU 3 idle. Two minutes into the trace, a scheduler picks the GPU for a new job: the one
with the best throttle advice, then the most leasable memory — and leases memory there.

    python examples/06_multi_gpu.py [--db FILE]
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
        for _ in range(130 // 5):  # two minutes of trace, a sample every 5 s
            clock.advance(5)
            manager.sampler.tick()

        everything = manager.get_all_gpus_status()
        print(f"{everything['count']} GPUs on {everything['host']}:")
        for gpu in everything["gpus"]:
            m, advice = gpu["metrics"], gpu["throttling"]
            print(f"  GPU {gpu['gpu_id']}: {gpu['state']:9} {m['temperature_celsius']:3d} C "
                  f"load {m['load_percent']:3d} % memory {m['memory_percent']:5.1f} % "
                  f"advice x{advice['speed_multiplier']} "
                  f"leasable {gpu['memory']['available_mb']} MiB")

        best = max(everything["gpus"],
                   key=lambda g: (g["throttling"]["speed_multiplier"],
                                  g["memory"]["available_mb"]))
        gpu_id = best["gpu_id"]
        print(f"best GPU for a new job: {gpu_id}")
        granted = manager.allocate_memory("new-job", 16_384, gpu_id=gpu_id, owner="scheduler")
        print(f"leased 16384 MiB on GPU {gpu_id}: {granted}; "
              f"left there {manager.get_available_memory(gpu_id)} MiB, "
              f"on GPU 0 still {manager.get_available_memory(0)} MiB")
        for gpu_id in range(everything["count"]):
            print(f"  GPU {gpu_id}: should throttle {manager.should_throttle_processing(gpu_id)}, "
                  f"speed x{manager.get_processing_speed_multiplier(gpu_id)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLite file to use (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.db or str(Path(tmp) / "example.db"))


if __name__ == "__main__":
    main()
