"""What a report holds: the post-mortem document (without its samples) and the timeline's
buckets, the data the dashboard's post-mortem page fetches from the API, read here from
the database in one go.

The timeline is ``POINTS`` buckets of min, mean and max over the post-mortem's window, as
the post-mortem page asks the history API for them, so a peak is never lost while the
file stays small whatever the incident's length; each bucket keeps only the fields the
chart draws. Every raw sample stays one request away (``samples.csv``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from gpuhistory.analytics.history import history_buckets
from gpuhistory.analytics.postmortem import context_window, postmortem
from gpuhistory.domain.config import Config

POINTS = 600  # as the post-mortem page (web/static/js/incident.js) asks for
BUCKET_FIELDS = ("timestamp", "temperature_min", "temperature_max", "temperature_avg",
                 "power_max_watts", "memory_used_max_mb", "clock_event_reasons")


def report_data(conn: sa.Connection, row: sa.Row[Any], config: Config, now_ms: int,
                leases: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"postmortem": ..., "history": {"bucket_seconds", "buckets"}}`` of one incident
    (``row`` from get_incident; ``leases`` the lease documents active during it)."""
    doc = postmortem(conn, row, config, now_ms, leases, max_samples=0)
    doc.pop("samples", None)
    since, until = context_window(row, config, now_ms)
    plan, _, buckets = history_buckets(conn, row.gpu_id, since, until, "auto", POINTS)
    return {
        "postmortem": doc,
        "history": {
            "resolution": plan.source,
            "bucket_seconds": plan.width_ms / 1000,
            "buckets": [{k: b[k] for k in BUCKET_FIELDS} for b in buckets],
        },
    }
