"""Group commit of lease operations: concurrent grants, renewals and releases of one process
share one durable transaction, decided in order, each answered by its own outcome.

Batches are made to form deterministically: a *gate* operation, submitted first, holds the
committer inside its transaction until the other threads have queued, so they all land in
the next batch together. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from gpuhistory.callbacks import CallbackRegistry
from gpuhistory.clock import FakeClock
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.leases import LeaseManager, LeaseNotActive
from gpuhistory.leases.group_commit import GroupCommit, Operation, Tx
from gpuhistory.storage.log import LogStore
from tests.test_leases import RESERVE_MIB, add_gpu, lease_events, lease_rows, make_manager

pytestmark = pytest.mark.postgres

GRANT_MIB = 1000
FITS = 10
CARD_MIB = FITS * GRANT_MIB + RESERVE_MIB


@pytest.fixture
def card(store: LogStore, clock: FakeClock) -> int:
    """GPU 0 with room for exactly FITS grants of GRANT_MIB."""
    return add_gpu(store, clock, total=CARD_MIB)


@pytest.fixture
def leases(engine: sa.Engine, clock: FakeClock, card: int) -> LeaseManager:
    return make_manager(engine, clock)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.001)


class Batch:
    """Threads whose operations are queued, in order, behind a gate, then committed as one
    batch; ``outcomes[i]`` is what the i-th call returned or raised."""

    def __init__(self, committer: GroupCommit) -> None:
        self.committer = committer
        self.release = threading.Event()
        self.calls: list[Callable[[], Any]] = []
        self.outcomes: list[Any] = []

    def add(self, call: Callable[[], Any]) -> None:
        self.calls.append(call)

    def run(self) -> list[Any]:
        def gate(tx: Tx) -> None:
            assert self.release.wait(30)

        gate_thread = threading.Thread(target=self.committer.submit, args=(Operation(gate),))
        gate_thread.start()
        wait_for(lambda: self.committer._committing)
        self.outcomes = [None] * len(self.calls)
        threads = []
        for i, call in enumerate(self.calls):
            queued = self.committer.waiting
            thread = threading.Thread(target=self._call, args=(i, call))
            thread.start()
            threads.append(thread)
            # One at a time, so the batch holds them in this order (each thread queues
            # once its reads before the lock are done).
            wait_for(lambda q=queued: self.committer.waiting == q + 1)
        self.release.set()
        for thread in [gate_thread, *threads]:
            thread.join(60)
            assert not thread.is_alive()
        return self.outcomes

    def _call(self, i: int, call: Callable[[], Any]) -> None:
        try:
            self.outcomes[i] = call()
        except Exception as exc:
            self.outcomes[i] = exc


def counts(committer: GroupCommit) -> tuple[int, int, int]:
    return committer.commits, committer.operations, committer.failed_commits


def code(outcome: Any) -> str:
    return getattr(outcome, "code", type(outcome).__name__)


def test_32_threads_share_one_commit_and_never_oversubscribe(engine: sa.Engine,
                                                              leases: LeaseManager) -> None:
    """32 threads asking for 1000 MiB each of a card that fits 10, queued behind a gate: one
    commit holds all 32 operations (plus the gate's), exactly 10 are granted and 22 refused
    over capacity — the capacity check of each sees the grants before it in the batch."""
    committer = leases.commits
    before = counts(committer)
    batch = Batch(committer)
    for i in range(32):
        batch.add(lambda i=i: leases.grant(f"job-{i}", GRANT_MIB))
    outcomes = batch.run()
    assert [code(o) for o in outcomes] == ["tuple"] * FITS + ["over_capacity"] * (32 - FITS)
    commits, operations, failed = counts(committer)
    assert (commits - before[0], operations - before[1], failed - before[2]) == (2, 33, 0)
    assert [r.allocation_id for r in lease_rows(engine)] == [f"job-{i}" for i in range(FITS)]
    assert leases.capacity(0).available_mb == 0


def test_32_racing_threads_form_batches(engine: sa.Engine, leases: LeaseManager) -> None:
    """32 threads released together, no gate: fewer commits than operations (the batches
    form on their own) and still exactly the capacity granted."""
    committer = leases.commits
    before = counts(committer)
    barrier = threading.Barrier(32)
    outcomes: list[str] = [""] * 32

    def run(i: int) -> None:
        barrier.wait(10)
        try:
            leases.grant(f"job-{i}", GRANT_MIB)
            outcomes[i] = "ok"
        except Exception as exc:
            outcomes[i] = code(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["ok"] * FITS + ["over_capacity"] * (32 - FITS)
    commits, operations, _ = counts(committer)
    assert operations - before[1] == 32
    assert commits - before[0] < 32
    assert len(lease_rows(engine)) == FITS


def test_mixed_batch_answers_each_operation_by_itself(engine: sa.Engine, clock: FakeClock,
                                                      leases: LeaseManager) -> None:
    """One batch of grants, renewals and releases, some refused: each gets its own answer
    (an over-capacity grant, a wrong token, an unknown id, a duplicate of an id granted
    earlier in the same batch), the others are done, and the log holds exactly those."""
    _, held_token = leases.grant("held", 2 * GRANT_MIB)
    _, other_token = leases.grant("other", GRANT_MIB)
    clock.advance(1)
    batch = Batch(leases.commits)
    batch.add(lambda: leases.grant("a", 6 * GRANT_MIB))  # fits: 7 of 10 left
    batch.add(lambda: leases.grant("b", 2 * GRANT_MIB))  # 1 left after a: over capacity
    batch.add(lambda: leases.renew("held", "not-the-token"))
    batch.add(lambda: leases.release("no-such-id", "x"))
    batch.add(lambda: leases.grant("a", 1))  # a is active since the first operation
    batch.add(lambda: leases.release("other", other_token))  # frees 1000
    batch.add(lambda: leases.grant("c", GRANT_MIB + GRANT_MIB // 2))  # 2000 left now: fits
    batch.add(lambda: leases.renew("held", held_token, ttl_seconds=900))
    outcomes = batch.run()
    assert [code(o) for o in outcomes] == [
        "tuple", "over_capacity", "lease_token_mismatch", "lease_not_found",
        "duplicate_allocation", "Lease", "tuple", "Lease"]
    assert outcomes[1].details["available_mb"] == GRANT_MIB
    assert outcomes[5].release_reason == "released"
    assert outcomes[7].expires_ms == clock.now_ms() + 900_000
    rows = {r.allocation_id: r for r in lease_rows(engine)}
    assert set(rows) == {"held", "other", "a", "c"}
    assert rows["other"].released_ms is not None and rows["a"].released_ms is None
    kinds = [(k, p["allocation_id"]) for k, _, p in lease_events(engine)]
    assert kinds == [("lease_granted", "held"), ("lease_granted", "other"),
                     ("lease_granted", "a"), ("lease_released", "other"),
                     ("lease_granted", "c"), ("lease_renewed", "held")]


def test_any_placement_in_one_batch_counts_the_earlier_grants(
        engine: sa.Engine, store: LogStore, clock: FakeClock) -> None:
    """``gpu_id="any"`` grants queued in one batch: each is placed by best fit over the
    capacity the grants before it left, and the one that fits nowhere is refused."""
    add_gpu(store, clock, index=0, total=3000 + RESERVE_MIB)
    add_gpu(store, clock, index=1, total=5000 + RESERVE_MIB)
    leases = make_manager(engine, clock)
    batch = Batch(leases.commits)
    for i in range(4):
        batch.add(lambda i=i: leases.grant(f"any-{i}", 2000, gpu_index="any"))
    outcomes = batch.run()
    assert [o[0].gpu_id for o in outcomes[:3]] == [0, 1, 1]
    assert code(outcomes[3]) == "no_gpu_fits"
    assert {g["gpu_id"]: g["available_mb"] for g in outcomes[3].details["gpus"]} == {
        0: 1000, 1: 1000}


@pytest.fixture
def failing_commit(engine: sa.Engine) -> Iterator[dict[str, int]]:
    """Makes the ``fail``-th COMMIT on the engine from now on fail (as a lost disk would)."""
    state = {"seen": 0, "fail": 0}

    def on_commit(conn: sa.Connection) -> None:
        state["seen"] += 1
        if state["seen"] == state["fail"]:
            raise sa.exc.OperationalError("COMMIT", {}, OSError("disk I/O error (injected)"))

    sa.event.listen(engine, "commit", on_commit)
    yield state
    sa.event.remove(engine, "commit", on_commit)


def test_a_failed_commit_answers_every_member_and_changes_nothing(
        engine: sa.Engine, clock: FakeClock, leases: LeaseManager,
        failing_commit: dict[str, int]) -> None:
    """The commit of a batch of five grants and a release fails: all six get the error,
    none of their rows or events is in the log, the released lease is still active, and
    the next request is done normally."""
    _, kept_token = leases.grant("kept", GRANT_MIB)
    committer = leases.commits
    before = counts(committer)
    failing_commit["fail"] = failing_commit["seen"] + 2  # the gate's commit, then this one
    batch = Batch(committer)
    for i in range(5):
        batch.add(lambda i=i: leases.grant(f"lost-{i}", GRANT_MIB))
    batch.add(lambda: leases.release("kept", kept_token))
    outcomes = batch.run()
    assert all(isinstance(o, sa.exc.OperationalError) and "injected" in str(o)
               for o in outcomes), outcomes
    assert len({id(o) for o in outcomes}) == 6  # each caller raises its own copy
    commits, operations, failed = counts(committer)
    assert (commits - before[0], operations - before[1], failed - before[2]) == (1, 1, 1)
    assert [r.allocation_id for r in lease_rows(engine)] == ["kept"]
    assert lease_rows(engine)[0].released_ms is None
    assert [k for k, _, _ in lease_events(engine)] == ["lease_granted"]
    lease, _ = leases.grant("after", GRANT_MIB)
    assert lease.allocation_id == "after"


def test_a_lone_request_is_committed_by_its_own_thread_at_once(
        engine: sa.Engine, leases: LeaseManager) -> None:
    """With nothing else queued, a grant is committed by the calling thread itself (no
    committer thread, no waiting for company): one commit, one operation."""
    committing: list[int] = []

    def on_commit(conn: sa.Connection) -> None:
        committing.append(threading.get_ident())

    committer = leases.commits
    before = counts(committer)
    sa.event.listen(engine, "commit", on_commit)
    try:
        leases.grant("alone", GRANT_MIB)
    finally:
        sa.event.remove(engine, "commit", on_commit)
    assert committing == [threading.get_ident()]
    commits, operations, _ = counts(committer)
    assert (commits - before[0], operations - before[1]) == (1, 1)


def test_managers_of_one_engine_share_one_committer(engine: sa.Engine, clock: FakeClock,
                                                    leases: LeaseManager) -> None:
    """Every manager on an engine (another host's too) queues on the same committer, so
    their operations share batches; another engine has its own."""
    assert make_manager(engine, clock).commits is leases.commits
    assert leases.for_host("elsewhere").commits is leases.commits
    other = sa.create_engine("sqlite://")
    try:
        assert LeaseManager(other, "h", clock,
                            lambda: DEFAULT_CONFIG).commits is not leases.commits
    finally:
        other.dispose()


def test_a_refusal_that_recorded_an_expiry_announces_it(engine: sa.Engine, clock: FakeClock,
                                                        card: int) -> None:
    """Renewing a lease past its expiry records the expiry and is refused: the
    ``lease_expired`` event is committed and reaches the callbacks before the refusal."""
    heard: list[str] = []
    registry = CallbackRegistry()
    registry.register("*", lambda event: heard.append(event.kind))
    leases = make_manager(engine, clock, callbacks=registry)
    _, token = leases.grant("short", GRANT_MIB, ttl_seconds=5)
    clock.advance(6)
    with pytest.raises(LeaseNotActive):
        leases.renew("short", token)
    assert heard == ["lease_granted", "lease_expired"]
    assert [k for k, _, _ in lease_events(engine)] == ["lease_granted", "lease_expired"]
