"""Local times without a zone (as nvidia-smi writes them) → UTC, across daylight saving.

When the clocks go back (Europe/Berlin, last Sunday of October: 03:00 CEST → 02:00 CET) an
hour of local times happens twice; when they go forward (02:00 CET → 03:00 CEST) an hour
never happens. A log's rows say which pass of a repeated hour each row is in: one GPU's
rows never go back in time, so when that GPU's local clock steps back inside the repeated
hour, the rows before the step are the first pass and the rows after it the second.

- Times that happen once are converted at once.
- Rows inside a repeated hour wait (:class:`RepeatedHour`) until the log leaves that hour,
  then each GPU's rows are placed by its step back. A GPU whose rows there show no step
  (a log that holds only one pass, say) cannot be placed: FormatError, naming the line and
  the two fixed offsets that would say which pass was meant.
- A time that never happened is a FormatError at once: the log was not written in that
  zone (or not by a clock that kept to it).

Nothing is ever placed by guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gpuhistory.formats.errors import FormatError

_TIME = re.compile(
    r"(\d{4})[/-](\d{1,2})[/-](\d{1,2})[ T](\d{1,2}):(\d{2}):(\d{2})(?:[.,](\d{1,6}))?")
_EPOCH = datetime(1970, 1, 1)
_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})?")


def parse_zone(text: str) -> tzinfo:
    """An IANA zone (``Europe/Berlin``, ``UTC``) or a fixed offset (``+01:00``, ``-0530``).

    ValueError for anything else, or an offset of 24 hours or more.
    """
    match = _OFFSET.fullmatch(text.strip())
    if match is not None:
        sign, hours, minutes = match.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes or 0))
        if delta >= timedelta(hours=24) or int(minutes or 0) >= 60:
            raise ValueError(f"offset {text!r} is out of range")
        return timezone(-delta if sign == "-" else delta)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {text!r}") from None


@dataclass(frozen=True, slots=True)
class LocalTime:
    """One local time read in a zone: ``early``/``late`` are its epoch ms read with the
    zone's earlier and later offsets (equal unless the time is ambiguous or nonexistent)."""

    text: str
    early: int
    late: int
    wall: int  # the local time itself, as if it were UTC (epoch ms)

    @property
    def ambiguous(self) -> bool:
        return self.early < self.late

    @property
    def step_ms(self) -> int:
        """How far the clocks went back (0 for a time that happens once)."""
        return self.late - self.early

    def offsets(self) -> str:
        """The two offsets a fixed ``--timezone`` could name, the smaller first."""
        a, b = sorted({self.wall - self.early, self.wall - self.late})
        return f"{format_offset(a)} or {format_offset(b)}"


def format_offset(ms: int) -> str:
    """3_600_000 → ``+01:00``; -16_200_000 → ``-04:30``."""
    sign = "-" if ms < 0 else "+"
    minutes = abs(ms) // 60_000
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def zone_name(tz: tzinfo | None) -> str:
    if tz is None:
        return "this machine's local zone"
    return str(getattr(tz, "key", None) or tz)


def read_local(text: str, tz: tzinfo | None) -> tuple[int, int, int]:
    """``YYYY/MM/DD HH:MM:SS[.ffffff]`` in ``tz`` (None: local) → (early ms, late ms, wall ms).

    ``early``/``late`` read the time with ``fold=0``/``fold=1`` (PEP 495): equal for a time
    that happens once; early < late inside a repeated hour; early > late inside a skipped
    one. ValueError when the text is not such a time or not a date.
    """
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text.strip()[:40]!r} is not a time like 2026/11/26 12:34:56.789")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction_ms = round(int((match.group(7) or "0").ljust(6, "0")) / 1000)
    first = datetime(year, month, day, hour, minute, second, tzinfo=tz)
    wall = int((first.replace(tzinfo=None) - _EPOCH).total_seconds()) * 1000 + fraction_ms
    early = int(first.timestamp()) * 1000 + fraction_ms
    late = int(first.replace(fold=1).timestamp()) * 1000 + fraction_ms
    return early, late, wall


class LocalClock:
    """Reads a log's local times in one zone; FormatError for a time that never happened."""

    def __init__(self, path: str, tz: tzinfo | None) -> None:
        self.path, self.tz = path, tz
        self._last_text: str | None = None
        self._last: LocalTime | None = None

    def read(self, text: str, line: int) -> LocalTime:
        if text == self._last_text and self._last is not None:
            return self._last  # the rows of one tick share their time
        try:
            early, late, wall = read_local(text, self.tz)
        except (ValueError, OverflowError) as exc:
            raise FormatError(self.path, line, f"column 'timestamp': {exc}") from None
        local = LocalTime(text.strip(), early, late, wall)
        if early > late:
            raise FormatError(self.path, line, (
                f"{local.text} never happened in {zone_name(self.tz)}: the clocks went "
                f"forward by {(early - late) / 60_000:g} min that night. Was the log written "
                f"in another zone? If it was written at a fixed offset, use --timezone "
                f"{local.offsets()}"))
        self._last_text, self._last = text, local
        return local


@dataclass(slots=True)
class _Row:
    local: LocalTime
    gpu: int
    line: int
    item: Any


class RepeatedHour:
    """Rows inside one repeated hour, held until the log leaves it, then placed in UTC."""

    def __init__(self, path: str, tz: tzinfo | None) -> None:
        self.path, self.tz = path, tz
        self.rows: list[_Row] = []

    def __bool__(self) -> bool:
        return bool(self.rows)

    def holds(self, local: LocalTime) -> bool:
        """Whether ``local`` falls in the same repeated hour as the rows held (or none are)."""
        if not self.rows:
            return True
        first = self.rows[0].local
        return (local.step_ms == first.step_ms
                and abs(local.early - first.early) < first.step_ms)

    def add(self, local: LocalTime, gpu: int, line: int, item: Any) -> None:
        self.rows.append(_Row(local, gpu, line, item))

    def place(self) -> list[tuple[int, int, Any]]:
        """(epoch ms, line, item) for every row held, in file order; the hour is emptied.

        FormatError (the lowest line at fault) for a GPU whose rows do not show which pass
        they are in, or whose local clock steps back twice in the hour.
        """
        rows, self.rows = self.rows, []
        late: set[int] = set()  # positions in rows read with the later offset
        errors: list[FormatError] = []
        by_gpu: dict[int, list[int]] = {}
        for position, row in enumerate(rows):
            by_gpu.setdefault(row.gpu, []).append(position)
        for gpu, positions in by_gpu.items():
            steps = [n for n in range(1, len(positions))
                     if rows[positions[n]].local.early < rows[positions[n - 1]].local.early]
            if not steps:
                errors.append(self._unresolved(gpu, rows[positions[0]]))
            elif len(steps) > 1:
                again, before = rows[positions[steps[1]]], rows[positions[steps[1] - 1]]
                errors.append(FormatError(self.path, again.line, (
                    f"timestamp goes back in time (GPU {gpu}'s clock already went back once "
                    f"in this repeated hour; previous row {before.local.text})")))
            else:
                late.update(positions[steps[0]:])
        if errors:
            raise min(errors, key=lambda e: e.line or 0)
        return [(row.local.late if n in late else row.local.early, row.line, row.item)
                for n, row in enumerate(rows)]

    def _unresolved(self, gpu: int, row: _Row) -> FormatError:
        local = row.local
        return FormatError(self.path, row.line, (
            f"{local.text} is ambiguous in {zone_name(self.tz)}: the clocks went back by "
            f"{local.step_ms / 60_000:g} min that night, so this local time happened twice, "
            f"and GPU {gpu}'s rows in the repeated hour do not step back to show which pass "
            f"they are in. If the whole log was written at one offset, use --timezone "
            f"{local.offsets()}; otherwise split the file where the clocks went back"))
