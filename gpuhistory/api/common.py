"""Helpers every blueprint uses: the service context and query-argument parsing."""

from __future__ import annotations

from flask import current_app, request

from gpuhistory.api.errors import ApiError
from gpuhistory.clock import parse_time
from gpuhistory.context import ServiceContext

MAX_GPU_INDEX = 1023


def ctx() -> ServiceContext:
    return current_app.extensions["gpuhistory"]  # type: ignore[no-any-return]


def gpu_id_arg(default: int | None = 0) -> int | None:
    """The ``gpu_id`` query argument: a small non-negative integer (400 otherwise)."""
    raw = request.args.get("gpu_id")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_argument", "gpu_id must be an integer",
                       {"gpu_id": raw[:64]}) from None
    if not 0 <= value <= MAX_GPU_INDEX:
        raise ApiError(400, "invalid_argument", f"gpu_id must be between 0 and {MAX_GPU_INDEX}",
                       {"gpu_id": value})
    return value


def time_arg(name: str) -> int | None:
    """A time argument (ISO-8601 UTC or epoch seconds) as epoch milliseconds."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_time(raw)
    except (ValueError, OverflowError):
        raise ApiError(400, "invalid_argument",
                       f"{name} must be ISO-8601 (e.g. 2026-11-26T03:12:00Z) or epoch seconds",
                       {name: raw[:64]}) from None
