"""The deliverer's writes: the webhooks table (definition, cursor, retry state) and the
delivery log. One writer per host: the sampler process's deliverer.

Every state change is one short transaction (no HTTP inside one) that appends the attempt
to the delivery log and moves the webhook's state, the latter only if no one else moved it
meanwhile (``version``): a state never goes backwards, even with two deliverers by mistake.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gpuhistory.alerts.config import WebhookConfig
from gpuhistory.storage.schema import events, webhook_deliveries, webhooks

_W = webhooks.c
_D = webhook_deliveries.c
MAX_ERROR = 200


@dataclass(frozen=True, slots=True)
class WebhookState:
    """A webhook's row as the deliverer needs it."""

    row_id: int
    name: str
    cursor: int  # the last event id done with (delivered, given up, rejected or not matching)
    pending_event_id: int | None  # the event being retried
    attempts: int  # failed attempts of pending_event_id
    next_attempt_ms: int | None
    version: int


@dataclass(frozen=True, slots=True)
class Attempt:
    """One row of the delivery log, and where it leaves the webhook."""

    event_id: int
    ts_ms: int
    attempt: int
    status: str  # delivered | failed | rejected | gave_up
    http_status: int | None
    error: str | None
    duration_ms: int
    next_retry_ms: int | None = None

    @property
    def done(self) -> bool:
        """Whether the cursor moves past the event (it will not be tried again)."""
        return self.status != "failed"


def _writing(conn: sa.Connection) -> sa.Connection:
    return conn.execution_options(sqlite_begin="IMMEDIATE")


def _definition(hook: WebhookConfig) -> dict[str, Any]:
    return {"url": hook.display_url, "kinds": list(hook.event_kinds),
            "gpus": None if hook.gpus is None else list(hook.gpus),
            "signed": hook.secret is not None, "settings": hook.settings()}


class DeliveryStore:
    def __init__(self, engine: sa.Engine, host: str) -> None:
        self.engine = engine
        self.host = host

    def sync(self, hooks: Iterable[WebhookConfig], now_ms: int) -> dict[str, int]:
        """Make this host's rows match the configuration; returns name → row id.

        A new webhook starts at the end of the log (it is not sent the past); a known one
        keeps its cursor, whatever else changed; one no longer configured is marked
        inactive, keeping its cursor and its log, and resumes from there if it comes back.
        """
        wanted = {hook.id: _definition(hook) for hook in hooks}
        ids: dict[str, int] = {}
        with self.engine.connect() as conn, _writing(conn).begin():
            rows = {r.name: r for r in conn.execute(sa.select(webhooks)
                                                    .where(_W.host == self.host))}
            end = conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0))
                               ).scalar() or 0
            for name, definition in wanted.items():
                row = rows.pop(name, None)
                if row is None:
                    result = conn.execute(webhooks.insert().values(
                        host=self.host, name=name, active=True, cursor_event_id=end,
                        attempts=0, created_ms=now_ms, updated_ms=now_ms, version=1,
                        **definition))
                    ids[name] = int(result.inserted_primary_key[0])
                    continue
                ids[name] = row.id
                if not row.active or any(getattr(row, k) != v for k, v in definition.items()):
                    conn.execute(webhooks.update().where(_W.id == row.id).values(
                        active=True, updated_ms=now_ms, version=_W.version + 1,
                        **definition))
            for row in rows.values():
                if row.active:
                    conn.execute(webhooks.update().where(_W.id == row.id).values(
                        active=False, next_attempt_ms=None, updated_ms=now_ms,
                        version=_W.version + 1))
        return ids

    def state(self, row_id: int) -> WebhookState:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(
                _W.id, _W.name, _W.cursor_event_id, _W.pending_event_id, _W.attempts,
                _W.next_attempt_ms, _W.version).where(_W.id == row_id)).one()
        return WebhookState(row.id, row.name, row.cursor_event_id, row.pending_event_id,
                            row.attempts, row.next_attempt_ms, row.version)

    def record(self, state: WebhookState, attempt: Attempt) -> WebhookState | None:
        """Log ``attempt`` and move the webhook past its event (or schedule the retry).

        Returns the new state, or None when another writer moved the state meanwhile
        (the attempt is logged all the same).
        """
        if attempt.done:
            cursor, pending, attempts = attempt.event_id, None, 0
        else:
            cursor, pending, attempts = state.cursor, attempt.event_id, attempt.attempt
        changes: dict[str, Any] = {
            "cursor_event_id": cursor, "pending_event_id": pending, "attempts": attempts,
            "next_attempt_ms": attempt.next_retry_ms, "last_status": attempt.status,
            "last_http_status": attempt.http_status, "last_error": attempt.error,
            "updated_ms": attempt.ts_ms, "version": state.version + 1,
        }
        if attempt.attempt > 0:
            changes["last_attempt_ms"] = attempt.ts_ms
        if attempt.status == "delivered":
            changes["last_delivered_ms"] = attempt.ts_ms
        with self.engine.connect() as conn, _writing(conn).begin():
            conn.execute(webhook_deliveries.insert().values(
                webhook_id=state.row_id, event_id=attempt.event_id, ts_ms=attempt.ts_ms,
                attempt=attempt.attempt, status=attempt.status,
                http_status=attempt.http_status,
                error=None if attempt.error is None else attempt.error[:MAX_ERROR],
                duration_ms=attempt.duration_ms, next_retry_ms=attempt.next_retry_ms))
            moved = conn.execute(webhooks.update().where(
                _W.id == state.row_id, _W.version == state.version).values(**changes)).rowcount
        if moved != 1:
            return None
        return WebhookState(state.row_id, state.name, cursor, pending, attempts,
                            attempt.next_retry_ms, state.version + 1)

    def advance(self, state: WebhookState, to_id: int, now_ms: int) -> WebhookState | None:
        """Move the cursor over events the webhook does not deliver (none up to ``to_id``).

        An event being retried that is among them no longer matches (the configuration
        changed): its retry state goes too.
        """
        if to_id <= state.cursor:
            return state
        changes: dict[str, Any] = {"cursor_event_id": to_id, "updated_ms": now_ms,
                                   "version": state.version + 1}
        pending, attempts, next_ms = state.pending_event_id, state.attempts, \
            state.next_attempt_ms
        if pending is not None and pending <= to_id:
            pending, attempts, next_ms = None, 0, None
            changes.update(pending_event_id=None, attempts=0, next_attempt_ms=None)
        with self.engine.connect() as conn, _writing(conn).begin():
            moved = conn.execute(webhooks.update().where(
                _W.id == state.row_id, _W.version == state.version).values(**changes)).rowcount
        if moved != 1:
            return None
        return WebhookState(state.row_id, state.name, to_id, pending, attempts, next_ms,
                            state.version + 1)


def prune_deliveries(engine: sa.Engine, before_ms: int, batch_rows: int = 5_000) -> int:
    """Delete delivery-log rows older than ``before_ms``, ``batch_rows`` per transaction."""
    deleted = 0
    while True:
        with engine.connect() as conn, _writing(conn).begin():
            ids = conn.execute(sa.select(_D.id).where(_D.ts_ms < before_ms)
                               .order_by(_D.id).limit(batch_rows)).scalars().all()
            if ids:
                conn.execute(webhook_deliveries.delete().where(_D.id.in_(ids)))
        deleted += len(ids)
        if len(ids) < batch_rows:
            return deleted
