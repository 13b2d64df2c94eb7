"""Fleet-wide reads behind ``GET /api/fleet/hosts``: each is one statement for every host,
so the answer costs the same few statements with 3 hosts or 300."""

from __future__ import annotations

import sqlalchemy as sa

from gpuhistory.storage.claims import ClaimRow, claim_row
from gpuhistory.storage.schema import gpus, leases, sampler_claims, transitions

_L = leases.c


def claims_by_host(conn: sa.Connection, host: str | None) -> dict[str, ClaimRow]:
    """The sampler claim of every host (``host`` None) or of one."""
    query = sa.select(sampler_claims)
    if host is not None:
        query = query.where(sampler_claims.c.host == host)
    return {row.host: claim_row(row) for row in conn.execute(query)}


def state_since(conn: sa.Connection, host: str | None) -> dict[int, int | None]:
    """When each GPU row (gpus.id) last changed state: its newest transition, a seek on
    ix_transitions_gpu_ts per GPU (None: never)."""
    t = transitions.c
    newest = (sa.select(sa.func.max(t.ts_ms)).where(t.gpu_id == gpus.c.id)
              .correlate(gpus).scalar_subquery())
    query = sa.select(gpus.c.id, newest)
    if host is not None:
        query = query.where(gpus.c.host == host)
    return {gpu_id: ts for gpu_id, ts in conn.execute(query)}


def lease_usage(conn: sa.Connection, host: str | None,
                now_ms: int) -> dict[int, tuple[int, int]]:
    """(MiB leased, active leases) of each GPU row with an active lease at ``now_ms`` —
    the rule the grant counts by for a lease not yet released."""
    query = (sa.select(_L.gpu_id, sa.func.coalesce(sa.func.sum(_L.memory_mib), 0),
                       sa.func.count())
             .where(_L.released_ms.is_(None), _L.expires_ms > now_ms)
             .group_by(_L.gpu_id))
    if host is not None:
        query = query.where(_L.host == host)
    return {gpu_id: (int(leased), int(count)) for gpu_id, leased, count in conn.execute(query)}
