"""Helpers every blueprint uses: the service context and resolving a GPU index."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Response, current_app

from gpuhistory.api.errors import ApiError
from gpuhistory.api.schemas import ALL_HOSTS
from gpuhistory.clock import iso_utc
from gpuhistory.context import ServiceContext
from gpuhistory.domain.config import Config
from gpuhistory.storage.queries import LatestSample, latest_samples

View = Response | tuple[Response, int]  # what a view returns (resolvable by get_type_hints)


def ctx() -> ServiceContext:
    return current_app.extensions["gpuhistory"]


def config_at(ts_ms: int, live: bool) -> Config:
    """The configuration now, or the one in force at a past time."""
    c = ctx()
    if live or c.config_store is None:
        return c.config()
    return c.config_store.at(ts_ms)


def time_range(query: Any) -> tuple[int | None, int | None]:
    """A query's ``since``/``until`` (already epoch ms by its schema), or 422 when since is
    after until."""
    since: int | None = query.since
    until: int | None = query.until
    if since is not None and until is not None and since > until:
        raise ApiError(422, "validation_failed", "since must not be after until",
                       {"since": iso_utc(since), "until": iso_utc(until)})
    return since, until


def host_filter(host: str | None) -> str | None:
    """The host a query names: this server's when none is given, ``None`` (every host) for
    ``*``."""
    if host == ALL_HOSTS:
        return None
    return host if host is not None else ctx().host


def one_gpu(conn: sa.Connection, gpu_id: int, at_ms: int | None = None,
            host: str | None = None) -> LatestSample:
    """The GPU with this index on ``host`` (default: this server's host), with its newest
    sample at or before ``at_ms``."""
    host = host if host is not None else ctx().host
    entries = latest_samples(conn, host, gpu_id, at_ms=at_ms)
    if not entries:
        raise ApiError(404, "gpu_not_found", f"no GPU with gpu_id {gpu_id} on {host}",
                       {"gpu_id": gpu_id, "host": host})
    return entries[0]
