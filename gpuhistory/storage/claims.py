"""The ``sampler_claims`` rows: take, renew and give back a host's sampler claim.

Each call is one short transaction that starts with a write (on SQLite a write-first
transaction waits for the lock instead of failing on an upgrade), so the claim works the
same on SQLite and PostgreSQL and needs no session state (transaction pooling is fine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from gpuhistory.storage.schema import sampler_claims

_C = sampler_claims.c


@dataclass(frozen=True, slots=True)
class ClaimRow:
    host: str
    owner: str
    node: str
    pid: int
    process: str
    acquired_ms: int
    heartbeat_ms: int
    stale_after_ms: int
    version: str | None = None  # gpuhistory's version in the holding process


def claim_row(row: sa.Row[Any]) -> ClaimRow:
    return ClaimRow(row.host, row.owner, row.node, row.pid, row.process, row.acquired_ms,
                    row.heartbeat_ms, row.stale_after_ms, row.version)


def take(engine: sa.Engine, claim: ClaimRow, dead_pid: int | None) -> ClaimRow | None:
    """Write ``claim`` for its host unless another owner holds a live claim; returns that
    holder (None: taken). A holder is live while its heartbeat is within its own
    ``stale_after_ms`` and it is not ``dead_pid`` on ``claim.node`` (a crashed process of
    this machine)."""
    values = {c.name: getattr(claim, c.name) for c in sampler_claims.columns}
    takeable = sa.or_(
        _C.owner == claim.owner,
        _C.heartbeat_ms + _C.stale_after_ms < claim.heartbeat_ms,
        sa.and_(_C.node == claim.node, _C.pid == (dead_pid if dead_pid is not None else -1)),
    )
    with engine.begin() as conn:
        if conn.execute(sampler_claims.update().where(_C.host == claim.host, takeable)
                        .values(**values)).rowcount:
            return None
        holder = conn.execute(sa.select(sampler_claims).where(_C.host == claim.host)).first()
        if holder is not None:
            return claim_row(holder)
        try:
            with conn.begin_nested():
                conn.execute(sampler_claims.insert().values(**values))
        except sa.exc.IntegrityError:  # another process inserted it first
            holder = conn.execute(sa.select(sampler_claims).where(_C.host == claim.host)
                                  ).first()
            return None if holder is None else claim_row(holder)
    return None


def holder(engine: sa.Engine, host: str) -> ClaimRow | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(sampler_claims).where(_C.host == host)).first()
    return None if row is None else claim_row(row)


def renew(engine: sa.Engine, host: str, owner: str, now_ms: int) -> bool:
    """Move the heartbeat; False when the claim is no longer this owner's."""
    with engine.begin() as conn:
        return bool(conn.execute(sampler_claims.update().where(
            _C.host == host, _C.owner == owner).values(heartbeat_ms=now_ms)).rowcount)


def give_back(engine: sa.Engine, host: str, owner: str) -> None:
    with engine.begin() as conn:
        conn.execute(sampler_claims.delete().where(_C.host == host, _C.owner == owner))
