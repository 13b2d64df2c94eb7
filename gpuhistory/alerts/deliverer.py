"""The delivery job: each webhook's events, after its cursor, POSTed in order, at least once.

``dispatch`` is the scheduler's job (every second in the sampler process; never in an
``api`` process). It only hands work out: each webhook that has new events, or a retry
due, gets one run on the deliverer's own thread pool, and a webhook whose run is still
going (a receiver that hangs until the timeout) is left to it. So a slow or failing
receiver holds up neither the other webhooks nor the scheduler's threads that sample.

A run reads the webhook's state from the database, then up to ``batch_events`` of its events
after the cursor, oldest first, and sends them one by one; each outcome is one transaction
(:meth:`DeliveryStore.record`). The first failure stops the run: the event stays at the head,
to be retried after a backoff (:mod:`gpuhistory.alerts.policy`), and nothing after it is
sent before it — until it is delivered, rejected, or given up ``give_up_after_seconds``
after it happened. A crash between a receiver's 2xx and the commit sends that event again
after the restart, with the same ``Idempotency-Key``: at least once.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from apscheduler.schedulers.base import BaseScheduler

from gpuhistory.alerts import alertmanager, chat, payload, transport
from gpuhistory.alerts.config import WebhookConfig
from gpuhistory.alerts.horizon import SETTLE_MS, SafeHorizon
from gpuhistory.alerts.policy import backoff_ms, verdict
from gpuhistory.alerts.selection import select_events
from gpuhistory.alerts.store import Attempt, DeliveryStore, WebhookState
from gpuhistory.clock import Clock

log = logging.getLogger(__name__)

JOB_ID = "gpuhistory.deliver_webhooks"
DISPATCH_EVERY_SECONDS = 1.0
BATCH_EVENTS = 100  # events one run sends at most, per webhook
MAX_WORKERS = 16


@dataclass(slots=True)
class HookRun:
    """What one run did for one webhook."""

    webhook: str
    attempted: int = 0
    delivered: int = 0
    failed: int = 0  # attempts to be retried
    rejected: int = 0
    gave_up: int = 0
    cursor: int = 0
    next_attempt_ms: int | None = None  # backing off until then
    skipped: int = 0  # events that changed nothing for the receiver (nothing sent)
    refreshed: int | None = None  # alertmanager: alerts re-sent by this run (None: no re-send)
    error: str | None = None  # the run itself failed (the database); the next one retries


class WebhookDeliverer:
    """Delivers the events of ``host`` to the configured webhooks. One per host and
    database: the ``serve`` or ``sampler`` process builds it and ``start``s it."""

    def __init__(self, engine: sa.Engine, host: str, hooks: Sequence[WebhookConfig],
                 clock: Clock, *, rng: random.Random | None = None,
                 batch_events: int = BATCH_EVENTS, settle_ms: int = SETTLE_MS) -> None:
        self.engine = engine
        self.host = host
        self.clock = clock
        self.hooks = {hook.id: hook for hook in hooks}
        self.store = DeliveryStore(engine, host)
        self.horizon = SafeHorizon(engine, clock, settle_ms)
        self.batch_events = batch_events
        self._rng = rng or random.Random()
        self._rows: dict[str, int] = {}  # webhook → webhooks.id
        self._after: dict[str, tuple[int, int | None]] = {}  # webhook → (cursor, retry at)
        self._resend_at: dict[str, int] = {}  # alertmanager webhook → next re-send of alerts
        self._inflight: dict[str, Future[HookRun]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()

    # -- life cycle ----------------------------------------------------------------------
    def start(self, scheduler: BaseScheduler | None = None) -> None:
        """Record the configured webhooks in the database (new ones start at the end of the
        log; those no longer configured become inactive), then dispatch every second."""
        self._rows = self.store.sync(self.hooks.values(), self.clock.now_ms())
        if not self.hooks:
            return
        log.info("delivering events to %d webhook(s): %s", len(self.hooks),
                 ", ".join(f"{h.id} ({h.display_url})" for h in self.hooks.values()))
        if scheduler is not None:
            scheduler.add_job(self.safe_dispatch, "interval", seconds=DISPATCH_EVERY_SECONDS,
                              id=JOB_ID, name="deliver events to webhooks",
                              max_instances=1, coalesce=True, replace_existing=True)

    def close(self) -> None:
        """Stop dispatching; runs in flight finish the attempt they are in (each at most
        its ``timeout_seconds``) and record it."""
        self._closed.set()
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    # -- dispatching ---------------------------------------------------------------------
    def dispatch(self) -> dict[str, Future[HookRun]]:
        """Start a run for each webhook with something to do and no run in flight."""
        if not self.hooks or self._closed.is_set():
            return {}
        if not self._rows:
            raise RuntimeError("WebhookDeliverer.start() was not called")
        newest = self.horizon.newest_id()
        now = self.clock.now_ms()
        started: dict[str, Future[HookRun]] = {}
        with self._lock:
            if self._closed.is_set():
                return {}
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=min(MAX_WORKERS, len(self.hooks)),
                    thread_name_prefix="gpuhistory-webhook")
            for name, hook in self.hooks.items():
                running = self._inflight.get(name)
                if running is not None and not running.done():
                    continue
                if name in self._after:
                    cursor, retry_at = self._after[name]
                    if retry_at is not None and now < retry_at:
                        continue
                    if retry_at is None and cursor >= newest and not self._resend_due(hook, now):
                        continue
                started[name] = self._inflight[name] = self._executor.submit(
                    self._safe_deliver, hook)
        return started

    def safe_dispatch(self) -> None:
        """``dispatch`` for the scheduler: an error is logged, never raised."""
        try:
            self.dispatch()
        except Exception as exc:
            log.warning("webhook dispatch failed (the next run retries): %s",
                        type(exc).__name__)

    def run_once(self) -> dict[str, HookRun]:
        """Dispatch, and wait for the runs it started (tests; a catch-up by hand)."""
        return {name: future.result() for name, future in self.dispatch().items()}

    # -- one webhook ---------------------------------------------------------------------
    def _safe_deliver(self, hook: WebhookConfig) -> HookRun:
        try:
            run = self.deliver(hook)
        except Exception as exc:  # nobody waits on the future: say it here
            if isinstance(exc, sa.exc.SQLAlchemyError):
                log.warning("webhook %s: delivery run failed (the next run retries): %s",
                            hook.id, type(exc).__name__)
            else:
                log.exception("webhook %s: delivery run failed (the next run retries)",
                              hook.id)
            self._after.pop(hook.id, None)
            return HookRun(hook.id, error=type(exc).__name__)
        self._after[hook.id] = (run.cursor, run.next_attempt_ms)
        return run

    def deliver(self, hook: WebhookConfig) -> HookRun:
        """One run for one webhook, in the calling thread."""
        run = HookRun(hook.id)
        state = self.store.state(self._rows[hook.id])
        run.cursor, run.next_attempt_ms = state.cursor, state.next_attempt_ms
        now = self.clock.now_ms()
        if state.next_attempt_ms is not None and now < state.next_attempt_ms:
            return run
        if state.pending_event_id is None and self._resend_due(hook, now):
            self._resend(hook, state.cursor, run)  # what is active before the new events
        upto = self.horizon.safe_id(state.cursor)
        rows: Sequence[sa.Row[Any]] = []
        if upto > state.cursor:
            with self.engine.connect() as conn:
                rows = conn.execute(select_events(hook.event_kinds, hook.gpus, self.host,
                                                  state.cursor, upto, self.batch_events)).all()
        finished = True
        for row in rows:
            if self._closed.is_set():
                finished = False
                break
            moved = self._deliver_event(hook, state, row, run)
            if moved is None:  # another writer moved the state: read it afresh next run
                log.warning("webhook %s: its state was changed by another process; is a "
                            "second sampler running on this host?", hook.id)
                finished = False
                break
            state = moved
            if state.pending_event_id is not None:
                finished = False
                break
        if finished and len(rows) < self.batch_events and upto > state.cursor:
            state = self.store.advance(state, upto, now) or state
        run.cursor, run.next_attempt_ms = state.cursor, state.next_attempt_ms
        return run

    # -- alertmanager: re-sending the active alerts ----------------------------------------
    def _resend_due(self, hook: WebhookConfig, now: int) -> bool:
        return hook.format == "alertmanager" and now >= self._resend_at.get(hook.id, 0)

    def _resend(self, hook: WebhookConfig, cursor: int, run: HookRun) -> None:
        """POST every alert active after ``cursor`` again with a later ``endsAt``, so
        Alertmanager keeps them firing. Not an event: no row in the delivery log; a failure
        is logged and the next re-send, ``resend_seconds`` later, tries again (each alert
        stays valid for 4 of them)."""
        now = self.clock.now_ms()
        self._resend_at[hook.id] = now + round(hook.resend_seconds * 1000)
        with self.engine.connect() as conn:
            alerts = alertmanager.refresh(conn, hook, self.host, cursor, now)
        run.refreshed = len(alerts)
        if not alerts:
            return
        body = payload.encode(alerts)
        outcome = transport.post(hook.post_url, body, {
            "Content-Type": "application/json", "User-Agent": payload.USER_AGENT,
            payload.WEBHOOK_HEADER: hook.id, **hook.auth_headers()}, hook.timeout_seconds)
        if verdict(outcome.http_status) != "delivered":
            log.warning("webhook %s (%s): re-sending %d active alert(s) failed: %s; next try "
                        "in %g s", hook.id, hook.display_url, len(alerts), outcome.error,
                        hook.resend_seconds)
            run.refreshed = 0

    def _deliver_event(self, hook: WebhookConfig, state: WebhookState, row: sa.Row[Any],
                       run: HookRun) -> WebhookState | None:
        now = self.clock.now_ms()
        previous = state.attempts if state.pending_event_id == row.id else 0
        give_up_at = row.ts_ms + round(hook.give_up_after_seconds * 1000)
        if now >= give_up_at:
            run.gave_up += 1
            note = f" after {previous} failed attempt(s)" if previous else ""
            log.warning("webhook %s: event %d (%s) given up unsent: older than "
                        "give_up_after_seconds (%g s)%s", hook.id, row.id, row.kind,
                        hook.give_up_after_seconds, note)
            return self.store.record(state, Attempt(
                row.id, now, 0, "gave_up", None,
                f"not sent: older than give_up_after_seconds ({hook.give_up_after_seconds:g} "
                f"s){note}", 0))
        attempt = previous + 1
        body = self._body(hook, row, now)
        if body is None:  # nothing for this receiver (a resolve with no alert active)
            run.skipped += 1
            return self.store.advance(state, row.id, now)
        secret = None if hook.secret is None else hook.secret.get_secret_value()
        headers = payload.headers(hook.id, row.id, row.kind, attempt, now, body, secret)
        outcome = transport.post(hook.post_url, body, {**headers, **hook.auth_headers()},
                                 hook.timeout_seconds)
        run.attempted += 1
        answer = verdict(outcome.http_status)
        next_retry: int | None = None
        if answer == "delivered":
            status = "delivered"
        elif answer == "rejected":
            status = "rejected"
        else:
            retry_after = outcome.retry_after_s if outcome.http_status in (429, 503) else None
            next_retry = self.clock.now_ms() + backoff_ms(
                attempt, hook.retry_initial_seconds, hook.retry_max_seconds, self._rng,
                retry_after)
            status = "failed" if next_retry < give_up_at else "gave_up"
            if status == "gave_up":
                next_retry = None
        self._log_outcome(hook, row, attempt, status, outcome.error, next_retry, now)
        setattr(run, status, getattr(run, status) + 1)  # the counter named as the status
        return self.store.record(state, Attempt(
            row.id, now, attempt, status, outcome.http_status,
            None if status == "delivered" else outcome.error, outcome.duration_ms,
            next_retry))

    def _body(self, hook: WebhookConfig, row: sa.Row[Any], now: int) -> bytes | None:
        """The request body in the webhook's format; None: nothing to send for this event.
        The signed body is the same bytes on every attempt; the others are read from the
        log afresh (an alert's end, a link to an incident detected meanwhile)."""
        host = self._event_host(row)
        if hook.format == "signed":
            return payload.encode(payload.event_document(
                row.id, row.ts_ms, row.kind, row.gpu_index, row.uuid, row.payload, host))
        with self.engine.connect() as conn:
            if hook.format == "chat":
                return payload.encode(chat.message(conn, row, host, hook.dashboard_url))
            alerts = alertmanager.for_event(conn, hook, self.host, row, now)
        return payload.encode(alerts) if alerts else None

    def _event_host(self, row: sa.Row[Any]) -> str:
        """The GPU's host; for an event without a GPU, the host its payload names, else
        this one."""
        if row.gpu_host is not None:
            return str(row.gpu_host)
        named = row.payload.get("host") if isinstance(row.payload, dict) else None
        return named if isinstance(named, str) else self.host

    @staticmethod
    def _log_outcome(hook: WebhookConfig, row: sa.Row[Any], attempt: int, status: str,
                     error: str | None, next_retry: int | None, now: int) -> None:
        what = f"webhook {hook.id} ({hook.display_url}): event {row.id} ({row.kind})"
        if status == "delivered":
            if attempt > 1:
                log.info("%s delivered at attempt %d", what, attempt)
            else:
                log.debug("%s delivered", what)
        elif status == "failed":
            level = logging.WARNING if attempt == 1 else logging.INFO
            log.log(level, "%s attempt %d failed: %s; retrying in %.1f s", what, attempt,
                    error, ((next_retry or now) - now) / 1000)
        elif status == "rejected":
            log.warning("%s rejected by the receiver (%s): not retried", what, error)
        else:
            log.warning("%s given up after attempt %d (%s): the next retry would come "
                        "after give_up_after_seconds", what, attempt, error)
