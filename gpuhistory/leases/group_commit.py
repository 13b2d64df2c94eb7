"""Group commit: the lease operations of concurrent threads share one durable transaction.

**Queue.** Each thread that wants a lease change hands an ``Operation`` to its engine's
``GroupCommit`` and waits. The first waiting thread that finds no committer at work becomes
the committer: it takes everything queued (oldest first, at most ``max_batch``; when the
queue is longer than that and its own operation is left, it commits again), runs it as one
transaction, commits once (one fsync on SQLite with ``synchronous=FULL``, one WAL flush on
PostgreSQL) and wakes the others. Operations that arrive meanwhile queue
for the next committer. No extra thread, and a lone request is committed at once.

**One transaction, decisions in order.** The batch's transaction takes the write lock
first: SQLite ``BEGIN IMMEDIATE`` (the database's one write lock, so processes and threads
of other processes queue behind it); on PostgreSQL, the row locks of every GPU the batch's
operations touch, all at once in id order, before any lease row is read. Lease rows are
only read-to-change by a transaction that holds their GPU's row lock, so batches in several
processes never wait on each other in a cycle. The operations then run one after another,
each reading the clock when its turn comes and seeing the earlier operations' writes:
capacity sums and ``"any"`` placement count the grants made just before in the same batch.

**One failing operation answers alone.** Each operation runs inside its own SAVEPOINT.
Savepoints rather than checks in Python before writing, because (1) on PostgreSQL any
statement error (the unique index catching a grant of the same id by another process)
aborts the whole transaction unless a savepoint contains it, and (2) the decisions are the
SQL the single-operation transactions always ran (sums over the rows as they are, guarded
updates), so the batch cannot drift from them. An operation that raises is rolled back to
its savepoint and answers its own error; one that raises ``Refusal`` keeps its writes (an
expiry it recorded) and then answers the refusal. A driver error other than an integrity
error (the connection lost, the disk full) fails the batch, as does a failed commit: every
member then gets that error and none was done.

Only after the commit returns are the members told their outcomes: an operation is
acknowledged once the commit that holds it is durable, never before.
"""

from __future__ import annotations

import copy
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from gpuhistory.callbacks import CallbackRegistry, Event
from gpuhistory.storage.engine import driver_connection
from gpuhistory.storage.schema import gpus

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 64  # operations one transaction takes at most

# Every GPU row the batch touches, locked in id order (PostgreSQL). FOR NO KEY UPDATE
# excludes other lease batches on these GPUs but not the sampler's inserts, whose
# foreign-key checks take only KEY SHARE.
_LOCK_GPUS = (sa.select(gpus.c.id).where(gpus.c.id.in_(sa.bindparam("ids", expanding=True)))
              .order_by(gpus.c.id).with_for_update(key_share=True))


@dataclass(slots=True)
class Tx:
    """One operation's view of the batch's transaction, and the events it announces."""

    conn: sa.Connection
    events: list[Event] = field(default_factory=list)


class Refusal(Exception):
    """Raised by an operation to answer ``error`` while keeping the writes it made."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(eq=False)
class Operation(Generic[T]):
    """One lease change waiting for (or done by) a batch.

    ``run`` does it on the batch's transaction; ``gpu_ids``: the GPU rows it may touch
    (locked up front on PostgreSQL); ``conflict``: after an IntegrityError (rolled back to
    the savepoint), the error to answer instead, read on the same connection.
    """

    run: Callable[[Tx], T]
    gpu_ids: Iterable[int] = ()
    callbacks: CallbackRegistry | None = None
    conflict: Callable[[sa.Connection], Exception | None] | None = None
    result: T | None = None
    error: BaseException | None = None
    events: list[Event] = field(default_factory=list)
    done: bool = False


class GroupCommit:
    """The leader/follower queue of one engine's lease transactions in this process."""

    def __init__(self, engine: sa.Engine, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._sqlite = engine.dialect.name == "sqlite"
        self._postgresql = engine.dialect.name == "postgresql"
        self._cond = threading.Condition()
        self._queue: deque[Operation[Any]] = deque()
        self._committing = False
        self.commits = 0  # transactions committed
        self.operations = 0  # operations those commits held (done or refused)
        self.failed_commits = 0  # batches that failed as a whole

    @property
    def waiting(self) -> int:
        """Operations queued for the next commit."""
        with self._cond:
            return len(self._queue)

    def submit(self, op: Operation[T]) -> T:
        """Queue ``op``, wait for the commit that holds it; its result, or its error."""
        with self._cond:
            self._queue.append(op)
            while not op.done:
                if self._committing:
                    self._cond.wait()
                    continue
                self._committing = True
                batch = [self._queue.popleft()
                         for _ in range(min(len(self._queue), self.max_batch))]
                self._cond.release()
                try:
                    self._commit(batch)
                finally:
                    self._cond.acquire()
                    self._committing = False
                    for member in batch:
                        member.done = True
                    self._cond.notify_all()
        # Its events (a refusal's recorded expiries too) are announced before it answers.
        if op.callbacks is not None and op.events:
            op.callbacks.dispatch(op.events)
        if op.error is not None:
            raise op.error
        return op.result  # type: ignore[return-value]  # run() returned it: a T

    # -- the committer's part ----------------------------------------------------------
    def _commit(self, batch: list[Operation[Any]]) -> None:
        """Run ``batch`` as one transaction; every member gets its outcome or the batch's
        error."""
        staged: list[tuple[Any, BaseException | None, list[Event]]] = []
        committed = False
        try:
            with self.engine.connect() as conn:
                if self._sqlite:
                    _set_synchronous(conn, "FULL")
                try:
                    conn.execution_options(sqlite_begin="IMMEDIATE")
                    with conn.begin():
                        if self._postgresql:
                            ids = sorted({i for op in batch for i in op.gpu_ids})
                            if ids:
                                conn.execute(_LOCK_GPUS, {"ids": ids}).all()
                        staged = [_run_one(conn, op) for op in batch]
                    committed = True
                finally:
                    if self._sqlite:
                        _set_synchronous(conn, "NORMAL")
        except BaseException as exc:
            if not committed:
                self.failed_commits += 1
                for i, op in enumerate(batch):
                    op.error = exc if i == 0 else _copy(exc)
                    op.events = []
                if not isinstance(exc, Exception):
                    raise
                return
            # Done and durable: the members get their outcomes whatever failed after.
            log.warning("lease connection cleanup failed after a commit", exc_info=True)
        self.commits += 1
        self.operations += len(batch)
        for op, (result, error, events) in zip(batch, staged, strict=True):
            op.result, op.error, op.events = result, error, events


def _run_one(conn: sa.Connection, op: Operation[Any]
             ) -> tuple[Any, BaseException | None, list[Event]]:
    """Run one operation in its own savepoint: (result, error, events to announce)."""
    tx = Tx(conn)
    savepoint = conn.begin_nested()
    try:
        result = op.run(tx)
    except Refusal as refused:
        savepoint.commit()
        return None, refused.error, tx.events
    except sa.exc.IntegrityError as exc:
        savepoint.rollback()
        instead = op.conflict(conn) if op.conflict is not None else None
        return None, instead or exc, []
    except sa.exc.DBAPIError:
        raise  # the connection or the database failed: the whole batch fails
    except Exception as exc:
        savepoint.rollback()
        return None, exc, []
    savepoint.commit()
    return result, None, tx.events


def _copy(exc: BaseException) -> BaseException:
    """A copy of the batch's error for each further member (its own traceback)."""
    try:
        twin = copy.copy(exc)
    except Exception:
        return exc
    twin.__cause__ = exc.__cause__
    return twin


def _set_synchronous(conn: sa.Connection, mode: str) -> None:
    """Set SQLite's ``synchronous`` on the pooled connection, outside any transaction."""
    if conn.invalidated or conn.closed:
        return
    try:
        driver_connection(conn).execute(f"PRAGMA synchronous = {mode}")
    except Exception:
        if mode != "NORMAL":
            raise
        # Never hand a FULL connection back to the pool for sample ticks: drop it.
        log.warning("could not restore PRAGMA synchronous = NORMAL", exc_info=True)
        conn.invalidate()


_COMMITTERS: weakref.WeakKeyDictionary[sa.Engine, GroupCommit] = weakref.WeakKeyDictionary()
_COMMITTERS_LOCK = threading.Lock()


def group_commit(engine: sa.Engine) -> GroupCommit:
    """This process's group committer for ``engine`` (one per engine, shared by every
    LeaseManager on it, whatever its host)."""
    with _COMMITTERS_LOCK:
        committer = _COMMITTERS.get(engine)
        if committer is None:
            committer = _COMMITTERS[engine] = GroupCommit(engine)
        return committer
