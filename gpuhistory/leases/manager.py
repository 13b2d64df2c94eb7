"""Grants, renews, releases and reaps GPU-memory leases: rows in the log, safe across processes.

Every lease change runs in a transaction that takes the database's write lock before it
reads any lease (SQLite ``BEGIN IMMEDIATE``; on PostgreSQL the row locks of the GPUs it
touches, and guarded ``UPDATE ... WHERE released_ms IS NULL`` everywhere), so summing the
active leases and inserting a new one cannot interleave with another grant in any thread,
process or server on the same database. Concurrent changes of one process share that
transaction and its one durable commit (gpuhistory/leases/group_commit.py); each is
answered only once that commit is done. Only the GPU's identity is looked up before the
lock, keeping the locked part of a grant to two indexed reads and two inserts. On SQLite
those transactions commit with ``synchronous=FULL``: an acknowledged grant survives a crash
of the process and of the machine.

Expiry is a comparison with now, never a background step: a lease whose ``expires_ms`` has
passed stops counting at once. ``reap`` (and each grant, renew and release, for the rows
it touches) records the expiry (``released_ms = expires_ms``, reason ``expired``) with one
``lease_expired`` event per lease, guarded so two reapers never record one lease twice.

The lease token is returned once, by ``grant``; only its sha256 is stored, compared in
constant time, and it never appears in an event, a log line or an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from gpuhistory.callbacks import CallbackRegistry, make_event
from gpuhistory.clock import Clock, iso_utc
from gpuhistory.domain.config import Config
from gpuhistory.domain.events import EventDraft, EventKind
from gpuhistory.identity import GpuRef, UnknownGpu, resolve_latest
from gpuhistory.leases.capacity import capacity_of
from gpuhistory.leases.group_commit import GroupCommit, Operation, Refusal, group_commit
from gpuhistory.leases.group_commit import Tx as _Tx
from gpuhistory.leases.model import (
    REASON_EXPIRED,
    REASON_RELEASED,
    STATUSES,
    Capacity,
    Covers,
    DuplicateAllocation,
    GpuNotFound,
    Lease,
    LeaseNotActive,
    LeaseNotFound,
    LeaseTokenMismatch,
    NoGpuFits,
    OverCapacity,
    seconds,
)
from gpuhistory.leases.placement import ANY, OVER_CAPACITY, best_fit, effective_state_name, refusal
from gpuhistory.leases.rules import (
    check_allocation_id,
    check_covers,
    check_gpu_index,
    check_lease_token,
    check_memory_mb,
    check_owner,
    check_ttl_ms,
)
from gpuhistory.storage.engine import inserted_id
from gpuhistory.storage.log import LogStore, TickRecord, event_row
from gpuhistory.storage.queries import LatestSample, latest_samples
from gpuhistory.storage.schema import gpus, leases

log = logging.getLogger(__name__)

DEFAULT_LIST_LIMIT = 500

_L = leases.c
LeaseList = list[Lease]  # (the method named ``list`` shadows the builtin in class scope)


def hash_token(token: str) -> str:
    """The stored form of a lease token: sha256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_gpu_choice(gpu_index: object) -> bool:
    """A grant's GPU: an index, None (with a uuid) or "any"; True for "any"."""
    if isinstance(gpu_index, str):
        if gpu_index != ANY:
            raise ValueError(f'gpu_id must be an integer or "{ANY}"')
        return True
    if gpu_index is not None:
        check_gpu_index(gpu_index)
    return False


def _no_gpu_fits(host: str, memory_mb: int, refused: list[dict[str, Any]],
                 capacities: Sequence[Capacity]) -> NoGpuFits:
    short = [{"gpu_id": c.gpu_id, "uuid": c.uuid, "reason": OVER_CAPACITY,
              "available_mb": c.available_mb, "capacity_mb": c.capacity_mb,
              "leased_mb": c.leased_mb} for c in capacities]
    return NoGpuFits(host, memory_mb, sorted(refused + short, key=lambda g: g["gpu_id"]))


class LeaseManager:
    """Leases of one host's GPUs. Stateless apart from its settings: share it freely."""

    def __init__(self, engine: sa.Engine, host: str, clock: Clock,
                 config: Callable[[], Config],
                 callbacks: CallbackRegistry | None = None) -> None:
        self.engine = engine
        self.host = host
        self.clock = clock
        self.config = config
        self.callbacks = callbacks
        self._log = LogStore(engine, host)  # the events table's one writer path
        self._commits = group_commit(engine)  # shared by every manager on this engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._postgresql = engine.dialect.name == "postgresql"

    def for_host(self, host: str) -> LeaseManager:
        """The manager of another host's leases in the same database (leases are per host
        and GPU: the same allocation id or GPU index on two hosts are two things)."""
        if host == self.host:
            return self
        return LeaseManager(self.engine, host, self.clock, self.config, self.callbacks)

    @property
    def commits(self) -> GroupCommit:
        """This process's group committer of the engine: its counters feed /metrics."""
        return self._commits

    # -- commands ----------------------------------------------------------------------
    def grant(self, allocation_id: str, memory_mb: int, gpu_index: int | str | None = 0,
              ttl_seconds: float | None = None, owner: str | None = None,
              uuid: str | None = None, covers: Covers | None = None) -> tuple[Lease, str]:
        """Lease ``memory_mb`` MiB of the card in slot ``gpu_index`` now (or of the card
        ``uuid``); returns the lease and its token. ``gpu_index="any"``: the service
        chooses the GPU (gpuhistory/leases/placement.py), among the card ``uuid`` alone
        when given. ``covers``: the processes the lease is held for.

        Raises GpuNotFound, DuplicateAllocation (an active lease has this id already),
        OverCapacity (with the MiB available) or, for "any", NoGpuFits (why, per GPU);
        ValueError for malformed arguments.
        """
        allocation_id = check_allocation_id(allocation_id)
        anywhere = _check_gpu_choice(gpu_index)
        memory_mb = check_memory_mb(memory_mb)
        owner = check_owner(owner)
        covers = check_covers(covers)
        cfg = self.config()
        ttl_ms = check_ttl_ms(cfg.lease_ttl_seconds if ttl_seconds is None else ttl_seconds)
        token = secrets.token_urlsafe(32)

        # The devices (and, for "any", their health) are looked up before the write lock:
        # the lock covers only the sums and the insert, which keeps concurrent grants short
        # (they queue on that lock).
        with self.engine.connect() as conn:
            if anywhere:
                candidates, refused = self._placement_candidates(conn, uuid, cfg)
            else:
                index = None if gpu_index is None else int(gpu_index)
                candidates, refused = [self._resolve_gpu(conn, index, uuid)], []
        token_hash = hash_token(token)

        def decide(tx: _Tx) -> Lease:
            # Under the batch's write lock, after the earlier operations of the batch.
            now = self.clock.now_ms()
            usages, existing = self._grant_views(tx.conn, candidates, allocation_id, now)
            if (any(u.overdue for u in usages.values())
                    or (existing is not None and existing.expires_ms <= now)):
                self._expire_overdue(tx, now, gpu_db_ids=list(usages),
                                     allocation_id=allocation_id)
                usages, existing = self._grant_views(tx.conn, candidates, allocation_id, now)
            if existing is not None:
                raise DuplicateAllocation(allocation_id, existing.gpu_id,
                                          iso_utc(existing.expires_ms))
            capacities = {e.gpu.index: (e, self._capacity(e, cfg, usages[e.gpu.id].leased,
                                                          usages[e.gpu.id].active))
                          for e in candidates}
            if anywhere:
                chosen = best_fit([cap for _, cap in capacities.values()], memory_mb)
                if chosen is None:
                    raise _no_gpu_fits(self.host, memory_mb, refused,
                                       [cap for _, cap in capacities.values()])
                latest = capacities[chosen.gpu_id][0]
            else:
                latest, capacity = capacities[candidates[0].gpu.index]
                if memory_mb > capacity.available_mb:
                    raise OverCapacity(latest.gpu.index, memory_mb, capacity)
            return self._insert(tx, latest, allocation_id, memory_mb, owner, token_hash,
                                ttl_ms, now, covers)

        def duplicate(conn: sa.Connection) -> Exception | None:
            # Only reachable where the locks do not serialize two grants of one id on
            # different GPUs (PostgreSQL, two processes); the partial unique index caught
            # it, and the savepoint kept the rest of the batch.
            existing = self._newest(allocation_id, conn)
            if existing is None or not existing.is_active(self.clock.now_ms()):
                return None
            return DuplicateAllocation(allocation_id, existing.gpu_id,
                                       iso_utc(existing.expires_ms))

        lease = self._commits.submit(Operation(
            decide, gpu_ids=[e.gpu.id for e in candidates], callbacks=self.callbacks,
            conflict=duplicate))
        log.info("lease %r granted: %d MiB of GPU %d until %s", allocation_id, memory_mb,
                 lease.gpu_id, iso_utc(lease.expires_ms))
        return lease, token

    def _insert(self, tx: _Tx, latest: LatestSample, allocation_id: str, memory_mb: int,
                owner: str | None, token_hash: str, ttl_ms: int, now: int,
                covers: Covers) -> Lease:
        """Insert the granted lease and its ``lease_granted`` event."""
        gpu_db_id = latest.gpu.id
        row = {
            "host": self.host, "allocation_id": allocation_id, "gpu_id": gpu_db_id,
            "memory_mib": memory_mb, "owner": owner, "token_hash": token_hash,
            "ttl_ms": ttl_ms, "granted_ms": now, "expires_ms": now + ttl_ms,
            "released_ms": None, "release_reason": None,
            "pids": list(covers.pids) or None, "slurm_job": covers.slurm_job,
            "container": covers.container,
        }
        lease_id = inserted_id(tx.conn.execute(_INSERT_LEASE, row))
        lease = Lease(
            allocation_id=allocation_id, gpu_id=latest.gpu.index, host=self.host,
            gpu_uuid=latest.gpu.uuid, memory_mb=memory_mb, owner=owner,
            ttl_seconds=seconds(ttl_ms), granted_ms=now, expires_ms=now + ttl_ms,
            id=lease_id, gpu_db_id=gpu_db_id, covers=covers,
        )
        extra = {"covers": covers.to_dict()} if covers else {}
        self._event(tx, EventKind.LEASE_GRANTED, lease, now,
                    memory_mb=memory_mb, owner=owner, ttl_seconds=lease.ttl_seconds,
                    expires_at=iso_utc(lease.expires_ms), **extra)
        return lease

    def _placement_candidates(self, conn: sa.Connection, uuid: str | None,
                              cfg: Config) -> tuple[list[LatestSample], list[dict[str, Any]]]:
        """The host's GPUs that placement may choose (the card ``uuid`` alone when given),
        and why each of the others may not (GpuNotFound when none is known)."""
        now = self.clock.now_ms()
        entries = latest_samples(conn, self.host, now_ms=now)
        if uuid is not None:
            entries = [e for e in entries if e.gpu.uuid == uuid]
            if not entries:
                raise GpuNotFound(0, self.host, f"no GPU with uuid {uuid} on {self.host} now",
                                  {"uuid": uuid, "host": self.host})
        if not entries:
            raise GpuNotFound(0, self.host, f"no GPU is known on host {self.host!r}",
                              {"host": self.host})
        candidates, refused = [], []
        for entry in entries:
            why = refusal(entry, now, cfg)
            if why is None:
                candidates.append(entry)
            else:
                refused.append({"gpu_id": entry.gpu.index, "uuid": entry.gpu.uuid,
                                "reason": why,
                                "state": (entry.state.name if entry.state is not None
                                          else "UNAVAILABLE"),
                                "effective_state": effective_state_name(entry, now, cfg)})
        return candidates, refused

    def renew(self, allocation_id: str, token: str | None = None,
              ttl_seconds: float | None = None, admin: bool = False) -> Lease:
        """Extend the active lease to now + ``ttl_seconds`` (default: its own TTL)."""
        allocation_id = check_allocation_id(allocation_id)
        token = check_lease_token(token)
        ttl_ms = None if ttl_seconds is None else check_ttl_ms(ttl_seconds)

        def change(tx: _Tx, lease: Lease, now: int) -> Lease:
            new_ttl_ms = ttl_ms or round(lease.ttl_seconds * 1000)
            expires = now + new_ttl_ms
            done = tx.conn.execute(
                leases.update()
                .where(_L.id == lease.id, _L.released_ms.is_(None), _L.expires_ms > now)
                .values(expires_ms=expires, ttl_ms=new_ttl_ms)
            ).rowcount
            if done != 1:  # a concurrent release or reap won (PostgreSQL only)
                raise self._not_active(tx.conn, allocation_id, now)
            renewed = replace(lease, expires_ms=expires, ttl_seconds=seconds(new_ttl_ms))
            self._event(tx, EventKind.LEASE_RENEWED, renewed, now,
                        ttl_seconds=renewed.ttl_seconds,
                        previous_expires_at=iso_utc(lease.expires_ms),
                        expires_at=iso_utc(expires), by_admin=admin)
            return renewed

        return self._change(allocation_id, token, admin, change)

    def release(self, allocation_id: str, token: str | None = None,
                admin: bool = False) -> Lease:
        """End the active lease now (reason ``released``)."""
        allocation_id = check_allocation_id(allocation_id)
        token = check_lease_token(token)

        def change(tx: _Tx, lease: Lease, now: int) -> Lease:
            done = tx.conn.execute(
                leases.update()
                .where(_L.id == lease.id, _L.released_ms.is_(None), _L.expires_ms > now)
                .values(released_ms=now, release_reason=REASON_RELEASED)
            ).rowcount
            if done != 1:
                raise self._not_active(tx.conn, allocation_id, now)
            released = replace(lease, released_ms=now, release_reason=REASON_RELEASED)
            self._event(tx, EventKind.LEASE_RELEASED, released, now,
                        memory_mb=lease.memory_mb, owner=lease.owner,
                        granted_at=iso_utc(lease.granted_ms), by_admin=admin)
            return released

        return self._change(allocation_id, token, admin, change)

    def reap(self) -> int:
        """Record every overdue lease of this host as expired; returns how many it marked.

        Idempotent, and safe with several reapers at once: each lease is marked (and gets
        its ``lease_expired`` event) by exactly one of them.
        """
        now = self.clock.now_ms()
        with self.engine.connect() as conn:  # the common case, nothing due: no write lock
            due = conn.execute(
                sa.select(sa.func.count()).select_from(leases).where(*self._overdue(now))
            ).scalar_one()
        if not due:
            return 0
        gpu_ids = self._host_gpu_ids() if self._postgresql else ()
        return self._commits.submit(Operation(
            lambda tx: self._expire_overdue(tx, self.clock.now_ms()), gpu_ids=gpu_ids,
            callbacks=self.callbacks))

    # -- queries -----------------------------------------------------------------------
    def get(self, allocation_id: str) -> Lease:
        """The lease with this id: the unreleased one, else the newest (LeaseNotFound)."""
        allocation_id = check_allocation_id(allocation_id)
        lease = self._newest(allocation_id)
        if lease is None:
            raise LeaseNotFound(allocation_id)
        return lease

    def list(self, gpu_index: int | None = None, owner: str | None = None,
             status: str | None = None, limit: int = DEFAULT_LIST_LIMIT,
             all_hosts: bool = False) -> LeaseList:
        """This host's leases (every host's with ``all_hosts``), newest first, optionally of
        one GPU index, owner or status."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {list(STATUSES)}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a positive integer")
        now = self.clock.now_ms()
        query = _lease_select()
        if not all_hosts:
            query = query.where(_L.host == self.host)
        if gpu_index is not None:
            query = query.where(gpus.c.gpu_index == check_gpu_index(gpu_index))
        if owner is not None:
            query = query.where(_L.owner == check_owner(owner))
        if status == "active":
            query = query.where(_L.released_ms.is_(None), _L.expires_ms > now)
        elif status == "expired":
            query = query.where(sa.or_(
                _L.release_reason == REASON_EXPIRED,
                sa.and_(_L.released_ms.is_(None), _L.expires_ms <= now)))
        elif status == "released":
            query = query.where(_L.released_ms.is_not(None),
                                sa.func.coalesce(_L.release_reason, "") != REASON_EXPIRED)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(_L.id.desc()).limit(limit))
            return [_lease(r) for r in rows]

    def capacity(self, gpu_index: int | None = 0, uuid: str | None = None) -> Capacity:
        """What the card in slot ``gpu_index`` now (or card ``uuid``) can lease now
        (GpuNotFound for an unknown GPU)."""
        gpu_index = None if gpu_index is None else check_gpu_index(gpu_index)
        cfg = self.config()
        with self.engine.connect() as conn:
            latest = self._resolve_gpu(conn, gpu_index, uuid)
            usage = conn.execute(_GPU_USAGE, {"gpu_id": latest.gpu.id,
                                              "now": self.clock.now_ms()}).one()
        return self._capacity(latest, cfg, usage.leased, usage.active)

    def capacities(self, conn: sa.Connection,
                   entries: Sequence[LatestSample]) -> dict[int, Capacity]:
        """Capacity of several GPUs (by index) in one query, on the caller's connection."""
        if not entries:
            return {}
        cfg = self.config()
        rows = conn.execute(_USAGE_BY_GPU, {"ids": [e.gpu.id for e in entries],
                                            "now": self.clock.now_ms()}).all()
        usage = {gpu_id: (leased, count) for gpu_id, leased, count in rows}
        return {e.gpu.index: self._capacity(e, cfg, *usage.get(e.gpu.id, (0, 0)))
                for e in entries}

    def active_between(self, gpu_db_id: int, start_ms: int, end_ms: int) -> LeaseList:
        """Leases of the GPU row ``gpu_db_id`` whose life overlaps [start_ms, end_ms].

        A lease lives from ``granted_ms`` until ``released_ms`` (release or recorded
        expiry), or until ``expires_ms`` while unreleased; renewals keep it alive without a
        gap, so that is one interval. Oldest grant first.
        """
        end_of_life = sa.func.coalesce(_L.released_ms, _L.expires_ms)
        query = _lease_select().where(
            _L.gpu_id == gpu_db_id, _L.granted_ms <= end_ms, end_of_life > start_ms
        ).order_by(_L.granted_ms, _L.id)
        with self.engine.connect() as conn:
            return [_lease(r) for r in conn.execute(query)]

    # -- transactions ------------------------------------------------------------------
    def _change(self, allocation_id: str, token: str | None, admin: bool,
                change: Callable[[_Tx, Lease, int], Lease]) -> Lease:
        """Renew or release: find the active lease, check the token, apply ``change``."""

        def run(tx: _Tx) -> Lease:
            # The lease's row is locked first (PostgreSQL; SQLite's BEGIN IMMEDIATE already
            # holds the database's write lock) and the clock read after: no expiry, renewal
            # or release of this lease can commit between the check and the write.
            row = tx.conn.execute(_UNRELEASED_LOCKED, {"host": self.host,
                                                       "allocation_id": allocation_id}).first()
            now = self.clock.now_ms()
            lease = None if row is None else _lease(row)
            if lease is not None and lease.expires_ms <= now:
                self._expire_overdue(tx, now, allocation_id=allocation_id)
                lease = None
            if lease is None or row is None:
                newest = self._newest(allocation_id, tx.conn)
                # Commit the expiry just recorded (if any), then refuse.
                raise Refusal(LeaseNotFound(allocation_id) if newest is None
                              else LeaseNotActive(allocation_id, newest.status(now)))
            if not admin:
                _check_token(allocation_id, row.token_hash, token)
            return change(tx, lease, now)

        # PostgreSQL: the lease's GPU row is locked with the batch's others, before its
        # lease row (see gpuhistory/leases/group_commit.py); SQLite needs no pre-read.
        gpu_ids = self._lease_gpu_ids(allocation_id) if self._postgresql else ()
        return self._commits.submit(Operation(run, gpu_ids=gpu_ids,
                                              callbacks=self.callbacks))

    def _lease_gpu_ids(self, allocation_id: str) -> Sequence[int]:
        """The GPU row of the id's unreleased lease (none when it has none)."""
        with self.engine.connect() as conn:
            return list(conn.execute(
                sa.select(_L.gpu_id).where(_L.host == self.host,
                                           _L.allocation_id == allocation_id,
                                           _L.released_ms.is_(None))).scalars())

    def _host_gpu_ids(self) -> Sequence[int]:
        """Every GPU row of this host (a reap may expire leases on any of them)."""
        with self.engine.connect() as conn:
            return list(conn.execute(
                sa.select(gpus.c.id).where(gpus.c.host == self.host)).scalars())

    def _not_active(self, conn: sa.Connection, allocation_id: str, now: int) -> LeaseNotActive:
        newest = self._newest(allocation_id, conn)
        return LeaseNotActive(allocation_id, "released" if newest is None else newest.status(now))

    def _overdue(self, now: int) -> tuple[sa.ColumnElement[bool], ...]:
        return (_L.host == self.host, _L.released_ms.is_(None), _L.expires_ms <= now)

    def _expire_overdue(self, tx: _Tx, now: int, gpu_db_ids: Sequence[int] = (),
                        allocation_id: str | None = None) -> int:
        """Record overdue leases as expired (all of the host's, or those of GPUs / an id)."""
        query = _lease_select().where(*self._overdue(now))
        scope: list[sa.ColumnElement[bool]] = []
        if gpu_db_ids:
            scope.append(_L.gpu_id.in_(list(gpu_db_ids)))
        if allocation_id is not None:
            scope.append(_L.allocation_id == allocation_id)
        if scope:
            query = query.where(sa.or_(*scope))
        marked = 0
        for lease in [_lease(r) for r in tx.conn.execute(query.order_by(_L.id))]:
            # The row read above may be stale by now (PostgreSQL): a renewal or release may
            # have committed since, or be about to. The UPDATE waits for the row's lock and
            # then re-checks overdue-and-unreleased on the row as it is, recording the
            # expiry it really has — never a renewed lease at its old expiry.
            expires_ms = tx.conn.execute(_EXPIRE, {"lease_id": lease.id, "now": now}).scalar()
            if expires_ms is None:  # renewed, released or recorded by another writer first
                continue
            marked += 1
            lease = replace(lease, expires_ms=expires_ms)
            expired = replace(lease, released_ms=lease.expires_ms,
                              release_reason=REASON_EXPIRED)
            # Stamped with the moment it stopped counting, not the moment it was noticed.
            self._event(tx, EventKind.LEASE_EXPIRED, expired, lease.expires_ms,
                        memory_mb=lease.memory_mb, owner=lease.owner,
                        granted_at=iso_utc(lease.granted_ms),
                        expires_at=iso_utc(lease.expires_ms), recorded_at=iso_utc(now))
            log.info("lease %r expired at %s", lease.allocation_id, iso_utc(lease.expires_ms))
        return marked

    def _event(self, tx: _Tx, kind: EventKind, lease: Lease, ts_ms: int,
               **payload: Any) -> None:
        body = {"allocation_id": lease.allocation_id, **payload}
        draft = EventDraft(kind=kind, ts_ms=ts_ms, gpu_index=lease.gpu_id, payload=body)
        record = TickRecord(events=[event_row(lease.gpu_db_id, draft)])
        (event_id,) = self._log.write(record, tx.conn)
        tx.events.append(make_event(event_id, str(kind), lease.gpu_id, ts_ms, dict(body)))

    # -- reads shared by commands and queries ------------------------------------------
    def _resolve_gpu(self, conn: sa.Connection, gpu_index: int | None,
                     uuid: str | None = None) -> LatestSample:
        """The card in this host's slot ``gpu_index`` now, or the card ``uuid``."""
        try:
            return resolve_latest(conn, GpuRef(gpu_index, uuid, self.host), self.host,
                                  self.clock.now_ms())
        except UnknownGpu as exc:
            raise GpuNotFound(0 if gpu_index is None else gpu_index, self.host, str(exc),
                              exc.details) from None

    def _grant_views(self, conn: sa.Connection, entries: Sequence[LatestSample],
                     allocation_id: str, now: int) -> tuple[dict[int, sa.Row[Any]], Lease | None]:
        """What a grant decides on: each GPU's unreleased leases, and the id's own."""
        usages = {e.gpu.id: conn.execute(_GPU_USAGE, {"gpu_id": e.gpu.id, "now": now}).one()
                  for e in entries}
        return usages, self._unreleased(conn, allocation_id)

    def _capacity(self, latest: LatestSample, cfg: Config, leased: int,
                  active: int) -> Capacity:
        return capacity_of(latest, cfg, leased, active)

    def _unreleased(self, conn: sa.Connection, allocation_id: str) -> Lease | None:
        row = conn.execute(_UNRELEASED, {"host": self.host, "allocation_id": allocation_id}
                           ).first()
        return None if row is None else _lease(row)

    def _newest(self, allocation_id: str, conn: sa.Connection | None = None) -> Lease | None:
        if conn is None:
            with self.engine.connect() as own:
                return self._newest(allocation_id, own)
        lease = self._unreleased(conn, allocation_id)
        if lease is not None:
            return lease
        row = conn.execute(_lease_select().where(
            _L.host == self.host, _L.allocation_id == allocation_id
        ).order_by(_L.id.desc()).limit(1)).first()
        return None if row is None else _lease(row)


def active_leases(conn: sa.Connection, gpu_db_ids: Sequence[int], now_ms: int) -> LeaseList:
    """The leases of the GPU rows ``gpu_db_ids`` active at ``now_ms``, oldest first (one
    statement on ix_leases_gpu_released)."""
    if not gpu_db_ids:
        return []
    query = _lease_select().where(_L.gpu_id.in_(list(gpu_db_ids)), _L.released_ms.is_(None),
                                  _L.expires_ms > now_ms).order_by(_L.id)
    return [_lease(r) for r in conn.execute(query)]


def _lease_select() -> sa.Select[Any]:
    return sa.select(
        leases, gpus.c.gpu_index.label("gpu_index"), gpus.c.uuid.label("gpu_uuid")
    ).select_from(leases.join(gpus, _L.gpu_id == gpus.c.id))


# Statements built once (the hot path of a grant runs them under the write lock).
_NOW: sa.BindParameter[int] = sa.bindparam("now")
# A lease holds its memory until it ends: its release, its recorded expiry, or (unreleased)
# its expiry. The leases a grant counts are those alive at the grant's time, including one
# whose release or expiry was committed by a transaction that read the clock after it
# (PostgreSQL: that commit can land between the grant's clock read and this statement):
# the log then never shows two leases sharing memory for even a millisecond.
_ALIVE = sa.func.coalesce(_L.released_ms, _L.expires_ms) > _NOW
_GPU_USAGE = sa.select(
    sa.func.coalesce(sa.func.sum(sa.case((_ALIVE, _L.memory_mib), else_=0)), 0).label("leased"),
    sa.func.count(sa.case((_ALIVE, 1))).label("active"),
    sa.func.count(
        sa.case((sa.and_(_L.released_ms.is_(None), _L.expires_ms <= _NOW), 1))
    ).label("overdue"),
).where(_L.gpu_id == sa.bindparam("gpu_id"),
        sa.or_(_L.released_ms.is_(None), _L.released_ms > _NOW))
_USAGE_BY_GPU = (
    sa.select(_L.gpu_id, sa.func.coalesce(sa.func.sum(_L.memory_mib), 0), sa.func.count())
    .where(_L.gpu_id.in_(sa.bindparam("ids", expanding=True)), _L.released_ms.is_(None),
           _L.expires_ms > _NOW)
    .group_by(_L.gpu_id)
)
_UNRELEASED = _lease_select().where(
    _L.host == sa.bindparam("host"), _L.allocation_id == sa.bindparam("allocation_id"),
    _L.released_ms.is_(None),
)
# Renew and release lock the lease's row before they read the clock (PostgreSQL; a no-op
# on SQLite, whose BEGIN IMMEDIATE holds the whole database's write lock).
_UNRELEASED_LOCKED = _UNRELEASED.with_for_update(of=leases, key_share=True)
# Record an expiry only if the row, as it is once locked, is still unreleased and overdue.
_EXPIRE = (
    leases.update()
    .where(_L.id == sa.bindparam("lease_id"), _L.released_ms.is_(None),
           _L.expires_ms <= _NOW)
    .values(released_ms=_L.expires_ms, release_reason=REASON_EXPIRED)
    .returning(_L.expires_ms)
)
_INSERT_LEASE = leases.insert()



def _check_token(allocation_id: str, stored_hash: str, token: str | None) -> None:
    """Constant-time comparison of the token's hash with the stored one."""
    if not isinstance(token, str) or not token:
        raise LeaseTokenMismatch(allocation_id, missing=True)
    if not hmac.compare_digest(hash_token(token), stored_hash):
        raise LeaseTokenMismatch(allocation_id)


def _lease(row: sa.Row[Any]) -> Lease:
    return Lease(
        allocation_id=row.allocation_id, gpu_id=row.gpu_index, host=row.host,
        gpu_uuid=row.gpu_uuid, memory_mb=row.memory_mib, owner=row.owner,
        ttl_seconds=seconds(row.ttl_ms), granted_ms=row.granted_ms,
        expires_ms=row.expires_ms, released_ms=row.released_ms,
        release_reason=row.release_reason, id=row.id, gpu_db_id=row.gpu_id,
        covers=Covers(tuple(row.pids or ()), row.slurm_job, row.container),
    )
