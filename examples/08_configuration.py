"""Example 8 — configuration management (the seed's eighth usage example).

``update_config`` validates a change whole and applies it, or nothing: an unknown key, a
value out of range, or thresholds that stop increasing are rejected with the reason and
change nothing. A change is a ``config_changed`` event in the log, so every process on the
database sees it and it survives restarts (``PUT /api/gpu/config`` does the same).

Under the default thresholds GPU 1 of the bundled fleet trace is THROTTLED at 84 C;
lowering ``temp_throttle`` to 80 makes that CRITICAL.

    python examples/08_configuration.py [--db FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from gpuhistory import GPUManager
from gpuhistory.clock import FakeClock
from gpuhistory.domain.config import ValidationError

GPU = 1


def run(db: str) -> None:
    clock = FakeClock()
    with GPUManager(db=db, backend="sim", clock=clock) as manager:
        config = manager.config
        print(f"defaults: temp_optimal {config.temp_optimal:g}, temp_normal "
              f"{config.temp_normal:g}, temp_throttle {config.temp_throttle:g}, "
              f"temp_critical {config.temp_critical:g}, memory_limit_mb "
              f"{config.memory_limit_mb}, memory_reserve_mb {config.memory_reserve_mb}")
        manager.sampler.tick()
        clock.advance(40)
        manager.sampler.tick()
        status = manager.get_gpu_status(GPU)
        print(f"GPU {GPU} at {status['metrics']['temperature_celsius']} C: {status['state']}; "
              f"leasable {manager.get_available_memory(GPU)} MiB")

        # The seed's runtime change.
        manager.update_config({"temp_throttle": 80, "memory_limit_mb": 7168})
        print(f"updated: temp_throttle {manager.config.temp_throttle:g}, "
              f"memory_limit_mb {manager.config.memory_limit_mb}")
        clock.advance(1)
        manager.sampler.tick()
        status = manager.get_gpu_status(GPU)
        print(f"GPU {GPU} at {status['metrics']['temperature_celsius']} C: {status['state']}; "
              f"leasable {manager.get_available_memory(GPU)} MiB")

        # Bad changes are rejected whole, with the reason; nothing changes.
        for bad in ({"temp_throttle": 60},  # below temp_normal: thresholds must increase
                    {"temp_optimal": 50, "memory_critical": 150},  # 150 % is out of range
                    {"temp_throtle": 80}):  # a typo is an unknown key, not ignored
            try:
                manager.update_config(bad)
            except ValidationError as exc:  # pydantic's: each bad key with its reason
                reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}"
                                    for e in exc.errors())
                print(f"rejected {bad}: {reasons}")
            except ValueError as exc:  # an unknown key
                print(f"rejected {bad}: {exc}")
            else:
                raise AssertionError(f"{bad} was accepted")
        config = manager.config
        print(f"unchanged: temp_optimal {config.temp_optimal:g}, temp_throttle "
              f"{config.temp_throttle:g}")

    # Stored in the log: a new manager on the same database (or another process) has it.
    with GPUManager(db=db, backend="sim", clock=clock) as again:
        print(f"after a restart: temp_throttle {again.config.temp_throttle:g}, "
              f"memory_limit_mb {again.config.memory_limit_mb}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLite file to use (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.db or str(Path(tmp) / "example.db"))


if __name__ == "__main__":
    main()
