"""The one parser of time options (``--since``, ``--until``, ``--at``) for every command."""

from __future__ import annotations

import click

from gpuhistory.clock import parse_log_time


def time_value(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    """A click callback: ISO-8601 or epoch seconds → epoch ms, or a usage error (exit 2)."""
    if value is None:
        return None
    try:
        return parse_log_time(value)
    except (ValueError, OverflowError):
        raise click.BadParameter(
            "use ISO-8601 (2026-11-26T03:12:00Z) or epoch seconds, between 1970 and 9999"
        ) from None
