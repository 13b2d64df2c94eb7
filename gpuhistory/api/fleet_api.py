"""GET /api/fleet/hosts: every host sharing the database — GPUs, worst state, freshness,
sampler and leases — in a fixed number of statements (the dashboard's fleet page polls it)."""

from __future__ import annotations

from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.api.common import View, ctx
from gpuhistory.api.responses import FleetHosts, errors
from gpuhistory.api.schemas import ALL_HOSTS, FleetHostsQuery
from gpuhistory.fleet_hosts import fleet_hosts

bp = APIBlueprint("fleet", __name__, url_prefix="/api/fleet", abp_tags=[Tag(name="fleet")])


@bp.get("/hosts", responses={200: FleetHosts, **errors(400, 422)})
def hosts(query: FleetHostsQuery) -> View:
    """Each host in the database (or the one ``host`` names), ordered by name: its GPU count,
    worst effective state, last tick age and whether it is stale (its sampler stopped, died
    or hangs), its sampler (process, version, heartbeat), and its leases (MiB used of the
    capacity). Hosts known only from imported recordings are marked ``recorded``. With
    ``gpus=true``, each host's GPUs as compact rows (raw and effective state, temperature,
    memory, power, state age, leases)."""
    c = ctx()
    now = c.clock.now_ms()
    c.projection.refresh(now)
    with c.engine.connect() as conn:
        doc = fleet_hosts(conn, None if query.host == ALL_HOSTS else query.host, now,
                          c.config(), with_gpus=query.gpus, projection=c.projection)
    return jsonify(doc)
