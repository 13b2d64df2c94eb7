"""Leases: the seed's allocation tests, plus TTL, tokens, restarts and the lease log."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from gpuhistory.callbacks import CallbackRegistry
from gpuhistory.clock import FakeClock, iso_utc
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.domain.reading import GpuIdentity, Reading
from gpuhistory.domain.states import GPUState
from gpuhistory.leases import (
    DuplicateAllocation,
    GpuNotFound,
    Lease,
    LeaseError,
    LeaseManager,
    LeaseNotActive,
    LeaseNotFound,
    LeaseTokenMismatch,
    OverCapacity,
)
from gpuhistory.storage.engine import make_engine
from gpuhistory.storage.log import LogStore, TickRecord, sample_row
from tests.conftest import sqlite_only

pytestmark = pytest.mark.postgres

HOST = "testhost"
CARD_MIB = 8192  # the seed's 8 GB card
RESERVE_MIB = 512


def add_gpu(store: LogStore, clock: FakeClock, index: int = 0, total: int | None = CARD_MIB,
            used: int = 100) -> int:
    """Register a GPU on the store's host and give it one sample; returns its gpus.id."""
    ts = clock.now_ms()
    uuid = f"GPU-lease-{index}"
    gpu_id = store.gpu_id(GpuIdentity(index=index, uuid=uuid, name=f"card {index}",
                                      memory_total_mib=total), "sim", ts)
    reading = Reading(index=index, uuid=uuid, temperature_c=40, memory_used_mib=used,
                      memory_total_mib=total)
    store.write(TickRecord(samples=[sample_row(gpu_id, ts, int(GPUState.OPTIMAL), reading)]))
    return gpu_id


@pytest.fixture
def gpu(store: LogStore, clock: FakeClock) -> int:
    return add_gpu(store, clock)


def make_manager(engine: sa.Engine, clock: FakeClock, callbacks: CallbackRegistry | None = None,
                 **config: object) -> LeaseManager:
    cfg = DEFAULT_CONFIG.changed(**config)
    return LeaseManager(engine, HOST, clock, lambda: cfg, callbacks=callbacks)


@pytest.fixture
def leases(engine: sa.Engine, clock: FakeClock, gpu: int) -> LeaseManager:
    return make_manager(engine, clock)


def lease_events(engine: sa.Engine, kind: str | None = None) -> list[tuple[str, int, dict]]:
    query = "SELECT kind, gpu_id, payload FROM events WHERE kind LIKE 'lease_%'"
    if kind is not None:
        query += f" AND kind = '{kind}'"
    with engine.connect() as conn:
        rows = conn.execute(sa.text(query + " ORDER BY id")).all()
    return [(k, g, json.loads(p) if isinstance(p, str) else p) for k, g, p in rows]


def lease_rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM leases ORDER BY id")).all()


# -- the seed's memory-allocation tests -------------------------------------------------
def test_allocation_initialization(leases: LeaseManager) -> None:
    """A fresh GPU can lease its total memory minus the 512 MiB reserve; nothing is leased."""
    cap = leases.capacity(0)
    assert cap.to_dict() == {
        "gpu_id": 0, "uuid": "GPU-lease-0", "capacity_mb": CARD_MIB - RESERVE_MIB, "leased_mb": 0,
        "available_mb": CARD_MIB - RESERVE_MIB, "active_leases": 0,
        "device_total_mb": CARD_MIB, "device_used_mb": 100, "device_free_mb": CARD_MIB - 100,
        "memory_limit_mb": None, "memory_reserve_mb": RESERVE_MIB,
    }


def test_successful_allocation(leases: LeaseManager, clock: FakeClock, engine, gpu) -> None:
    """A grant returns an active lease with a token, stores a row and logs lease_granted."""
    lease, token = leases.grant("llm_model", 2048, owner="alice")
    now = clock.now_ms()
    assert (lease.allocation_id, lease.gpu_id, lease.memory_mb, lease.owner) == \
        ("llm_model", 0, 2048, "alice")
    assert lease.host == HOST and lease.gpu_uuid == "GPU-lease-0"
    assert lease.ttl_seconds == 300 and lease.expires_ms == now + 300_000
    assert lease.status(now) == "active"
    assert len(token) >= 40
    body = lease.to_dict(now, token)
    assert body["lease_token"] == token and body["status"] == "active"
    assert body["granted_at"] == iso_utc(now) and body["expires_in_seconds"] == 300
    assert leases.capacity(0).available_mb == CARD_MIB - RESERVE_MIB - 2048
    [(kind, gpu_id, payload)] = lease_events(engine)
    assert (kind, gpu_id) == ("lease_granted", gpu)
    assert payload == {"allocation_id": "llm_model", "memory_mb": 2048, "owner": "alice",
                       "ttl_seconds": 300, "expires_at": iso_utc(now + 300_000)}


def test_multiple_allocations(leases: LeaseManager) -> None:
    """Several leases on one GPU add up."""
    for i, mib in enumerate((1024, 2048, 512)):
        leases.grant(f"job-{i}", mib)
    cap = leases.capacity(0)
    assert (cap.leased_mb, cap.active_leases) == (3584, 3)
    assert cap.available_mb == CARD_MIB - RESERVE_MIB - 3584


def test_allocation_exceeds_limit(leases: LeaseManager, engine) -> None:
    """A grant beyond what is left is refused (409) with the MiB available; nothing changes."""
    leases.grant("big", 5000)
    with pytest.raises(OverCapacity) as err:
        leases.grant("too-big", 3000)
    assert (err.value.status, err.value.code) == (409, "over_capacity")
    assert err.value.details == {"gpu_id": 0, "requested_mb": 3000, "available_mb": 2680,
                                 "capacity_mb": 7680, "leased_mb": 5000}
    assert "2680 MiB available" in err.value.message
    assert len(lease_rows(engine)) == 1
    leases.grant("fits", 2680)  # exactly what is left is fine
    assert leases.capacity(0).available_mb == 0


def test_duplicate_allocation_id(leases: LeaseManager, clock: FakeClock) -> None:
    """An id that already has an active lease is refused (409) naming that lease's GPU."""
    lease, _ = leases.grant("job", 1000)
    with pytest.raises(DuplicateAllocation) as err:
        leases.grant("job", 10)
    assert (err.value.status, err.value.code) == (409, "duplicate_allocation")
    assert err.value.details == {"allocation_id": "job", "gpu_id": 0,
                                 "expires_at": iso_utc(lease.expires_ms)}
    assert leases.capacity(0).leased_mb == 1000


def test_deallocation(leases: LeaseManager, clock: FakeClock, engine) -> None:
    """Release frees the memory at once, marks the row released and logs lease_released."""
    _, token = leases.grant("job", 3000)
    clock.advance(5)
    released = leases.release("job", token)
    assert released.status(clock.now_ms()) == "released"
    assert released.released_ms == clock.now_ms() and released.release_reason == "released"
    assert leases.capacity(0).leased_mb == 0
    assert leases.get("job").status(clock.now_ms()) == "released"
    assert [k for k, _, _ in lease_events(engine)] == ["lease_granted", "lease_released"]


def test_deallocation_nonexistent(leases: LeaseManager) -> None:
    """Release, renew and get of an id never granted: LeaseNotFound (404)."""
    for call in (lambda: leases.release("ghost", "t"), lambda: leases.renew("ghost", "t"),
                 lambda: leases.get("ghost")):
        with pytest.raises(LeaseNotFound) as err:
            call()
        assert (err.value.status, err.value.code) == (404, "lease_not_found")


def test_usage_stats(leases: LeaseManager, store, clock) -> None:
    """capacity() reports leased, available and the device's own use; GPUs are separate."""
    add_gpu(store, clock, index=1, total=16384, used=4000)
    leases.grant("a", 1000)
    leases.grant("b", 500, gpu_index=1)
    cap0, cap1 = leases.capacity(0), leases.capacity(1)
    assert (cap0.leased_mb, cap0.active_leases, cap0.available_mb) == (1000, 1, 6680)
    assert (cap1.capacity_mb, cap1.leased_mb, cap1.available_mb) == (15872, 500, 15372)
    assert (cap1.device_used_mb, cap1.device_free_mb) == (4000, 12384)


# -- capacity rules ---------------------------------------------------------------------
def test_memory_limit_caps_capacity_only_when_smaller(engine, clock, gpu) -> None:
    """memory_limit_mb caps a card's leasable memory; a limit above the card changes nothing."""
    assert make_manager(engine, clock, memory_limit_mb=6144).capacity(0).capacity_mb == 5632
    assert make_manager(engine, clock, memory_limit_mb=99_999).capacity(0).capacity_mb == 7680
    with pytest.raises(OverCapacity):
        make_manager(engine, clock, memory_limit_mb=6144).grant("x", 6000)


def test_reserve_larger_than_the_card_leaves_zero_not_negative(engine, clock, gpu) -> None:
    """Capacity never goes below 0: every grant is over capacity."""
    leases = make_manager(engine, clock, memory_reserve_mb=20_000)
    assert leases.capacity(0).capacity_mb == 0
    with pytest.raises(OverCapacity) as err:
        leases.grant("x", 1)
    assert err.value.details["available_mb"] == 0


def test_unknown_gpu_is_gpu_not_found(leases: LeaseManager, engine) -> None:
    """A GPU index this host never reported: 404 gpu_not_found, nothing written."""
    with pytest.raises(GpuNotFound) as err:
        leases.grant("x", 1, gpu_index=7)
    assert (err.value.status, err.value.code, err.value.details["gpu_id"]) == \
        (404, "gpu_not_found", 7)
    with pytest.raises(GpuNotFound):
        leases.capacity(7)
    other_host = LeaseManager(engine, "elsewhere", FakeClock(), lambda: DEFAULT_CONFIG)
    with pytest.raises(GpuNotFound):
        other_host.grant("x", 1)
    assert lease_rows(engine) == []


@pytest.mark.parametrize("kwargs", [
    {"memory_mb": 0}, {"memory_mb": -5}, {"memory_mb": 1.5}, {"memory_mb": True},
    {"memory_mb": "100"}, {"ttl_seconds": 0}, {"ttl_seconds": -1},
    {"ttl_seconds": float("nan")}, {"ttl_seconds": float("inf")}, {"allocation_id": ""},
    {"allocation_id": "   "}, {"allocation_id": "x" * 129}, {"owner": "o" * 129},
    {"gpu_index": "0"},
])
def test_malformed_arguments_raise_value_error(leases: LeaseManager, engine, kwargs) -> None:
    """Defence in depth behind the HTTP layer's validation: bad arguments never reach SQL."""
    args = {"allocation_id": "job", "memory_mb": 100, **kwargs}
    with pytest.raises(ValueError):
        leases.grant(**args)
    assert lease_rows(engine) == []


def test_the_database_itself_refuses_two_unreleased_leases_of_one_id(leases, engine) -> None:
    """The partial unique index (host, allocation_id) WHERE released_ms IS NULL backs the
    duplicate check even for writers that skip it; released rows may share the id."""
    catalog = ("SELECT sql FROM sqlite_master WHERE name = :name"
               if engine.dialect.name == "sqlite"
               else "SELECT indexdef FROM pg_indexes WHERE indexname = :name")
    with engine.connect() as conn:
        sql = conn.execute(sa.text(catalog),
                           {"name": "uq_leases_host_allocation_active"}).scalar_one()
    assert sql.startswith("CREATE UNIQUE INDEX")
    assert sql.replace("(", "").replace(")", "").endswith("WHERE released_ms IS NULL")
    _, token = leases.grant("job", 100)
    leases.release("job", token)
    leases.grant("job", 100)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO leases (host, allocation_id, gpu_id, memory_mib, token_hash, ttl_ms, "
            "granted_ms, expires_ms) SELECT host, allocation_id, gpu_id, 1, 'x', 1, 1, 2 "
            "FROM leases WHERE released_ms IS NULL"))


# -- TTL and the reaper -----------------------------------------------------------------
def test_expired_lease_stops_counting_without_the_reaper(leases, clock, engine) -> None:
    """At its expiry a lease is expired and frees its memory, before anything is recorded."""
    leases.grant("job", 4000, ttl_seconds=10)
    clock.advance(9.999)
    assert leases.capacity(0).leased_mb == 4000
    clock.advance(0.001)  # exactly at expires_ms
    assert leases.capacity(0).leased_mb == 0
    assert leases.get("job").status(clock.now_ms()) == "expired"
    assert leases.get("job").to_dict(clock.now_ms())["expires_in_seconds"] == 0
    assert [x.allocation_id for x in leases.list(status="expired")] == ["job"]
    assert lease_rows(engine)[0].released_ms is None  # not reaped yet
    leases.grant("next", 7680)  # the whole card is free again


def test_reap_marks_once_and_logs_one_event(leases, clock, engine, gpu) -> None:
    """reap() records the expiry (released_ms = expires_ms) with one event, however often run."""
    lease, _ = leases.grant("job", 1000, ttl_seconds=10, owner="bob")
    leases.grant("long", 1000, ttl_seconds=600)
    assert leases.reap() == 0
    clock.advance(30)
    assert leases.reap() == 1
    assert leases.reap() == 0
    row = lease_rows(engine)[0]
    assert (row.released_ms, row.release_reason) == (lease.expires_ms, "expired")
    [(_, gpu_id, payload)] = lease_events(engine, "lease_expired")
    assert gpu_id == gpu
    assert payload["allocation_id"] == "job" and payload["owner"] == "bob"
    assert payload["expires_at"] == iso_utc(lease.expires_ms)
    assert leases.get("long").status(clock.now_ms()) == "active"


def test_grant_records_overdue_leases_of_its_gpu(leases, clock, engine) -> None:
    """A grant first records its GPU's overdue leases as expired (one event each)."""
    leases.grant("old", 1000, ttl_seconds=5)
    clock.advance(6)
    leases.grant("new", 1000)
    assert lease_rows(engine)[0].release_reason == "expired"
    assert len(lease_events(engine, "lease_expired")) == 1
    assert leases.reap() == 0


def test_renew_extends_the_lease(leases, clock, engine) -> None:
    """Renew moves expiry to now + TTL (its own, or a new one), so it outlives the first TTL."""
    _, token = leases.grant("job", 1000, ttl_seconds=100)
    clock.advance(80)
    renewed = leases.renew("job", token)
    assert renewed.expires_ms == clock.now_ms() + 100_000
    clock.advance(80)  # 160 s after the grant: past the first expiry
    assert leases.get("job").status(clock.now_ms()) == "active"
    shorter = leases.renew("job", token, ttl_seconds=30)
    assert (shorter.expires_ms, shorter.ttl_seconds) == (clock.now_ms() + 30_000, 30)
    assert leases.get("job").expires_ms == shorter.expires_ms
    assert [k for k, _, _ in lease_events(engine)] == \
        ["lease_granted", "lease_renewed", "lease_renewed"]
    payload = lease_events(engine, "lease_renewed")[-1][2]
    assert payload["expires_at"] == iso_utc(shorter.expires_ms)
    assert payload["previous_expires_at"] == iso_utc(renewed.expires_ms)


def test_renew_after_expiry_is_lease_not_active(leases, clock, engine) -> None:
    """Too late to renew: 409 lease_not_active (status expired), and the expiry is recorded."""
    _, token = leases.grant("job", 1000, ttl_seconds=10)
    clock.advance(11)
    with pytest.raises(LeaseNotActive) as err:
        leases.renew("job", token)
    assert (err.value.status, err.value.code) == (409, "lease_not_active")
    assert err.value.details["status"] == "expired"
    assert len(lease_events(engine, "lease_expired")) == 1
    with pytest.raises(LeaseNotActive):
        leases.release("job", token)


def test_release_twice_is_lease_not_active(leases) -> None:
    """A released lease cannot be released or renewed again."""
    _, token = leases.grant("job", 1000)
    leases.release("job", token)
    for call in (lambda: leases.release("job", token), lambda: leases.renew("job", token)):
        with pytest.raises(LeaseNotActive) as err:
            call()
        assert err.value.details["status"] == "released"


# -- tokens -----------------------------------------------------------------------------
def test_wrong_or_missing_token_is_refused_and_admin_bypasses(leases, clock) -> None:
    """Renew and release need the lease's token (403 otherwise); admin=True needs none."""
    _, token = leases.grant("job", 1000)
    wrong = "not-the-token-" + "x" * 30
    for call in (lambda: leases.renew("job", wrong), lambda: leases.release("job", wrong),
                 lambda: leases.release("job"), lambda: leases.renew("job", "")):
        with pytest.raises(LeaseTokenMismatch) as err:
            call()
        assert (err.value.status, err.value.code) == (403, "lease_token_mismatch")
        assert wrong not in str(err.value) and wrong not in repr(err.value.details)
        assert token not in str(err.value)
    assert leases.get("job").status(clock.now_ms()) == "active"
    assert leases.renew("job", admin=True).expires_ms == clock.now_ms() + 300_000
    assert leases.release("job", wrong, admin=True).release_reason == "released"


def test_token_is_never_stored_or_logged_in_plain_text(leases, engine, db_path: Path,
                                                       caplog) -> None:
    """Only the token's sha256 is in the database (SQLite: the file and WAL bytes; any
    backend: every row of every table); no event holds it."""
    caplog.set_level("DEBUG")
    tokens = [leases.grant(f"job-{i}", 100, owner="carol")[1] for i in range(3)]
    leases.renew("job-0", tokens[0])
    leases.release("job-1", tokens[1])
    if engine.dialect.name == "sqlite":
        raw = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
    else:
        with engine.connect() as conn:
            raw = repr([conn.execute(sa.text(f"SELECT * FROM {name}")).all()
                        for name in sa.inspect(conn).get_table_names()]).encode()
    for token in tokens:
        assert token.encode() not in raw
        assert token not in caplog.text
        assert token not in json.dumps([p for _, _, p in lease_events(engine)])
    hashes = {row.token_hash for row in lease_rows(engine)}
    assert hashes == {hashlib.sha256(t.encode()).hexdigest() for t in tokens}
    assert all(t not in repr(lease) for t in tokens for lease in leases.list())


@sqlite_only
def test_lease_commits_use_synchronous_full_then_normal_again(engine, clock, gpu) -> None:
    """Lease transactions commit with synchronous=FULL (durable across power loss); the pooled
    connection is back to NORMAL afterwards, so sample ticks keep their cheap commits."""
    seen: list[int] = []

    def on_commit(conn: sa.Connection) -> None:
        pragma = conn.connection.driver_connection.execute("PRAGMA synchronous")
        seen.append(pragma.fetchone()[0])

    sa.event.listen(engine, "commit", on_commit)
    try:
        leases = make_manager(engine, clock)
        _, token = leases.grant("job", 100)
        leases.release("job", token)
    finally:
        sa.event.remove(engine, "commit", on_commit)
    assert seen == [2, 2]  # FULL
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


# -- reuse, listing, history ------------------------------------------------------------
def test_allocation_id_is_reusable_after_release_or_expiry(leases, clock) -> None:
    """Unique among active leases only: a released or expired id can be granted again."""
    _, token = leases.grant("job", 1000)
    leases.release("job", token)
    leases.grant("job", 2000, ttl_seconds=10)
    clock.advance(10)
    third, _ = leases.grant("job", 3000)
    assert leases.get("job") == third
    assert [(x.memory_mb, x.status(clock.now_ms())) for x in leases.list()] == \
        [(3000, "active"), (2000, "expired"), (1000, "released")]


def test_list_filters_by_gpu_owner_and_status(leases, store, clock) -> None:
    """list() filters by GPU index, owner and status (computed against now), newest first."""
    add_gpu(store, clock, index=1)
    leases.grant("a", 100, owner="alice")
    _, token_b = leases.grant("b", 100, owner="bob", gpu_index=1)
    leases.grant("c", 100, owner="alice", ttl_seconds=5)
    leases.release("b", token_b)
    clock.advance(6)

    def ids(**kw) -> list[str]:
        return [x.allocation_id for x in leases.list(**kw)]

    assert ids() == ["c", "b", "a"]
    assert ids(gpu_index=1) == ["b"]
    assert ids(owner="alice") == ["c", "a"]
    assert ids(status="active") == ["a"]
    assert ids(status="expired") == ["c"]
    assert ids(status="released") == ["b"]
    assert ids(owner="alice", status="expired") == ["c"]
    assert ids(limit=1) == ["c"]
    with pytest.raises(ValueError):
        leases.list(status="bogus")


def test_active_between_finds_leases_overlapping_a_window(leases, store, clock, gpu) -> None:
    """Leases whose [granted, released-or-expiry) overlaps a window: for overheat post-mortems."""
    t0 = clock.now_ms()
    _, token_a = leases.grant("a", 100)  # t0 .. t0+100 s (released)
    clock.advance(50)
    leases.grant("b", 100, ttl_seconds=30)  # t0+50 .. t0+80 s (expired)
    clock.advance(50)
    leases.release("a", token_a)
    clock.advance(100)
    leases.grant("c", 100)  # t0+200 s .. (active)
    add_gpu(store, clock, index=1)
    leases.grant("other-gpu", 100, gpu_index=1)

    def ids(start_s: float, end_s: float) -> list[str]:
        found = leases.active_between(gpu, t0 + round(start_s * 1000), t0 + round(end_s * 1000))
        return [x.allocation_id for x in found]

    assert ids(60, 70) == ["a", "b"]
    assert ids(90, 150) == ["a"]
    assert ids(250, 260) == ["c"]
    assert ids(-100, -1) == []
    assert ids(0, 1000) == ["a", "b", "c"]


def test_a_restarted_manager_sees_the_same_lease(db_url: str, engine, clock, gpu) -> None:
    """Leases are rows: a new engine and manager on the same database keep expiry and token."""
    lease, token = make_manager(engine, clock).grant("job", 1000, ttl_seconds=120)
    engine.dispose()
    fresh = make_engine(db_url)
    try:
        again = LeaseManager(fresh, HOST, clock, lambda: DEFAULT_CONFIG)
        seen = again.get("job")
        assert seen == lease
        assert again.capacity(0).leased_mb == 1000
        assert again.release("job", token).release_reason == "released"
    finally:
        fresh.dispose()


# -- the model and callbacks ------------------------------------------------------------
def test_lease_status_and_json_shape() -> None:
    """status() compares with the given time; to_dict uses DESIGN §5's names, token on request."""
    lease = Lease(allocation_id="j", gpu_id=2, host="h", gpu_uuid="GPU-x", memory_mb=10,
                  owner=None, ttl_seconds=1.5, granted_ms=1000, expires_ms=2500)
    assert [lease.status(t) for t in (1000, 2499, 2500)] == ["active", "active", "expired"]
    released = replace(lease, released_ms=2000, release_reason="released")
    expired = replace(lease, released_ms=2500, release_reason="expired")
    assert (released.status(1500), expired.status(1500)) == ("released", "expired")
    body = lease.to_dict(2000)
    assert set(body) == {"allocation_id", "gpu_id", "uuid", "host", "memory_mb", "owner",
                         "ttl_seconds", "granted_at", "expires_at", "released_at",
                         "release_reason", "status", "expires_in_seconds", "covers"}
    assert body["covers"] == {"pids": [], "slurm_job": None, "container": None}
    assert body["expires_in_seconds"] == 0.5 and body["ttl_seconds"] == 1.5
    assert lease.to_dict(2000, token="tok")["lease_token"] == "tok"
    assert released.to_dict(2100)["expires_in_seconds"] == 0


def test_lease_errors_share_one_shape() -> None:
    """Every lease error carries an HTTP status, a code, a message and details."""
    err = LeaseNotActive("j", "expired")
    assert isinstance(err, LeaseError)
    assert err.to_dict() == {"error": {"code": "lease_not_active",
                                       "message": "the lease 'j' is expired",
                                       "details": {"allocation_id": "j", "status": "expired"}}}


def test_callbacks_hear_lease_events_after_commit(engine, clock, gpu) -> None:
    """In-process callbacks get the same lease events the log stores, with their ids."""
    heard = []
    registry = CallbackRegistry()
    registry.register("*", heard.append)
    leases = make_manager(engine, clock, callbacks=registry)
    _, token = leases.grant("job", 100, ttl_seconds=5)
    with pytest.raises(OverCapacity):
        leases.grant("huge", 100_000)
    leases.renew("job", token)
    leases.release("job", token)
    assert [(e.kind, e.gpu_id, e.payload["allocation_id"]) for e in heard] == [
        ("lease_granted", 0, "job"), ("lease_renewed", 0, "job"), ("lease_released", 0, "job")]
    assert all(e.id is not None for e in heard)
