"""Injectable time. Production uses the system clock; tests drive a fake one."""

from __future__ import annotations

import functools
import math
import threading
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time as integer milliseconds since the Unix epoch."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FakeClock:
    """A clock that moves only when told to. Thread-safe."""

    def __init__(self, start_ms: int = 1_767_225_600_000) -> None:  # 2026-01-01T00:00:00Z
        self._ms = start_ms
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            return self._ms

    def advance(self, seconds: float) -> int:
        with self._lock:
            self._ms += round(seconds * 1000)
            return self._ms

    def set(self, ms: int) -> None:
        with self._lock:
            self._ms = ms


def iso_utc(ms: int | None) -> str | None:
    """ISO-8601 UTC with milliseconds and a Z, as every answer prints times."""
    if ms is None:
        return None
    day, rest = divmod(ms, 86_400_000)
    seconds, milli = divmod(rest, 1000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{_iso_day(day)}{_TWO[hours]}:{_TWO[minutes]}:{_TWO[seconds]}.{_MILLI_Z[milli]}"


_TWO = tuple(f"{i:02d}" for i in range(60))  # table lookups: 3x faster than format specs
_MILLI_Z = tuple(f"{i:03d}Z" for i in range(1000))


@functools.lru_cache(maxsize=4096)
def _iso_day(day: int) -> str:
    """``YYYY-MM-DDT`` of a day since the epoch: strftime once per day, not per time, so
    the thousands of timestamps of one answer cost a few table lookups each."""
    return datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%dT")


MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last time ISO-8601 writes


def parse_log_time(text: str) -> int:
    """``parse_time`` limited to what the log can hold and answers can print: 1970 to 9999."""
    ms = parse_time(text)
    if not 0 <= ms <= MAX_TIME_MS:
        raise ValueError(f"{text!r} is outside 1970-01-01T00:00:00Z … 9999-12-31T23:59:59Z")
    return ms


def parse_time(text: str) -> int:
    """Epoch seconds (int or float) or ISO-8601 (naive means UTC) → epoch milliseconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or abs(seconds) > 1e11:
            raise ValueError(f"not a usable time: {text!r}")
        return round(seconds * 1000)
    value = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)
