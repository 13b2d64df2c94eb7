"""Chat messages: the body Slack's and Mattermost's incoming webhooks take, ``{"text": ...}``,
with one readable line per event (docs/alerts.md#chat).

    gpuhistory: GPU 1 (NVIDIA H100) on gpu-node-01 overheat · 86 °C (threshold 85 °C) ·
    state CRITICAL · https://dash.example.com/#/incidents/42

(one line; wrapped here). Links are bare URLs, which both chats turn into links.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from gpuhistory.alerts.links import dashboard_link, state_at

MAX_DETAILS = 4  # scalar payload fields shown for kinds without their own wording
_HEADLINES = {
    "overheat": "overheat", "critical": "CRITICAL", "gpu_lost": "lost (not answering)",
    "gpu_found": "found again", "resume": "resumed", "throttle": "throttling",
    "xid": "XID error", "state_change": "state change",
}


def _details(kind: str, p: dict[str, Any]) -> list[str]:
    out = []
    if kind == "state_change" and p.get("to"):
        out.append(f"{p.get('from') or 'new'} → {p['to']}")
    if kind == "xid":
        out.append(f"XID {p.get('code', '?')}")
    if p.get("temperature_celsius") is not None:
        out.append(f"{p['temperature_celsius']} °C" + (
            f" (threshold {p['threshold_celsius']:g} °C)"
            if p.get("threshold_celsius") is not None else ""))
    if p.get("memory_percent") is not None:
        out.append(f"memory {p['memory_percent']} %")
    if p.get("cause"):
        out.append(f"cause {p['cause']}")
    if kind == "gpu_lost" and p.get("error"):
        out.append(f"error: {p['error']}")
    if kind not in _HEADLINES:
        out += [f"{k} {v}" for k, v in p.items()
                if isinstance(v, str | int | float) and not isinstance(v, bool)][:MAX_DETAILS]
    return out


def text(conn: sa.Connection, row: Any, host: str, dashboard_url: str | None) -> str:
    """The event as one line: who, what, the details, the GPU's state, the link."""
    payload = row.payload if isinstance(row.payload, dict) else {}
    if row.gpu_index is not None:
        who = f"GPU {row.gpu_index}" + (f" ({row.gpu_name})" if row.gpu_name else "") + \
            f" on {host}"
    else:
        who = host
    parts = [f"gpuhistory: {who} {_HEADLINES.get(row.kind, row.kind)}",
             *_details(row.kind, payload)]
    state = state_at(conn, row)
    if state is not None:
        parts.append(f"state {state}")
    link = dashboard_link(conn, dashboard_url, row)
    if link is not None:
        parts.append(link)
    return " · ".join(" ".join(part.split()) for part in parts)  # one line, always


def message(conn: sa.Connection, row: Any, host: str, dashboard_url: str | None
            ) -> dict[str, str]:
    return {"text": text(conn, row, host, dashboard_url)}
