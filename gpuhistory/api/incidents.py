"""Overheat incidents: the list, the post-mortem of one, its samples as CSV, and its report
(one self-contained HTML file, gpuhistory/report).

Incidents are found by the detector job (every 10 s in ``serve``) and read here; see
gpuhistory/analytics/incidents.py for what counts as one.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.analytics.postmortem import (
    context_samples,
    context_window,
    get_incident,
    list_incidents,
    postmortem,
    samples_csv,
)
from gpuhistory.api.common import View, ctx, filter_ids, host_filter, time_range
from gpuhistory.api.errors import ApiError
from gpuhistory.api.fastjson import json_response
from gpuhistory.api.responses import IncidentList, IncidentReport, errors
from gpuhistory.api.schemas import HostQuery, IncidentPath, IncidentQuery, IncidentsQuery
from gpuhistory.leases.manager import LeaseManager
from gpuhistory.report import AssetMissing, render_report, report_data

bp = APIBlueprint("incidents", __name__, url_prefix="/api/gpu",
                  abp_tags=[Tag(name="incidents")])


def _incident(conn: sa.Connection, incident_id: int, host: str | None) -> sa.Row[Any]:
    row = get_incident(conn, incident_id, host_filter(host))
    if row is None:
        raise ApiError(404, "incident_not_found", f"no incident with id {incident_id}",
                       {"incident_id": incident_id})
    return row


def _leases(row: sa.Row[Any], now: int) -> list[dict[str, Any]]:
    c = ctx()
    manager = c.leases or LeaseManager(c.engine, c.host, c.clock, c.config)
    end = row.end_ms if row.end_ms is not None else now
    return [lease.to_dict(now) for lease in manager.active_between(row.gpu_id, row.start_ms,
                                                                    end)]


@bp.get("/incidents", responses={200: IncidentList, **errors(400, 422)})
def incidents(query: IncidentsQuery) -> View:
    """Overheat incidents, newest first: of one slot (every card that held it), one card
    (``uuid``) or all, on ``host`` (``*``: every host), overlapping [since, until]."""
    c = ctx()
    since, until = time_range(query)
    host = host_filter(query.host)
    with c.engine.connect() as conn:
        docs = list_incidents(conn, host, c.clock.now_ms(),
                              gpu_ids=filter_ids(conn, query, host),
                              since_ms=since, until_ms=until, severity=query.severity,
                              limit=query.limit)
    return jsonify({"count": len(docs), "incidents": docs})


@bp.get("/incidents/<int:incident_id>",
        responses={200: IncidentReport, **errors(400, 404, 422)})
def incident(path: IncidentPath, query: IncidentQuery) -> View:
    """The post-mortem of one incident: how hot and how long, what the hardware reported,
    the state transitions, leases and processes, and the samples around it."""
    c = ctx()
    now = c.clock.now_ms()
    with c.engine.connect() as conn:
        row = _incident(conn, path.incident_id, query.host)
        doc = postmortem(conn, row, c.config(), now, _leases(row, now),
                         max_samples=query.max_samples, samples_json=True)
    return json_response(doc)


@bp.get("/incidents/<int:incident_id>/samples.csv", responses={
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}}, **errors(400, 404, 422)})
def incident_samples(path: IncidentPath, query: HostQuery) -> View:
    """Every sample from ``incident_context_minutes`` before the incident to after it, as
    CSV with the GPUMetrics column names (clock-event reasons joined by ``|``)."""
    c = ctx()
    with c.engine.connect() as conn:
        row = _incident(conn, path.incident_id, query.host)
        since, until = context_window(row, c.config(), c.clock.now_ms())
        rows = context_samples(conn, row, since, until)
    return Response(samples_csv(row, rows), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="incident-{row.id}.csv"'})


@bp.get("/incidents/<int:incident_id>/report.html", responses={
    200: {"content": {"text/html": {"schema": {"type": "string"}}}}, **errors(400, 404, 422)})
def incident_report(path: IncidentPath, query: HostQuery) -> View:
    """The incident report: one HTML file that loads nothing (chart, styles and data
    inlined) with the post-mortem, its timeline chart and the tables, to attach to a
    ticket. Sent as a download, with a policy that lets only its own inline code run."""
    c = ctx()
    now = c.clock.now_ms()
    config = c.config()
    with c.engine.connect() as conn:
        row = _incident(conn, path.incident_id, query.host)
        data = report_data(conn, row, config, now, _leases(row, now))
    try:
        report = render_report(data, config, now)
    except AssetMissing as exc:
        raise ApiError(503, "dashboard_not_installed", str(exc)) from None
    return Response(report.html, mimetype="text/html", headers={
        "Content-Disposition": f'attachment; filename="incident-{row.id}.html"',
        # Replaces the app's policy (no inline code) for this response alone.
        "Content-Security-Policy": report.content_security_policy})
