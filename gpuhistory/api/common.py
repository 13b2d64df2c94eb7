"""Helpers every blueprint uses: the service context and resolving a GPU (slot or UUID)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Response, current_app

from gpuhistory.api.errors import ApiError
from gpuhistory.api.schemas import ALL_HOSTS
from gpuhistory.clock import iso_utc
from gpuhistory.context import ServiceContext
from gpuhistory.domain.config import Config
from gpuhistory.identity import GpuRef, UnknownGpu, resolve, resolve_latest
from gpuhistory.identity import filter_ids as identity_filter_ids
from gpuhistory.storage.queries import GpuRow, LatestSample

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


def gpu_ref(query: Any) -> GpuRef:
    """What a query or body names: ``gpu_id``, ``uuid`` and ``host``."""
    return GpuRef(query.gpu_id, getattr(query, "uuid", None), getattr(query, "host", None))


def _not_found(exc: UnknownGpu) -> ApiError:
    return ApiError(404, "gpu_not_found", str(exc), exc.details)


def one_gpu(conn: sa.Connection, query: Any, at_ms: int | None = None) -> LatestSample:
    """The card the query names at ``at_ms`` (default: now) — on its ``host``, default this
    server's — with its newest sample at or before ``at_ms``."""
    try:
        return resolve_latest(conn, gpu_ref(query), ctx().host, ctx().clock.now_ms(), at_ms)
    except UnknownGpu as exc:
        raise _not_found(exc) from None


def card_at(conn: sa.Connection, query: Any, t_ms: int) -> GpuRow:
    """The card the query names at ``t_ms`` (the end of a range)."""
    try:
        return resolve(conn, gpu_ref(query), ctx().host, t_ms)
    except UnknownGpu as exc:
        raise _not_found(exc) from None


def filter_ids(conn: sa.Connection, query: Any, host: str | None) -> list[int] | None:
    """The gpus.id rows a list's ``gpu_id``/``uuid`` filter covers (None: no filter);
    ``host`` None (``*``): every host."""
    return identity_filter_ids(conn, query.gpu_id, query.uuid, host)
