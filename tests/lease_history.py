"""Jepsen-style lease histories: record what many clients were told, then check it against a
model of lease semantics and against the log.

**Recording.** Each ``LeaseClient`` is a thread with its own HTTP session that grants,
renews and releases its own leases over real HTTP (one operation at a time, so the
operations on one lease are totally ordered). Every operation is an ``Op``: the fake
clock's time when it was sent (``invoke_ms``) and when its answer came (``ack_ms``), and
the outcome — ``ok`` (2xx, with the answer's times), ``refused`` (4xx or 503, with the error
code: nothing happened), ``not_sent`` (the connection was refused: nothing happened),
``in_doubt`` (sent, no answer: the server died under it) or ``error`` (another 5xx).
Clients renew each lease when it is within ``margin_ms`` of its expiry and advance the
shared clock a few milliseconds after each operation; a ``ClockDriver`` also moves it slowly with
real time, so it moves while transactions are open too. Renewals keep racing
expiries, and grants that expire leases to make room.

**The model** (``check``): a lease is alive from its grant until its release, or until its
expiry, which each renewal moves to the renewal's time plus its TTL. Against that:

- a refused or never-sent grant left no lease; an acknowledged one is in the log once, with
  the acknowledged GPU, size and grant time;
- a renewal or release is acknowledged only while the lease is alive (its acknowledged
  expiry had not passed when it was sent), at a time between sending and answer; a refusal
  as ``lease_not_active`` only once the acknowledged expiry had passed when it was answered;
- the log's final record of each lease is the one the acknowledgements imply: released at
  the acknowledged release time, or expiring (recorded or not) at the last acknowledged
  expiry — a lease recorded expired at an older expiry contradicts an acknowledged renewal;
  an operation in doubt may have happened or not, nothing else;
- at most one ``lease_expired`` event per lease, at the expiry the log records;
- for each GPU, at no instant do the alive leases (as acknowledged; as logged where an
  operation was in doubt) hold more than the GPU's lease capacity.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import requests
import sqlalchemy as sa

from tests.crash_harness import never_sent

NEAR_MS = 20  # a renewal done this close to the old expiry (server time) raced it
ALLOCATE, RENEW, DEALLOCATE = ("/api/gpu/memory/allocate", "/api/gpu/memory/renew",
                               "/api/gpu/memory/deallocate")


class Clock(Protocol):
    def now_ms(self) -> int: ...

    def advance_ms(self, ms: int) -> int: ...


def to_ms(iso: str | None) -> int | None:
    if iso is None:
        return None
    return round(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass
class Op:
    """One request and what became of it."""

    client: int
    kind: str  # grant, renew, release
    allocation_id: str
    invoke_ms: int
    gpu_id: int | None = None
    memory_mb: int | None = None
    ttl_ms: int | None = None
    ack_ms: int | None = None
    outcome: str = "pending"  # ok, refused, not_sent, in_doubt, error
    code: str | None = None  # the error code of a refusal, or the HTTP status of an error
    granted_ms: int | None = None
    expires_ms: int | None = None
    released_ms: int | None = None


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: Op) -> Op:
        with self.lock:
            self.ops.append(op)
        return op

    def snapshot(self) -> list[Op]:
        with self.lock:
            return list(self.ops)


@dataclass
class Workload:
    """What the clients ask for."""

    gpus: int
    memory_mb: tuple[int, int]  # a grant's size, uniformly in this range
    ttl_ms: tuple[int, int]  # a grant's or renewal's TTL
    margin_ms: int  # renew (or release) a lease once its expiry is this close
    max_held: int  # leases one client holds at most
    step_ms: tuple[int, int]  # the clock moves this much after each operation


@dataclass
class _Held:
    token: str
    expires_ms: int


class LeaseClient(threading.Thread):
    """One client: grants, renews near expiry, releases; records every operation."""

    def __init__(self, number: int, urls: Callable[[], list[str]], clock: Clock,
                 history: History, workload: Workload, stop: threading.Event,
                 seed: int) -> None:
        super().__init__(name=f"lease-client-{number}", daemon=True)
        self.number, self.urls, self.clock, self.history = number, urls, clock, history
        self.work, self.stop = workload, stop
        self.rng = random.Random(seed)
        self.held: dict[str, _Held] = {}
        self.sequence = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        session = requests.Session()
        try:
            while not self.stop.is_set():
                urls = self.urls()
                if not urls:
                    self.stop.wait(0.01)
                    continue
                self._step(session, self.rng.choice(urls))
                self.clock.advance_ms(self.rng.randint(*self.work.step_ms))
        except BaseException as exc:  # reported by the test, never lost in a thread
            self.failure = exc
        finally:
            session.close()

    def _step(self, session: requests.Session, url: str) -> None:
        now, rng = self.clock.now_ms(), self.rng
        due = sorted((h.expires_ms, i) for i, h in self.held.items()
                     if h.expires_ms - now <= self.work.margin_ms)
        if due:  # renew it (mostly) or let it go
            allocation_id = due[0][1]
            if rng.random() < 0.85:
                self._renew(session, url, allocation_id)
            else:
                self._release(session, url, allocation_id)
        elif self.held and (len(self.held) >= self.work.max_held or rng.random() < 0.2):
            self._release(session, url, rng.choice(sorted(self.held)))
        else:
            self._grant(session, url)

    def _send(self, session: requests.Session, url: str, path: str, body: dict[str, Any],
              op: Op) -> dict[str, Any] | None:
        """POST and record the outcome; the answer's JSON when it was 2xx."""
        try:
            response = session.post(f"{url}{path}", json=body, timeout=60)
        except requests.RequestException as exc:
            op.outcome = "not_sent" if never_sent(exc) else "in_doubt"
            op.ack_ms = self.clock.now_ms()
            session.close()
            return None
        op.ack_ms = self.clock.now_ms()
        if response.status_code < 300:
            op.outcome = "ok"
            return response.json()
        if response.status_code < 500 or response.status_code == 503:
            op.outcome = "refused"
            try:
                op.code = response.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                op.code = str(response.status_code)
        else:
            op.outcome, op.code = "error", f"{response.status_code} {response.text[:200]}"
        return None

    def _grant(self, session: requests.Session, url: str) -> None:
        self.sequence += 1
        allocation_id = f"c{self.number}-{self.sequence}"
        rng, work = self.rng, self.work
        op = self.history.add(Op(
            self.number, "grant", allocation_id, self.clock.now_ms(),
            gpu_id=rng.randrange(work.gpus), memory_mb=rng.randint(*work.memory_mb),
            ttl_ms=rng.randint(*work.ttl_ms)))
        answer = self._send(session, url, ALLOCATE, {
            "allocation_id": allocation_id, "memory_mb": op.memory_mb, "gpu_id": op.gpu_id,
            "ttl_seconds": op.ttl_ms / 1000, "owner": f"client-{self.number}"}, op)
        if answer is not None:
            op.granted_ms, op.expires_ms = to_ms(answer["granted_at"]), to_ms(answer["expires_at"])
            self.held[allocation_id] = _Held(answer["lease_token"], op.expires_ms)

    def _renew(self, session: requests.Session, url: str, allocation_id: str) -> None:
        held = self.held[allocation_id]
        op = self.history.add(Op(self.number, "renew", allocation_id, self.clock.now_ms(),
                                 ttl_ms=self.rng.randint(*self.work.ttl_ms)))
        answer = self._send(session, url, RENEW, {
            "allocation_id": allocation_id, "lease_token": held.token,
            "ttl_seconds": op.ttl_ms / 1000}, op)
        if answer is not None:
            op.expires_ms = held.expires_ms = to_ms(answer["expires_at"])
        elif op.outcome != "not_sent" and op.code != "database_unavailable":
            del self.held[allocation_id]  # not active any more, or in doubt: leave it be

    def _release(self, session: requests.Session, url: str, allocation_id: str) -> None:
        held = self.held[allocation_id]
        op = self.history.add(Op(self.number, "release", allocation_id, self.clock.now_ms()))
        answer = self._send(session, url, DEALLOCATE, {
            "allocation_id": allocation_id, "lease_token": held.token}, op)
        if answer is not None:
            op.released_ms = to_ms(answer["released_at"])
        if op.outcome != "not_sent" and op.code != "database_unavailable":
            del self.held[allocation_id]


class ClockDriver(threading.Thread):
    """Moves the clock 0-``max_ms`` ms every ``period_s`` of real time as well, so that it also
    moves while a transaction is open and no operation completes (a single SQLite writer)."""

    def __init__(self, clock: Clock, stop: threading.Event, seed: int, max_ms: int = 2,
                 period_s: float = 0.002) -> None:
        super().__init__(name="clock-driver", daemon=True)
        self.clock, self.stop, self.max_ms, self.period_s = clock, stop, max_ms, period_s
        self.rng = random.Random(seed)
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(self.period_s):
                self.clock.advance_ms(self.rng.randint(0, self.max_ms))
        except BaseException as exc:
            self.failure = exc


class SlowCommits:
    """Latency injected at each commit of ``engine``'s transactions: the clock moves 0-``max_ms``
    ms while the transaction, and every row lock it holds, is still open, and the thread
    yields so others run meanwhile — as when a commit waits for the disk under load."""

    def __init__(self, engine: sa.Engine, clock: Clock, seed: int, max_ms: int = 3) -> None:
        self.engine, self.clock, self.max_ms = engine, clock, max_ms
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        sa.event.listen(engine, "commit", self._commit)

    def _commit(self, conn: sa.Connection) -> None:
        with self.rng_lock:
            step = self.rng.randint(0, self.max_ms)
        self.clock.advance_ms(step)
        time.sleep(0)  # let the other writers run while this one holds its locks

    def remove(self) -> None:
        sa.event.remove(self.engine, "commit", self._commit)


class Reaper(threading.Thread):
    """Records overdue leases as expired, as the service's reaper job does, in a loop."""

    def __init__(self, reap: Callable[[], int], stop: threading.Event) -> None:
        super().__init__(name="reaper", daemon=True)
        self.reap, self.stop = reap, stop
        self.marked = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(0.005):
                self.marked += self.reap()
        except BaseException as exc:
            self.failure = exc


# -- the log --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    allocation_id: str
    gpu_id: int
    memory_mb: int
    granted_ms: int
    expires_ms: int
    released_ms: int | None
    release_reason: str | None

    @property
    def end_ms(self) -> int:
        return self.expires_ms if self.released_ms is None else self.released_ms


def read_log(engine: sa.Engine, host: str) -> tuple[list[Row], list[dict[str, Any]]]:
    """The host's lease rows, and the payloads of its ``lease_expired`` events."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT l.allocation_id, g.gpu_index, l.memory_mib, l.granted_ms, l.expires_ms, "
            "l.released_ms, l.release_reason FROM leases l JOIN gpus g ON g.id = l.gpu_id "
            "WHERE l.host = :host ORDER BY l.id"), {"host": host}).all()
        payloads = conn.execute(sa.text(
            "SELECT e.payload FROM events e JOIN gpus g ON g.id = e.gpu_id "
            "WHERE e.kind = 'lease_expired' AND g.host = :host ORDER BY e.id"),
            {"host": host}).scalars().all()
    return ([Row(*r) for r in rows],
            [p if isinstance(p, dict) else json.loads(p) for p in payloads])


# -- the model ------------------------------------------------------------------------------
@dataclass
class Verdict:
    problems: list[str]
    figures: dict[str, int]


def check(ops: list[Op], rows: list[Row], expired_events: list[dict[str, Any]],
          capacity_mb: dict[int, int]) -> Verdict:
    """Check a finished history against the model and the log (see the module's doc)."""
    problems: list[str] = []
    figures: Counter[str] = Counter()
    by_id: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_id[op.allocation_id].append(op)
        figures[f"{op.kind}_{op.outcome}"] += 1
        if op.outcome == "error":
            problems.append(f"{op.kind} {op.allocation_id}: server error {op.code}")
    rows_by_id: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        rows_by_id[row.allocation_id].append(row)
    for allocation_id in sorted(set(rows_by_id) - set(by_id)):
        problems.append(f"{allocation_id}: a lease in the log that no client asked for")

    lives: list[tuple[int, int, int, int, str]] = []  # gpu, start, end, MiB, allocation id
    for allocation_id, seq in by_id.items():
        found = rows_by_id.get(allocation_id, [])
        if len(found) > 1:
            problems.append(f"{allocation_id}: {len(found)} lease rows for one grant")
        row = found[0] if found else None
        life = _check_lease(allocation_id, seq, row, problems, figures)
        if life is not None:
            lives.append((*life, allocation_id))

    seen_expired: Counter[str] = Counter()
    rows_one = {i: r[0] for i, r in rows_by_id.items()}
    for payload in expired_events:
        allocation_id = payload["allocation_id"]
        seen_expired[allocation_id] += 1
        row = rows_one.get(allocation_id)
        if row is None or row.release_reason != "expired" or \
                to_ms(payload["expires_at"]) != row.released_ms:
            problems.append(f"{allocation_id}: lease_expired event at {payload['expires_at']} "
                            f"does not match the log ({row})")
    problems += [f"{i}: {n} lease_expired events" for i, n in seen_expired.items() if n > 1]
    figures["expiries_recorded"] = sum(seen_expired.values())

    for gpu, worst, at in _peaks(lives):
        figures[f"gpu{gpu}_peak_mb"] = worst
        if worst > capacity_mb[gpu]:
            alive = sorted((start, end, mib, i) for g, start, end, mib, i in lives
                           if g == gpu and start <= at < end)
            problems.append(f"GPU {gpu}: {worst} MiB of leases alive at {at}, capacity "
                            f"{capacity_mb[gpu]} MiB; (start, end, MiB, id): {alive}")
    return Verdict(problems, dict(figures))


def _check_lease(allocation_id: str, seq: list[Op], row: Row | None, problems: list[str],
                 figures: Counter[str]) -> tuple[int, int, int, int] | None:
    """Walk one lease's operations (in order); its alive interval for the capacity check."""
    def problem(text: str) -> None:
        problems.append(f"{allocation_id}: {text}")

    grant = seq[0]
    if grant.kind != "grant":
        problem(f"first operation is a {grant.kind}")
        return None
    if grant.outcome in ("refused", "not_sent"):
        if row is not None:
            problem(f"grant {grant.outcome} ({grant.code}) but the log has the lease")
        return None
    if grant.outcome == "in_doubt" or grant.outcome == "error":
        if row is not None and row.granted_ms < grant.invoke_ms:
            problem("a grant in doubt is logged before it was sent")
        return None if row is None else (row.gpu_id, row.granted_ms, row.end_ms, row.memory_mb)
    if row is None:
        problem("acknowledged grant is not in the log")
        return None
    if (row.gpu_id, row.memory_mb, row.granted_ms) != (grant.gpu_id, grant.memory_mb,
                                                       grant.granted_ms):
        problem(f"logged as {row}, acknowledged as {grant}")
    if not grant.invoke_ms <= grant.granted_ms <= grant.ack_ms:  # type: ignore[operator]
        problem(f"granted at {grant.granted_ms}, outside [{grant.invoke_ms}, {grant.ack_ms}]")

    expires: int = grant.expires_ms  # type: ignore[assignment]
    released: int | None = None
    doubt: Op | None = None
    for op in seq[1:]:
        if op.outcome == "not_sent" or op.code == "database_unavailable":
            continue  # nothing happened
        if op.outcome in ("in_doubt", "error"):
            doubt = op
            break
        if op.outcome == "refused":
            if op.code != "lease_not_active":
                problem(f"{op.kind} refused with {op.code}")
            elif expires > op.ack_ms:  # type: ignore[operator]
                problem(f"{op.kind} refused as not active at {op.ack_ms}, but the lease was "
                        f"acknowledged alive until {expires}")
            break
        if expires <= op.invoke_ms:
            problem(f"{op.kind} acknowledged, but the lease had expired at {expires}, before "
                    f"it was sent at {op.invoke_ms}")
        if op.kind == "renew":
            ttl = op.ttl_ms or 0
            if not op.invoke_ms + ttl <= op.expires_ms <= op.ack_ms + ttl:  # type: ignore
                problem(f"renewed until {op.expires_ms}, not {ttl} ms after a time in "
                        f"[{op.invoke_ms}, {op.ack_ms}]")
            before = expires - (op.expires_ms - ttl)  # type: ignore[operator]
            if before <= NEAR_MS:
                figures[f"renewals_within_{NEAR_MS}ms_of_the_old_expiry"] += 1
            closest = figures.get("closest_renewal_to_the_old_expiry_ms")
            figures["closest_renewal_to_the_old_expiry_ms"] = (
                before if closest is None else min(closest, before))
            if expires <= op.ack_ms:  # type: ignore[operator]
                figures["renewals_acknowledged_across_the_old_expiry"] += 1
            expires = op.expires_ms  # type: ignore[assignment]
        else:
            if not op.invoke_ms <= op.released_ms <= op.ack_ms:  # type: ignore[operator]
                problem(f"released at {op.released_ms}, outside [{op.invoke_ms}, {op.ack_ms}]")
            released = op.released_ms
            break

    as_acknowledged = _matches(row, expires, released)
    if doubt is None:
        if not as_acknowledged:
            what = (f"released at {released}" if released is not None
                    else f"alive until {expires}")
            problem(f"acknowledged {what}, but the log says {_describe(row)}")
        end = released if released is not None else expires
        return (row.gpu_id, row.granted_ms, max(end, row.end_ms), row.memory_mb)
    figures["leases_in_doubt"] += 1
    if doubt.kind == "renew":
        happened = (row.expires_ms >= doubt.invoke_ms + (doubt.ttl_ms or 0)
                    and _matches(row, row.expires_ms, None))
    else:
        happened = (row.release_reason == "released" and row.released_ms is not None
                    and doubt.invoke_ms <= row.released_ms < expires)
    if not (as_acknowledged or happened):
        problem(f"after a {doubt.kind} in doubt (sent at {doubt.invoke_ms}), the log says "
                f"{_describe(row)}; acknowledged alive until {expires}")
    # An operation in doubt that happened ends the lease where the log says: a release in
    # doubt that committed freed the memory at its logged time, before the acknowledged
    # expiry, and grants after that time rightly counted the memory as free again.
    end = row.end_ms if happened else max(expires, row.end_ms)
    return (row.gpu_id, row.granted_ms, end, row.memory_mb)


def _matches(row: Row, expires: int, released: int | None) -> bool:
    """Whether the log's record is: released at ``released``, or ending at ``expires``."""
    if released is not None:
        return row.release_reason == "released" and row.released_ms == released
    if row.expires_ms != expires:
        return False
    return row.released_ms is None or (row.release_reason == "expired"
                                       and row.released_ms == expires)


def _describe(row: Row) -> str:
    if row.released_ms is None:
        return f"unreleased, expiring at {row.expires_ms}"
    return f"{row.release_reason} at {row.released_ms} (expiry {row.expires_ms})"


def _peaks(lives: list[tuple[int, int, int, int, str]]) -> list[tuple[int, int, int]]:
    """Per GPU: the most MiB alive at one instant, and that instant (half-open lives)."""
    points: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for gpu, start, end, mib, _ in lives:
        if end > start:
            points[gpu] += [(start, mib), (end, -mib)]
    peaks = []
    for gpu, changes in sorted(points.items()):
        alive = worst = at = 0
        for t, delta in sorted(changes):  # at one instant, endings (negative) come first
            alive += delta
            if alive > worst:
                worst, at = alive, t
        peaks.append((gpu, worst, at))
    return peaks
