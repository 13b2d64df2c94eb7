"""Alerts for Alertmanager's v2 API (``POST /api/v2/alerts``), made from the event log.

Four events fire an alert of their GPU; two resolve them (docs/alerts.md#alertmanager):

| event | alert | severity | resolved by |
|---|---|---|---|
| ``critical`` | GPUCritical | critical | ``resume``, ``gpu_found`` |
| ``overheat`` | GPUOverheat | critical | ``resume``, ``gpu_found`` |
| ``gpu_lost`` | GPULost | critical | ``gpu_found`` |
| ``xid`` | GPUXidError | warning | none: it ends ``xid_alert_seconds`` after the error |

An alert is identified by its labels, all taken from the firing event and its GPU's row,
so the resolving post matches it. Whether an alert is active at a point of the log is read
from the log itself (the newest firing event of the GPU after its newest resolving one), so
the answer is the same on every attempt, after a restart, and from any process.

Alertmanager drops an alert whose ``endsAt`` has passed (and, without one, after its
``resolve_timeout``), and keeps alerts in memory only: firing alerts are sent with
``endsAt = now + 4 * resend_seconds`` and re-sent every ``resend_seconds`` (the way
Prometheus does), so they stay firing while gpuhistory runs and end on their own when it
stops sending.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gpuhistory.alerts.config import WebhookConfig
from gpuhistory.alerts.links import dashboard_link
from gpuhistory.alerts.selection import EVENTS_AND_GPUS, event_filter, select_rows
from gpuhistory.clock import iso_utc
from gpuhistory.storage.schema import events

TTL_RESENDS = 4  # a firing alert is valid for this many resend intervals


@dataclass(frozen=True, slots=True)
class Rule:
    alertname: str
    severity: str
    resolved_by: tuple[str, ...]
    summary: str


RULES: dict[str, Rule] = {
    "critical": Rule("GPUCritical", "critical", ("resume", "gpu_found"),
                     "GPU {gpu} on {host} is CRITICAL"),
    "overheat": Rule("GPUOverheat", "critical", ("resume", "gpu_found"),
                     "GPU {gpu} on {host} overheats"),
    "gpu_lost": Rule("GPULost", "critical", ("gpu_found",),
                     "GPU {gpu} on {host} stopped answering"),
    "xid": Rule("GPUXidError", "warning", (), "GPU {gpu} on {host} reported an XID error"),
}
_E = events.c


def labels(row: Any) -> dict[str, str]:
    """The alert's identity: the same for its firing, every re-send and its resolution."""
    rule = RULES[row.kind]
    out = {"alertname": rule.alertname, "severity": rule.severity, "host": str(row.gpu_host),
           "gpu": str(row.gpu_index), "uuid": str(row.uuid), "source": "gpuhistory"}
    if row.gpu_name:
        out["name"] = str(row.gpu_name)
    if row.kind == "xid":
        out["xid"] = str((row.payload or {}).get("code", "unknown"))
    return out


def _description(row: Any) -> str:
    p = row.payload or {}
    parts = []
    if p.get("temperature_celsius") is not None:
        parts.append(f"temperature {p['temperature_celsius']} °C"
                     + (f" (threshold {p['threshold_celsius']:g} °C)"
                        if p.get("threshold_celsius") is not None else ""))
    if p.get("memory_percent") is not None:
        parts.append(f"memory {p['memory_percent']} % used")
    if p.get("cause"):
        parts.append(f"cause {p['cause']}")
    if row.kind == "gpu_lost" and p.get("error"):
        parts.append(f"error: {p['error']}")
    if row.kind == "xid":
        parts.append(f"XID {p.get('code', 'unknown')}")
    when = iso_utc(row.ts_ms)
    return f"{row.kind} at {when}" + (": " + ", ".join(parts) if parts else "")


def alert(conn: sa.Connection, hook: WebhookConfig, row: Any, ends_ms: int) -> dict[str, Any]:
    """One postableAlert for the firing event ``row``, ending at ``ends_ms``."""
    rule = RULES[row.kind]
    annotations = {"summary": rule.summary.format(gpu=row.gpu_index, host=row.gpu_host),
                   "description": _description(row), "event_id": str(row.id)}
    out: dict[str, Any] = {"labels": labels(row), "annotations": annotations,
                           "startsAt": iso_utc(row.ts_ms), "endsAt": iso_utc(ends_ms)}
    link = dashboard_link(conn, hook.dashboard_url, row)
    if link is not None:
        annotations["dashboard"] = link
        out["generatorURL"] = link
    return out


def ttl_ms(hook: WebhookConfig) -> int:
    return round(TTL_RESENDS * hook.resend_seconds * 1000)


def _firing_ends(conn: sa.Connection, hook: WebhookConfig, row: Any, now_ms: int) -> int:
    """When a firing alert ends: an XID's fixed time; else the resolving event's time if
    the log already has one (a catch-up after an outage pages nobody for what is over),
    else ``now`` plus the time to live."""
    if row.kind == "xid":
        return row.ts_ms + round(hook.xid_alert_seconds * 1000)
    resolved = conn.execute(
        sa.select(_E.ts_ms).where(_E.gpu_id == row.gpu_row, _E.id > row.id,
                                  _E.kind.in_(RULES[row.kind].resolved_by))
        .order_by(_E.id).limit(1)).scalar()
    return resolved if resolved is not None else max(now_ms, row.ts_ms) + ttl_ms(hook)


def active(conn: sa.Connection, hook: WebhookConfig, host: str, upto_id: int, now_ms: int,
           gpu_row: int | None = None) -> list[Any]:
    """The firing events of the alerts still active after event ``upto_id`` (of one GPU,
    or of every GPU the webhook covers), oldest first."""
    stateful = [k for k in hook.alert_kinds if k != "xid"]
    scope = [_E.id <= upto_id, *event_filter(hook.event_kinds, hook.gpus, host)]
    if gpu_row is not None:
        scope.append(_E.gpu_id == gpu_row)
    newest: dict[tuple[int, str], int] = {}
    kinds = stateful + sorted({k for s in stateful for k in RULES[s].resolved_by})
    if stateful:
        newest = {(g, k): i for g, k, i in conn.execute(
            sa.select(_E.gpu_id, _E.kind, sa.func.max(_E.id))
            .select_from(EVENTS_AND_GPUS)
            .where(_E.kind.in_(kinds), *scope).group_by(_E.gpu_id, _E.kind))}
    ids = [i for (g, k), i in newest.items() if k in stateful and i > max(
        (newest.get((g, r), 0) for r in RULES[k].resolved_by), default=0)]
    rows = list(conn.execute(select_rows().where(_E.id.in_(ids)))) if ids else []
    if "xid" in hook.alert_kinds:
        since = now_ms - round(hook.xid_alert_seconds * 1000)
        latest: dict[tuple[int, str], Any] = {}
        for row in conn.execute(select_rows().where(_E.kind == "xid", _E.ts_ms > since,
                                                    *scope).order_by(_E.id)):
            latest[(row.gpu_row, labels(row)["xid"])] = row
        rows += latest.values()
    return sorted(rows, key=lambda r: r.id)


def for_event(conn: sa.Connection, hook: WebhookConfig, host: str, row: Any,
              now_ms: int) -> list[dict[str, Any]]:
    """What the event changes in Alertmanager: the alert it fires, or the resolution of
    each active alert of its GPU it resolves (none: nothing to send)."""
    if row.kind in RULES:
        return [alert(conn, hook, row, _firing_ends(conn, hook, row, now_ms))]
    if row.gpu_row is None:
        return []
    return [alert(conn, hook, fired, row.ts_ms)
            for fired in active(conn, hook, host, row.id - 1, now_ms, row.gpu_row)
            if row.kind in RULES[fired.kind].resolved_by]


def refresh(conn: sa.Connection, hook: WebhookConfig, host: str, cursor: int,
            now_ms: int) -> list[dict[str, Any]]:
    """Every alert active after the webhook's cursor, valid for another time to live."""
    rows: Sequence[Any] = active(conn, hook, host, cursor, now_ms)
    return [alert(conn, hook, row, row.ts_ms + round(hook.xid_alert_seconds * 1000)
                  if row.kind == "xid" else now_ms + ttl_ms(hook)) for row in rows]
