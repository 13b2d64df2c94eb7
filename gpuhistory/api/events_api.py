"""The event log over HTTP: a page of events after a cursor, and a live SSE stream.

The event id is the cursor: ``since_id`` for polling clients; ``Last-Event-ID`` (sent back
by every EventSource on reconnect) or ``since_id`` to resume the stream where it broke off.

A stream holds one of a few slots (half the HTTP threads) while its response runs. Only a
GET that is answered with the stream takes one: ``HEAD`` is answered with the headers alone,
a request from a web page of another origin is refused (403), and a slot is given back when
the server closes the response, whether its body was ever read or not.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from flask import Response, jsonify, request, stream_with_context
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.api.auth import is_cross_origin
from gpuhistory.api.common import View, ctx, time_range
from gpuhistory.api.errors import ApiError
from gpuhistory.api.responses import EventList, errors
from gpuhistory.api.schemas import EventsQuery, StreamQuery
from gpuhistory.clock import iso_utc
from gpuhistory.storage.schema import events, gpus

bp = APIBlueprint("events", __name__, url_prefix="/api/gpu", abp_tags=[Tag(name="events")])

POLL_SECONDS = 0.5
# A departed client is noticed only when a write fails: a short heartbeat frees its
# worker thread within seconds.
HEARTBEAT_SECONDS = 5.0
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class StreamSlot:
    """One acquired stream slot, given back exactly once however the response ends."""

    def __init__(self, slots: threading.BoundedSemaphore) -> None:
        self._slots = slots
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> None:
        with self._lock:
            if not self._held:
                return
            self._held = False
        self._slots.release()


def _select(since_id: int, kind: str | None, gpu_id: int | None, limit: int,
            since_ms: int | None = None, until_ms: int | None = None,
            uuid: str | None = None) -> sa.Select:
    """Events after a cursor: SEARCH events USING INTEGER PRIMARY KEY (rowid>?)."""
    query = (
        sa.select(events.c.id, events.c.ts_ms, events.c.kind, events.c.payload,
                  gpus.c.gpu_index, gpus.c.uuid)
        .select_from(events.outerjoin(gpus, gpus.c.id == events.c.gpu_id))
        .where(events.c.id > since_id)
    )
    if kind is not None:
        query = query.where(events.c.kind == kind)
    if gpu_id is not None:
        query = query.where(gpus.c.gpu_index == gpu_id, gpus.c.host == ctx().host)
    if uuid is not None:  # one card (gpu_id: every card that held the slot)
        query = query.where(gpus.c.uuid == uuid)
    if since_ms is not None:
        query = query.where(events.c.ts_ms >= since_ms)
    if until_ms is not None:
        query = query.where(events.c.ts_ms <= until_ms)
    return query.order_by(events.c.id).limit(limit)


def _doc(row: sa.Row[Any]) -> dict[str, Any]:
    return {"id": row.id, "timestamp": iso_utc(row.ts_ms), "kind": row.kind,
            "gpu_id": row.gpu_index, "uuid": row.uuid, "payload": row.payload}


@bp.get("/events", responses={200: EventList, **errors(400, 422)})
def list_events(query: EventsQuery) -> View:
    """Events with an id above ``since_id`` (and a time in [since, until], when given),
    oldest first; ``last_id`` is the next cursor."""
    since, until = time_range(query)
    with ctx().engine.connect() as conn:
        rows = conn.execute(_select(query.since_id, query.kind, query.gpu_id, query.limit,
                                    since, until, query.uuid)).all()
    docs = [_doc(r) for r in rows]
    return jsonify({"count": len(docs), "last_id": docs[-1]["id"] if docs else query.since_id,
                    "events": docs})


def _cursor(query: StreamQuery) -> int:
    header = request.headers.get("Last-Event-ID")
    if header is not None:
        try:
            value = int(header)
        except ValueError:
            raise ApiError(400, "invalid_argument", "Last-Event-ID must be an event id",
                           {"Last-Event-ID": header[:32]}) from None
        if value < 0:
            raise ApiError(400, "invalid_argument", "Last-Event-ID must not be negative")
        return value
    if query.since_id is not None:
        return query.since_id
    with ctx().engine.connect() as conn:  # only what happens from now on
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0)))
                   .scalar() or 0)


@bp.get("/events/stream", responses={200: {"content": {"text/event-stream": {
    "schema": {"type": "string"}}}}, **errors(400, 403, 422, 429)})
def stream_events(query: StreamQuery) -> View:
    """Server-Sent Events: ``id``, ``event`` (the kind) and ``data`` (the event as JSON).

    Each response lasts a few minutes, then ends; EventSource reconnects by itself with
    Last-Event-ID, so nothing is missed.
    """
    c = ctx()
    if is_cross_origin():  # a page of another origin must not hold the dashboard's slots
        raise ApiError(403, "cross_origin",
                       "an event stream for a web page of another origin is refused")
    if request.method == "HEAD":  # the headers of the stream, no body: no slot
        return Response(mimetype="text/event-stream", headers=STREAM_HEADERS)
    cursor = _cursor(query)
    if not c.streams.acquire(blocking=False):
        raise ApiError(429, "too_many_streams",
                       f"at most {c.max_streams} event streams at once (half the HTTP "
                       "threads); poll /api/gpu/events",
                       {"max_streams": c.max_streams})
    slot = StreamSlot(c.streams)
    engine, lifetime = c.engine, c.stream_seconds
    kind, gpu_id, uuid = query.kind, query.gpu_id, query.uuid
    # The server's way to ask whether the client has gone (waitress with request lookahead):
    # a reloaded page frees its slot within one poll, not at the next write.
    gone: Callable[[], bool] = request.environ.get(
        "waitress.client_disconnected", lambda: False)

    def generate() -> Iterator[str]:
        nonlocal cursor
        try:
            yield "retry: 2000\n\n"
            started = last_sent = time.monotonic()
            while time.monotonic() - started < lifetime and not gone():
                with engine.connect() as conn:
                    rows = conn.execute(_select(cursor, kind, gpu_id, 500, uuid=uuid)).all()
                for row in rows:
                    cursor = row.id
                    yield f"id: {row.id}\nevent: {row.kind}\ndata: {json.dumps(_doc(row))}\n\n"
                    last_sent = time.monotonic()
                if not rows:
                    if time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
                        yield ": keep-alive\n\n"
                        last_sent = time.monotonic()
                    time.sleep(POLL_SECONDS)
        finally:
            slot.release()

    try:
        response = Response(stream_with_context(generate()), mimetype="text/event-stream",
                            headers=STREAM_HEADERS)
    except BaseException:
        slot.release()
        raise
    # The server closes every response it was given, also one whose body it never reads
    # (a generator never started runs no ``finally``).
    response.call_on_close(slot.release)
    return response
