"""The webhooks and the delivery log as the API shows them (reads only)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from gpuhistory.alerts.selection import count_events
from gpuhistory.clock import iso_utc
from gpuhistory.storage.schema import events, gpus, webhook_deliveries, webhooks

LAG_CAP = 10_000  # undelivered events counted at most, per webhook
STATUSES = ("delivered", "failed", "rejected", "gave_up")

_W = webhooks.c
_D = webhook_deliveries.c


def _on(query: sa.Select[Any], host: str | None) -> sa.Select[Any]:
    return query if host is None else query.where(_W.host == host)


def webhook_names(conn: sa.Connection, host: str | None) -> set[str]:
    return set(conn.execute(_on(sa.select(_W.name), host)).scalars())


def list_webhooks(conn: sa.Connection, host: str | None,
                  now_ms: int) -> list[dict[str, Any]]:
    """The webhooks of ``host`` (None: every host), active first, with cursor, lag, retry
    state and last outcome."""
    out = []
    for row in conn.execute(_on(sa.select(webhooks), host)
                            .order_by(_W.active.desc(), _W.host, _W.name)):
        lag, oldest = conn.execute(count_events(row.kinds, row.gpus, row.host,
                                                row.cursor_event_id, LAG_CAP)).one()
        pending = None
        if row.pending_event_id is not None:
            pending = {"event_id": row.pending_event_id, "failed_attempts": row.attempts,
                       "next_attempt_at": iso_utc(row.next_attempt_ms)}
        out.append({
            "name": row.name, "host": row.host, "url": row.url, "kinds": row.kinds,
            "gpus": row.gpus, "signed": bool(row.signed), "active": bool(row.active),
            "settings": row.settings, "cursor": row.cursor_event_id,
            "lag_events": int(lag),
            "lag_seconds": None if oldest is None else max(0.0, (now_ms - oldest) / 1000),
            "pending": pending,
            "last_attempt_at": iso_utc(row.last_attempt_ms), "last_status": row.last_status,
            "last_http_status": row.last_http_status, "last_error": row.last_error,
            "last_delivered_at": iso_utc(row.last_delivered_ms),
            "created_at": iso_utc(row.created_ms), "updated_at": iso_utc(row.updated_ms),
        })
    return out


def list_deliveries(conn: sa.Connection, host: str | None, *, webhook: str | None = None,
                    status: str | None = None, event_id: int | None = None,
                    since_ms: int | None = None, until_ms: int | None = None,
                    before_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Delivery-log rows of the webhooks of ``host`` (None: every host), newest first."""
    query = (
        sa.select(_D.id, _D.event_id, _D.ts_ms, _D.attempt, _D.status, _D.http_status,
                  _D.error, _D.duration_ms, _D.next_retry_ms, _W.name, _W.host,
                  events.c.kind, gpus.c.gpu_index)
        .select_from(webhook_deliveries.join(webhooks, _W.id == _D.webhook_id)
                     .outerjoin(events, events.c.id == _D.event_id)
                     .outerjoin(gpus, gpus.c.id == events.c.gpu_id))
    )
    if host is not None:
        query = query.where(_W.host == host)
    if webhook is not None:
        query = query.where(_W.name == webhook)
    if status is not None:
        query = query.where(_D.status == status)
    if event_id is not None:
        query = query.where(_D.event_id == event_id)
    if since_ms is not None:
        query = query.where(_D.ts_ms >= since_ms)
    if until_ms is not None:
        query = query.where(_D.ts_ms <= until_ms)
    if before_id is not None:
        query = query.where(_D.id < before_id)
    return [{
        "id": row.id, "webhook": row.name, "host": row.host, "event_id": row.event_id,
        "kind": row.kind, "gpu_id": row.gpu_index, "attempt": row.attempt, "status": row.status,
        "http_status": row.http_status, "error": row.error, "duration_ms": row.duration_ms,
        "timestamp": iso_utc(row.ts_ms), "next_retry_at": iso_utc(row.next_retry_ms),
    } for row in conn.execute(query.order_by(_D.id.desc()).limit(limit))]
