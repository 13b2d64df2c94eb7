"""The one parser of time options (``--since``, ``--until``, ``--at``, ``--start``) for every
command.

A time is ISO-8601 (``2026-11-26T03:12:00Z``; naive means UTC), epoch seconds (``1795659120``),
``now``, or a time relative to now: a duration with units, ago by default or with ``-``
(``-1h``, ``90m``, ``1h30m``, ``now-10m``), ahead with ``+`` (``+15m``). Units: ``s``,
``m``/``min``, ``h``, ``d``, ``w``. A bare number stays epoch seconds: give the unit.
"""

from __future__ import annotations

import re

import click

from gpuhistory.clock import MAX_TIME_MS, SystemClock, parse_log_time

UNIT_MS = {"s": 1_000, "sec": 1_000, "m": 60_000, "min": 60_000, "h": 3_600_000,
           "d": 86_400_000, "w": 604_800_000}
_PART = r"(\d+(?:\.\d+)?)\s*(min|sec|s|m|h|d|w)"
_RELATIVE = re.compile(rf"^(?:now\s*)?([+-]?)\s*((?:{_PART}\s*)+)$", re.IGNORECASE)
HELP = ("use ISO-8601 (2026-11-26T03:12:00Z), epoch seconds (between 1970 and 9999), now, "
        "or a time relative to now: -1h, 90m, 1h30m (ago), +15m (ahead)")


def relative_ms(text: str) -> int | None:
    """The signed offset from now in ms that ``text`` names (``-1h`` → -3600000; ``90m``,
    a duration with no sign, is ago), 0 for ``now``, None when it is no relative time."""
    text = text.strip()
    if text.lower() == "now":
        return 0
    match = _RELATIVE.match(text)
    if match is None:
        return None
    sign, parts = match.group(1), match.group(2)
    offset = sum(float(n) * UNIT_MS[u.lower()] for n, u in re.findall(_PART, parts, re.I))
    return round(offset) if sign == "+" else -round(offset)


def parse_cli_time(text: str, now_ms: int) -> int:
    """A time option's value → epoch ms, relative times counted from ``now_ms``; raises
    ValueError for anything else or outside 1970 … 9999."""
    offset = relative_ms(text)
    if offset is None:
        return parse_log_time(text)
    ms = now_ms + offset
    if not 0 <= ms <= MAX_TIME_MS:
        raise ValueError(f"{text!r} is outside 1970-01-01T00:00:00Z … 9999-12-31T23:59:59Z")
    return ms


def time_value(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    """A click callback: a time option → epoch ms, or a usage error (exit 2)."""
    if value is None:
        return None
    try:
        return parse_cli_time(value, SystemClock().now_ms())
    except (ValueError, OverflowError):
        raise click.BadParameter(HELP) from None
