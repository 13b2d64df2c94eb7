"""The cards that held a GPU slot: ``gpus`` rows looked up by slot (host, index) or by UUID.

A row of ``gpus`` is one physical card (its UUID) on one host; ``gpu_index`` is the slot it
sat in and ``first_seen_ms``..``last_seen_ms`` the period it was seen there. Which of a
slot's cards answers a question is decided by :mod:`gpuhistory.identity`; this module only
reads the rows.
"""

from __future__ import annotations

import sqlalchemy as sa

from gpuhistory.storage.queries import GpuRow, gpu_row, greatest
from gpuhistory.storage.schema import gpus, incidents, samples

_SLOT = (sa.select(gpus).where(gpus.c.host == sa.bindparam("host"),
                               gpus.c.gpu_index == sa.bindparam("gpu_index"))
         .order_by(gpus.c.first_seen_ms, gpus.c.id))
_UUID = sa.select(gpus).where(gpus.c.uuid == sa.bindparam("uuid")).order_by(gpus.c.host)
_HOST = sa.select(gpus).where(gpus.c.host == sa.bindparam("host")).order_by(
    gpus.c.gpu_index, gpus.c.first_seen_ms, gpus.c.id)


def slot_cards(conn: sa.Connection, host: str, gpu_index: int) -> list[GpuRow]:
    """Every card that has held slot ``gpu_index`` on ``host``, first arrival first."""
    return [gpu_row(r) for r in conn.execute(_SLOT, {"host": host, "gpu_index": gpu_index})]


def uuid_cards(conn: sa.Connection, uuid: str, host: str | None = None) -> list[GpuRow]:
    """The card with this UUID (on ``host``, or on every host it is stored under)."""
    rows = [gpu_row(r) for r in conn.execute(_UUID, {"uuid": uuid})]
    return [r for r in rows if host is None or r.host == host]


def host_cards(conn: sa.Connection, host: str) -> list[GpuRow]:
    """Every card ever seen on ``host``, by slot, first arrival first."""
    return [gpu_row(r) for r in conn.execute(_HOST, {"host": host})]


def gpu_by_id(conn: sa.Connection, gpu_db_id: int) -> GpuRow | None:
    row = conn.execute(sa.select(gpus).where(gpus.c.id == gpu_db_id)).first()
    return None if row is None else gpu_row(row)


def hosts(conn: sa.Connection) -> list[str]:
    """Every host with GPUs in the database."""
    return list(conn.execute(sa.select(gpus.c.host).distinct().order_by(gpus.c.host)).scalars())


def slot_rivals(conn: sa.Connection, card_id: int, first_ms: int,
                last_ms: int) -> list[GpuRow]:
    """The other cards of ``card_id``'s slot whose period shares a moment with
    [first_ms, last_ms]. A card's period ends at its newest sample where that is later than
    ``last_seen_ms`` (a live sampler refreshes that column once a minute)."""
    me = sa.select(gpus.c.host, gpus.c.gpu_index).where(gpus.c.id == card_id).subquery()
    newest = (sa.select(sa.func.max(samples.c.ts_ms)).where(samples.c.gpu_id == gpus.c.id)
              .correlate(gpus).scalar_subquery())
    last_seen = greatest(gpus.c.last_seen_ms, sa.func.coalesce(newest, gpus.c.last_seen_ms))
    query = (sa.select(gpus).join(me, sa.and_(gpus.c.host == me.c.host,
                                              gpus.c.gpu_index == me.c.gpu_index))
             .where(gpus.c.id != card_id, gpus.c.first_seen_ms <= last_ms,
                    last_seen >= first_ms)
             .order_by(gpus.c.first_seen_ms))
    return [gpu_row(r) for r in conn.execute(query)]


def count_incidents(engine: sa.Engine, gpu_ids: list[int], first_ms: int, last_ms: int) -> int:
    """Incidents of these cards that overlap [first_ms, last_ms]."""
    i = incidents.c
    query = sa.select(sa.func.count()).where(
        i.gpu_id.in_(gpu_ids), i.start_ms <= last_ms,
        sa.or_(i.end_ms.is_(None), i.end_ms >= first_ms))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)
