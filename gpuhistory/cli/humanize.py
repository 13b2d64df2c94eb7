"""Durations as people read them in the CLI's tables and texts: ``8 min 51 s``, not
``531.084 s``."""

from __future__ import annotations

import math

_UNITS = (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1))


def duration(seconds: float | None) -> str:
    """``0.3 s``, ``4.2 s``, ``47 s``, ``8 min 51 s``, ``2 h 5 min``, ``3 d 4 h``; the two
    largest units, the smaller rounded; ``-`` for None, and a ``-`` sign before the past."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 0:
        return "-" + duration(-seconds)
    if seconds < 10:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    total = round(seconds)
    for i, (unit, size) in enumerate(_UNITS):
        if total >= size:
            if size == 1:
                return f"{total} s"
            big, small_unit, small_size = total // size, *_UNITS[i + 1]
            rest = round((total - big * size) / small_size)
            if rest * small_size >= size:  # 59.6 min rounds up to the next hour
                big, rest = big + 1, 0
            return f"{big} {unit} {rest} {small_unit}" if rest else f"{big} {unit}"
    return f"{total} s"
