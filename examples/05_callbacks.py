"""Example 5 — state change callbacks (the seed's fifth usage example).

``register_callback(kind, fn)`` calls ``fn(event)`` after each event of that kind is
committed to the log: state_change, throttle, resume, critical, overheat (and the lease,
config and monitoring events; "*" for all). The event carries ``kind``, ``gpu_id``,
``timestamp`` and ``payload``, and, like the seed's argument, the GPU's metrics fields
(``event.temperature_celsius``).

GPU 1 of the bundled fleet trace overheats under load; a fake clock walks the sampler
through it in a moment. ``resume`` comes when the advice returns to full speed, after the
``critical_pause_seconds`` (60) that follow leaving CRITICAL.

    python examples/05_callbacks.py [--db FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from gpuhistory import GPUManager
from gpuhistory.callbacks import Event
from gpuhistory.clock import FakeClock

paused: set[int] = set()


def on_critical(metrics: Event) -> None:
    # The seed's callback, unchanged: it reads the metrics straight off its argument.
    print(f"  CRITICAL: GPU {metrics.gpu_id} at {metrics.temperature_celsius}°C "
          "-> pausing its jobs")
    paused.add(metrics.gpu_id)


def on_resume(event: Event) -> None:
    print(f"  resume: GPU {event.gpu_id} is {event.payload['effective_state']} again "
          f"({event.temperature_celsius}°C) -> jobs may run")
    paused.discard(event.gpu_id)


def on_event(event: Event) -> None:
    if event.kind in ("critical", "resume"):
        return  # printed by their own callbacks
    change = ""
    if "to" in event.payload:
        change = f" {event.payload['from'] or '(first sample)'} -> {event.payload['to']}"
    cause = event.payload.get("cause")
    print(f"  {event.kind}: GPU {event.gpu_id}{change}"
          f"{f' ({cause})' if cause else ''} at {event.temperature_celsius}°C")


def run(db: str) -> None:
    clock = FakeClock()
    with GPUManager(db=db, backend="sim", clock=clock) as manager:
        manager.register_callback("critical", on_critical)
        manager.register_callback("resume", on_resume)
        for kind in ("state_change", "throttle", "overheat"):
            manager.register_callback(kind, on_event)
        manager.sampler.tick()
        for second in range(1, 271):
            clock.advance(1)
            before = len(paused)
            manager.sampler.tick()
            if len(paused) != before:
                print(f"t={second}s: paused GPUs now {sorted(paused) or 'none'}")
        print(f"done: paused GPUs {sorted(paused) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLite file to use (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.db or str(Path(tmp) / "example.db"))


if __name__ == "__main__":
    main()
