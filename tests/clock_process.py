"""Fake time shared with subprocesses: a clock in an 8-byte file that only the test moves.

``FileClock`` is the test's side (``now_ms``, ``advance``); every process that maps the same
file reads the same time. Run as a module, it starts a ``gpuhistory`` command whose system
clock is that file (``python -m tests.clock_process CLOCK_FILE api --db ...``): the real
command, with time replaced at its one boundary, ``SystemClock.now_ms``.
"""

from __future__ import annotations

import mmap
import struct
import sys
import threading
from pathlib import Path

_FORMAT = "<q"  # epoch milliseconds, little-endian int64


class FileClock:
    """Epoch milliseconds in a file; ``advance`` (this process only) moves it forward."""

    def __init__(self, path: Path, start_ms: int | None = None) -> None:
        if start_ms is not None:
            path.write_bytes(struct.pack(_FORMAT, start_ms))
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), 8)
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        while True:  # two equal reads: never a value half written
            first, second = self._map[:8], self._map[:8]
            if first == second:
                return struct.unpack(_FORMAT, first)[0]

    def advance_ms(self, ms: int) -> int:
        """Move the clock ``ms`` forward (never back); returns the new time."""
        with self._lock:
            value = self.now_ms() + max(0, ms)
            self._map[:8] = struct.pack(_FORMAT, value)
            return value

    def close(self) -> None:
        self._map.close()
        self._file.close()


def command(clock_file: Path, *args: str) -> list[str]:
    """The argv of ``gpuhistory ARGS`` running on the clock in ``clock_file``."""
    return [sys.executable, "-m", "tests.clock_process", str(clock_file), *args]


def _main() -> None:
    clock = FileClock(Path(sys.argv[1]))
    from gpuhistory import clock as clock_module

    clock_module.SystemClock.now_ms = lambda self: clock.now_ms()  # type: ignore[method-assign]
    sys.argv = ["gpuhistory", *sys.argv[2:]]
    from gpuhistory.cli.main import main

    main()


if __name__ == "__main__":
    _main()
