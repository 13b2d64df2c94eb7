"""Request and response models of the alerts endpoints (gpuhistory/api/alerts.py)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from gpuhistory.alerts.config import NAME_PATTERN
from gpuhistory.api.schemas import HostFilter, Strict, TimeArg

Iso = str | None


class WebhooksQuery(Strict):
    host: HostFilter | None = None


class DeliveriesQuery(Strict):
    host: HostFilter | None = None
    webhook: str | None = Field(None, pattern=NAME_PATTERN, description="one webhook's rows")
    status: str | None = Field(None, pattern="^(delivered|failed|rejected|gave_up)$")
    event_id: int | None = Field(None, ge=1, le=2**62, description="one event's attempts")
    since: TimeArg | None = Field(None, description="attempts at or after")
    until: TimeArg | None = Field(None, description="attempts at or before")
    before_id: int | None = Field(None, ge=1, le=2**62,
                                  description="rows with a smaller id (the next page)")
    limit: int = Field(100, ge=1, le=10_000)


class Pending(BaseModel):
    event_id: int = Field(description="the event at the head, being retried")
    failed_attempts: int
    next_attempt_at: Iso


class WebhookSettings(BaseModel):
    format: str = Field("signed", description="signed, alertmanager or chat")
    timeout_seconds: float
    retry_initial_seconds: float
    retry_max_seconds: float
    give_up_after_seconds: float
    resend_seconds: float | None = Field(None, description="alertmanager only")
    xid_alert_seconds: float | None = Field(None, description="alertmanager only")


class Webhook(BaseModel):
    name: str
    host: str
    url: str = Field(description="scheme://host[:port] only; path and query are hidden")
    kinds: list[str]
    gpus: list[int | str] | None
    signed: bool = Field(description="whether a secret signs its requests (never shown)")
    active: bool = Field(description="false: no longer configured (keeps its cursor)")
    settings: WebhookSettings
    cursor: int = Field(description="the last event id it is done with")
    lag_events: int = Field(description="its events after the cursor (counted to 10,000)")
    lag_seconds: float | None = Field(description="age of the oldest of them")
    pending: Pending | None
    last_attempt_at: Iso
    last_status: str | None
    last_http_status: int | None
    last_error: str | None
    last_delivered_at: Iso
    created_at: Iso
    updated_at: Iso


class WebhookList(BaseModel):
    host: str = Field(description="the host asked for (* for every host)")
    count: int
    webhooks: list[Webhook]


class Delivery(BaseModel):
    id: int
    webhook: str
    host: str
    event_id: int
    kind: str | None
    gpu_id: int | None
    attempt: int = Field(description="1, 2, ...; 0: given up without being sent")
    status: str = Field(description="delivered, failed (retried), rejected or gave_up")
    http_status: int | None
    error: str | None
    duration_ms: int
    timestamp: Iso
    next_retry_at: Iso


class DeliveryList(BaseModel):
    count: int
    next_before_id: int | None = Field(description="before_id for the next page; null: last")
    deliveries: list[Delivery]


__all__ = ["DeliveriesQuery", "DeliveryList", "WebhookList", "WebhooksQuery"]
