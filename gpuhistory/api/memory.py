"""GPU-memory leases: allocate, renew, deallocate, list, and what is available.

A lease is a row with an expiry that survives restarts; granting never oversubscribes a GPU
(DESIGN §3). Renew and deallocate need the lease's token, or the API token.
"""

from __future__ import annotations

from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from gpuhistory.api.auth import is_admin
from gpuhistory.api.common import View, ctx
from gpuhistory.api.errors import ApiError
from gpuhistory.api.responses import Capacity, Lease, LeaseList, errors
from gpuhistory.api.schemas import (
    ALL_HOSTS,
    AllocateBody,
    DeallocateBody,
    GpuQuery,
    LeasesQuery,
    RenewBody,
)
from gpuhistory.leases.manager import LeaseManager
from gpuhistory.leases.model import Covers

bp = APIBlueprint("memory", __name__, url_prefix="/api/gpu/memory",
                  abp_tags=[Tag(name="memory leases")])


def leases(host: str | None = None) -> LeaseManager:
    """The lease manager of ``host`` (default: this server's host)."""
    manager = ctx().leases
    if manager is None:
        raise ApiError(503, "leases_unavailable", "this process does not manage leases")
    return manager if host is None else manager.for_host(host)


@bp.post("/allocate", responses={201: Lease, **errors(400, 401, 403, 404, 409, 413, 422)},
         security=[{"bearer": []}])
def allocate(body: AllocateBody) -> View:
    """Reserve ``memory_mb`` MiB on a GPU for ``ttl_seconds``; 201 with the lease and its token.

    ``gpu_id: "any"``: the service chooses the GPU (not a hot or cooling one; best fit) and
    the answer names it. ``pids``, ``slurm_job``, ``container``: the processes the lease
    covers, whose memory use is compared with it.

    409 ``duplicate_allocation`` when the id is held by an active lease; 409 ``over_capacity``
    (with ``available_mb``) when it does not fit; 409 ``no_gpu_fits`` (why, per GPU) when
    no GPU can take it.
    """
    c = ctx()
    covers = Covers(tuple(body.pids or ()), body.slurm_job, body.container)
    lease, token = leases(body.host).grant(body.allocation_id, body.memory_mb,
                                           gpu_index=body.gpu_id,
                                           ttl_seconds=body.ttl_seconds, owner=body.owner,
                                           uuid=body.uuid, covers=covers)
    ctx().projection.leases_changed()  # the next status answer reads them
    return jsonify(lease.to_dict(c.clock.now_ms(), token=token)), 201


@bp.post("/renew", responses={200: Lease, **errors(400, 401, 403, 404, 409, 413, 422)},
         security=[{"bearer": []}])
def renew(body: RenewBody) -> View:
    """Extend an active lease by ``ttl_seconds`` (default: its own TTL) from now."""
    c = ctx()
    admin = is_admin(c.api_token)
    if body.lease_token is None and not admin:
        raise ApiError(400, "invalid_argument", "lease_token is required",
                       {"fields": {"lease_token": "Field required"}})
    lease = leases(body.host).renew(body.allocation_id, body.lease_token,
                                    ttl_seconds=body.ttl_seconds, admin=admin)
    ctx().projection.leases_changed()  # the next status answer reads them
    return jsonify(lease.to_dict(c.clock.now_ms()))


@bp.post("/deallocate", responses={200: Lease, **errors(400, 401, 403, 404, 409, 413, 422)},
         security=[{"bearer": []}])
def deallocate(body: DeallocateBody) -> View:
    """Release an active lease (its token, or the API token, is required)."""
    c = ctx()
    admin = is_admin(c.api_token)
    if body.lease_token is None and not admin:
        raise ApiError(400, "invalid_argument", "lease_token is required",
                       {"fields": {"lease_token": "Field required"}})
    lease = leases(body.host).release(body.allocation_id, body.lease_token, admin=admin)
    ctx().projection.leases_changed()  # the next status answer reads them
    return jsonify(lease.to_dict(c.clock.now_ms()))


@bp.get("/leases", responses={200: LeaseList, **errors(400, 422)})
def list_leases(query: LeasesQuery) -> View:
    """Leases, newest first, filtered by host (``*``: every host), GPU, owner and status
    (active, expired, released)."""
    c = ctx()
    every = query.host == ALL_HOSTS
    found = leases(None if every else query.host).list(
        gpu_index=query.gpu_id, owner=query.owner, status=query.status, limit=query.limit,
        all_hosts=every)
    now = c.clock.now_ms()
    return jsonify({"count": len(found), "leases": [lease.to_dict(now) for lease in found]})


@bp.get("/available", responses={200: Capacity, **errors(400, 404, 422)})
def available(query: GpuQuery) -> View:
    """Lease capacity, leased and available MiB, beside the device's real used/free memory,
    of the card in the slot now (a card known only from a recording has none)."""
    return jsonify(leases(query.host).capacity(query.gpu_id, query.uuid).to_dict())
