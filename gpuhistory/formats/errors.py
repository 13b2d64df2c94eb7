"""The error every file reader raises: where in the file, and what is wrong."""

from __future__ import annotations

import math
from collections.abc import Callable

MAX_INT = 2**63 - 1  # the largest value an integer column holds


class FormatError(ValueError):
    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


def parse_cell(convert: Callable[[str], int | float], value_text: str, text: str, column: str,
               path: str, line: int) -> int | float:
    """``convert(value_text)``, refused unless it is a finite number in 0..MAX_INT.

    The one check every reader applies to a numeric cell; ``text`` is the cell as written,
    quoted (cut to 40 characters) in the message.
    """
    try:
        value = convert(value_text)
    except (ValueError, OverflowError):
        raise FormatError(path, line, f"column {column!r}: {text[:40]!r} is not a number") \
            from None
    if isinstance(value, float) and not math.isfinite(value):
        raise FormatError(path, line, f"column {column!r}: {text[:40]!r} is not finite")
    if value < 0 or value > MAX_INT:
        raise FormatError(path, line, f"column {column!r}: {text[:40]!r} is out of range")
    return value
