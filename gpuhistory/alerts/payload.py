"""What a webhook receives: the event as ``GET /api/gpu/events`` shows it, plus ``host``.

The body is compact JSON, the same bytes on every attempt of one event; the headers carry
the kind, the attempt, the idempotency key and (with a secret) the signature.
"""

from __future__ import annotations

import json
from typing import Any

from gpuhistory import __version__
from gpuhistory.alerts.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from gpuhistory.clock import iso_utc

USER_AGENT = f"gpuhistory/{__version__}"
EVENT_HEADER = "X-Gpuhistory-Event"
WEBHOOK_HEADER = "X-Gpuhistory-Webhook"
ATTEMPT_HEADER = "X-Gpuhistory-Attempt"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def event_document(event_id: int, ts_ms: int, kind: str, gpu_index: int | None,
                   uuid: str | None, payload: dict[str, Any], host: str) -> dict[str, Any]:
    return {"id": event_id, "timestamp": iso_utc(ts_ms), "kind": kind, "gpu_id": gpu_index,
            "uuid": uuid, "payload": payload, "host": host}


def encode(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def idempotency_key(webhook: str, event_id: int) -> str:
    """The same for every attempt, and every process, that delivers one event to one
    webhook: receivers drop a key they have seen."""
    return f"{webhook}:{event_id}"


def headers(webhook: str, event_id: int, kind: str, attempt: int, now_ms: int, body: bytes,
            secret: str | None) -> dict[str, str]:
    timestamp = str(now_ms // 1000)
    out = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: kind,
        WEBHOOK_HEADER: webhook,
        ATTEMPT_HEADER: str(attempt),
        IDEMPOTENCY_HEADER: idempotency_key(webhook, event_id),
        TIMESTAMP_HEADER: timestamp,
    }
    if secret is not None:
        out[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    return out
