"""Alert webhooks over HTTP: the configured webhooks with their cursor, lag and last
outcome, and the delivery log (docs/alerts.md).

Read only, and from the database alone: the sampler process delivers and writes both, so
any ``api`` process on the database answers. Secrets are never stored; URLs only as
scheme://host[:port].
"""

from __future__ import annotations

from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.alerts.queries import list_deliveries, list_webhooks, webhook_names
from gpuhistory.api.alerts_schemas import (
    DeliveriesQuery,
    DeliveryList,
    WebhookList,
    WebhooksQuery,
)
from gpuhistory.api.common import View, ctx, host_filter, time_range
from gpuhistory.api.errors import ApiError
from gpuhistory.api.responses import errors

bp = APIBlueprint("alerts", __name__, url_prefix="/api/alerts", abp_tags=[Tag(name="alerts")])


@bp.get("/webhooks", responses={200: WebhookList, **errors(400, 422)})
def webhooks(query: WebhooksQuery) -> View:
    """The webhooks of ``host`` (default: this server's; ``*``: every host) as their
    sampler last registered them, active first."""
    c = ctx()
    host = host_filter(query.host)
    with c.engine.connect() as conn:
        docs = list_webhooks(conn, host, c.clock.now_ms())
    return jsonify({"host": host or "*", "count": len(docs), "webhooks": docs})


@bp.get("/deliveries", responses={200: DeliveryList, **errors(400, 404, 422)})
def deliveries(query: DeliveriesQuery) -> View:
    """The delivery log of ``host``'s webhooks (default: this server's; ``*``: every
    host), newest first: one row per attempt. 404 for a webhook name the host never had;
    422 when since is after until."""
    c = ctx()
    host = host_filter(query.host)
    since, until = time_range(query)
    with c.engine.connect() as conn:
        if query.webhook is not None and query.webhook not in webhook_names(conn, host):
            raise ApiError(404, "webhook_not_found",
                           f"no webhook named {query.webhook} on {host or 'any host'}",
                           {"webhook": query.webhook, "host": host or "*"})
        docs = list_deliveries(conn, host, webhook=query.webhook, status=query.status,
                               event_id=query.event_id, since_ms=since, until_ms=until,
                               before_id=query.before_id, limit=query.limit)
    last = docs[-1]["id"] if len(docs) == query.limit else None
    return jsonify({"count": len(docs), "next_before_id": last, "deliveries": docs})
