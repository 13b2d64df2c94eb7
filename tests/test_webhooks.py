"""Webhook delivery against a real local HTTP receiver, on SQLite and PostgreSQL: what is
sent (body, signature, idempotency key), to whom (kinds, GPUs), and what happens when the
receiver is down, failing, rejecting or hanging. Time is the FakeClock: backoff is stepped
through, never slept."""

from __future__ import annotations

import base64
import json
import random
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from gpuhistory.alerts.config import WebhookConfig
from gpuhistory.alerts.deliverer import WebhookDeliverer
from gpuhistory.alerts.store import Attempt
from gpuhistory.clock import FakeClock
from gpuhistory.domain.events import EventDraft, EventKind
from gpuhistory.domain.reading import GpuIdentity
from gpuhistory.storage.log import LogStore
from gpuhistory.storage.schema import webhook_deliveries, webhooks
from tests.conftest import REPO, App

pytestmark = pytest.mark.postgres

SECRET = "s3cret-for-signing-0123456789"

HOST = "testhost"


# -- a real receiver ------------------------------------------------------------------------
@dataclass
class Received:
    path: str
    headers: Message
    body: bytes
    answered: int | None  # the status it answered; None: it hung (the client gave up)

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def key(self) -> str:
        return self.headers["Idempotency-Key"]


class Receiver:
    """http.server in a thread on a free port, recording every request. ``status`` is what
    it answers; ``hang`` makes it hold each request until ``release`` is set; ``stop`` and
    ``start`` take it down (connection refused) and bring it back on the same port."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.status = 200
        self.retry_after: str | None = None
        self.hang = False
        self.release = threading.Event()
        self.lock = threading.Condition()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    status, hang = receiver.status, receiver.hang
                    receiver.requests.append(Received(self.path, self.headers, body,
                                                      None if hang else status))
                    receiver.lock.notify_all()
                if hang:
                    receiver.release.wait(30)
                try:
                    self.send_response(status)
                    if receiver.retry_after is not None:
                        self.send_header("Retry-After", receiver.retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the client gave up waiting
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    @property
    def url(self) -> str:
        """With a token in the path and the query, as real receivers often have."""
        return f"http://127.0.0.1:{self.port}/hooks/path-token-abc?key=query-token-xyz"

    def wait_for(self, count: int, timeout: float = 10) -> list[Received]:
        with self.lock:
            assert self.lock.wait_for(lambda: len(self.requests) >= count, timeout), \
                f"{len(self.requests)} of {count} requests arrived"
            return list(self.requests)

    def accepted(self) -> list[Received]:
        return [r for r in self.requests if r.answered is not None and r.answered < 300]


# -- the log, written the way the sampler writes it ---------------------------------------
class Log:
    def __init__(self, engine: sa.Engine, clock: FakeClock, host: str = HOST) -> None:
        self.engine, self.clock, self.host = engine, clock, host
        self.store = LogStore(engine, host)
        self.gpu_rows: dict[int, int] = {}

    def uuid(self, index: int) -> str:
        return f"GPU-{self.host}-{index}"

    def add(self, kind: str, gpu: int | None = None, **payload: Any) -> int:
        gpu_ids = None
        if gpu is not None:
            if gpu not in self.gpu_rows:
                self.gpu_rows[gpu] = self.store.gpu_id(GpuIdentity(gpu, self.uuid(gpu)), "sim",
                                                       self.clock.now_ms())
            gpu_ids = {gpu: self.gpu_rows[gpu]}
        draft = EventDraft(EventKind(kind), self.clock.now_ms(), gpu, payload)
        return self.store.append_events([draft], gpu_ids)[0]


@pytest.fixture
def db(engine: sa.Engine) -> sa.Engine:
    """The test's database, migrated: SQLite and PostgreSQL in turn (the ``postgres``
    marker of tests/conftest.py)."""
    return engine


@pytest.fixture
def sim_app(db: sa.Engine, clock: FakeClock) -> Iterator[App]:
    """The whole API over real HTTP with the sim sampler (tests/conftest.py's App)."""
    application = App(db, clock)
    yield application
    application.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def log(db: sa.Engine, clock: FakeClock) -> Log:
    return Log(db, clock)


@pytest.fixture
def deliverers(db: sa.Engine, clock: FakeClock) -> Iterator[Any]:
    """Factory: a started WebhookDeliverer for this host (no scheduler: tests dispatch)."""
    made: list[WebhookDeliverer] = []

    def make(*hooks: WebhookConfig, host: str = HOST, **kwargs: Any) -> WebhookDeliverer:
        deliverer = WebhookDeliverer(db, host, hooks, clock, rng=random.Random(7),
                                     **kwargs)
        deliverer.start()
        made.append(deliverer)
        return deliverer

    yield make
    for deliverer in made:
        deliverer.close()


def hook(url: str, **settings: Any) -> WebhookConfig:
    settings.setdefault("kinds", ["*"])
    settings.setdefault("name", "pager")
    return WebhookConfig(url=url, **settings)


def delivery_log(engine: sa.Engine, name: str = "pager") -> list[sa.Row[Any]]:
    d, w = webhook_deliveries.c, webhooks.c
    with engine.connect() as conn:
        return list(conn.execute(sa.select(webhook_deliveries).join(webhooks, w.id == d.webhook_id)
                                 .where(w.name == name).order_by(d.id)))


def state(engine: sa.Engine, name: str = "pager") -> sa.Row[Any]:
    with engine.connect() as conn:
        return conn.execute(sa.select(webhooks).where(webhooks.c.name == name)).one()


def docs_verify() -> Any:
    """The verification snippet of docs/alerts.md, run as written."""
    text = (REPO / "docs" / "alerts.md").read_text()
    snippet = re.search(r"<!-- verify -->\s*```python\n(.*?)```", text, re.S)
    assert snippet, "docs/alerts.md lost its verification snippet"
    namespace: dict[str, Any] = {}
    exec(snippet.group(1), namespace)
    return namespace["verify"]


# -- what is sent -------------------------------------------------------------------------
def test_events_arrive_signed_and_as_the_events_api_shows_them(sim_app, receiver,
                                                               deliverers) -> None:
    """The sampler's own events (an overheat on GPU 1) arrive once each, in id order, each
    body the event as GET /api/gpu/events shows it plus host; the signature checks out with
    the docs' snippet; the idempotency key is webhook:event."""
    deliverer = deliverers(hook(receiver.url, secret=SECRET))
    start = state(sim_app.engine).cursor_event_id  # the end of the log when it was configured
    sim_app.tick(5, times=30)
    assert deliverer.run_once()["pager"].delivered > 0
    assert deliverer.run_once() == {}  # nothing new: nothing sent again
    logged = requests.get(f"{sim_app.url}/api/gpu/events", params={"since_id": start,
                          "limit": 10_000}, timeout=5).json()["events"]
    assert {e["kind"] for e in logged} >= {"overheat", "critical", "state_change"}
    got = receiver.requests
    assert [r.event for r in got] == [{**e, "host": HOST} for e in logged]
    verify = docs_verify()
    for r in got:
        assert r.path == "/hooks/path-token-abc?key=query-token-xyz"
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["X-Gpuhistory-Event"] == r.event["kind"]
        assert r.headers["Idempotency-Key"] == f"pager:{r.event['id']}"
        assert r.headers["X-Gpuhistory-Attempt"] == "1"
        assert r.headers["X-Gpuhistory-Timestamp"] == str(sim_app.clock.now_ms() // 1000)
        assert r.headers["X-Gpuhistory-Signature"].startswith("sha256=")
        assert verify(SECRET.encode(), r.headers, r.body, now=sim_app.clock.now_ms() / 1000)
        assert not verify(SECRET.encode(), r.headers, r.body + b" ",
                          now=sim_app.clock.now_ms() / 1000)
        assert not verify(b"another-secret-0123456789", r.headers, r.body,
                          now=sim_app.clock.now_ms() / 1000)
    assert not verify(SECRET.encode(), got[0].headers, got[0].body,
                      now=sim_app.clock.now_ms() / 1000 + 3600)  # replayed an hour later


def test_unsigned_without_a_secret(log, receiver, deliverers) -> None:
    """No secret: no signature header (the timestamp and key are still sent)."""
    deliverer = deliverers(hook(receiver.url))
    log.add("gpu_lost", gpu=0)
    deliverer.run_once()
    (sent,) = receiver.requests
    assert "X-Gpuhistory-Signature" not in sent.headers
    assert sent.headers["Idempotency-Key"] == f"pager:{sent.event['id']}"


def test_a_new_webhook_starts_at_the_end_of_the_log(log, receiver, deliverers) -> None:
    """Events logged before a webhook was first configured are not sent to it."""
    log.add("overheat", gpu=0)
    deliverer = deliverers(hook(receiver.url))
    later = log.add("overheat", gpu=0)
    deliverer.run_once()
    assert [r.event["id"] for r in receiver.requests] == [later]


def test_kinds_and_gpus_filter(log, receiver, deliverers) -> None:
    """Each webhook gets exactly its kinds, of its GPUs (by index or UUID), of this host;
    events without a GPU go only to webhooks without a GPU filter."""
    other_host = Log(log.engine, log.clock, host="otherhost")
    deliverer = deliverers(
        hook(receiver.url + "&w=kinds", name="kinds", kinds=["overheat", "gpu_lost"]),
        hook(receiver.url + "&w=gpu1", name="gpu1", gpus=[1]),
        hook(receiver.url + "&w=uuid2", name="uuid2", kinds=["overheat"],
             gpus=[log.uuid(2)]),
    )
    ids = {
        "overheat0": log.add("overheat", gpu=0), "overheat1": log.add("overheat", gpu=1),
        "overheat2": log.add("overheat", gpu=2), "critical1": log.add("critical", gpu=1),
        "lost2": log.add("gpu_lost", gpu=2), "config": log.add("config_changed", changes={}),
        "elsewhere": other_host.add("overheat", gpu=1),
    }
    deliverer.run_once()
    by_hook: dict[str, list[int]] = {}
    for r in receiver.requests:
        by_hook.setdefault(r.path.rsplit("=", 1)[1], []).append(r.event["id"])
    assert by_hook == {
        "kinds": [ids["overheat0"], ids["overheat1"], ids["overheat2"], ids["lost2"]],
        "gpu1": [ids["overheat1"], ids["critical1"]],
        "uuid2": [ids["overheat2"]],
    }
    for name in ("kinds", "gpu1", "uuid2"):  # past everything, the unmatched included
        assert state(log.engine, name).cursor_event_id == ids["elsewhere"]


def test_credentials_in_the_url_become_basic_auth(db, log, receiver, deliverers) -> None:
    """https://user:password@host/ sends an Authorization: Basic header (user-info is never
    put on the wire as part of the URL, nor shown)."""
    deliverer = deliverers(hook(receiver.url.replace("http://", "http://alice:p%40ss@")))
    log.add("overheat", gpu=0)
    deliverer.run_once()
    (sent,) = receiver.requests
    assert sent.headers["Authorization"] == "Basic " + base64.b64encode(b"alice:p@ss").decode()
    assert state(db).url == f"http://127.0.0.1:{receiver.port}/…"


# -- when the receiver is down ------------------------------------------------------------
def test_receiver_down_then_failing_then_up(log, receiver, deliverers, clock) -> None:
    """Connection refused, then 500s: the head event is retried with a doubling, jittered
    backoff (nothing after it is sent meanwhile, nothing before its time); once the receiver
    answers, every event arrives exactly once more, in order, and the log tells each
    attempt."""
    deliverer = deliverers(hook(receiver.url, retry_initial_seconds=2, retry_max_seconds=10))
    receiver.stop()
    ids = [log.add("overheat", gpu=0), log.add("critical", gpu=0), log.add("gpu_lost", gpu=1)]

    waits = []
    for attempt in (1, 2, 3, 4, 5):
        if attempt == 3:
            receiver.start()  # back on the same port, but failing
            receiver.status = 500
        run = deliverer.run_once()["pager"]
        assert (run.attempted, run.failed, run.delivered) == (1, 1, 0)
        row = delivery_log(log.engine)[-1]
        assert (row.event_id, row.attempt, row.status) == (ids[0], attempt, "failed")
        assert row.error == ("connection refused" if attempt < 3 else
                             "HTTP 500 Internal Server Error")
        assert row.http_status == (None if attempt < 3 else 500)
        wait_ms = row.next_retry_ms - row.ts_ms
        ceiling = min(10_000, 2_000 * 2 ** (attempt - 1))
        assert ceiling / 2 <= wait_ms <= ceiling
        waits.append(wait_ms)
        clock.advance((wait_ms - 1) / 1000)  # not yet: nothing is sent
        assert deliverer.run_once() == {}
        assert deliverer.deliver(deliverer.hooks["pager"]).attempted == 0
        clock.advance(0.001)
    assert [r.event["id"] for r in receiver.requests] == [ids[0]] * 3  # nothing after it
    assert waits[3] >= 5_000 and waits[4] >= 5_000  # capped at 10 s: [5, 10] s

    receiver.status = 200
    run = deliverer.run_once()["pager"]
    assert (run.delivered, run.failed) == (3, 0)
    accepted = [r.event["id"] for r in receiver.accepted()]
    assert accepted == ids
    assert [r.headers["X-Gpuhistory-Attempt"] for r in receiver.accepted()] == ["6", "1", "1"]
    assert len({r.key for r in receiver.requests if r.event["id"] == ids[0]}) == 1
    rows = delivery_log(log.engine)
    assert [(r.event_id, r.attempt, r.status) for r in rows] == [
        *[(ids[0], n, "failed") for n in range(1, 6)], (ids[0], 6, "delivered"),
        (ids[1], 1, "delivered"), (ids[2], 1, "delivered")]
    final = state(log.engine)
    assert (final.cursor_event_id, final.pending_event_id, final.attempts) == (ids[2], None, 0)


def test_retry_after_is_honoured_up_to_the_cap(log, receiver, deliverers) -> None:
    """A 429 with Retry-After waits that long when it is longer than the backoff, up to
    retry_max_seconds."""
    deliverer = deliverers(hook(receiver.url, retry_initial_seconds=1, retry_max_seconds=60))
    receiver.status, receiver.retry_after = 429, "30"
    log.add("overheat", gpu=0)
    deliverer.run_once()
    row = delivery_log(log.engine)[-1]
    assert (row.status, row.http_status, row.next_retry_ms - row.ts_ms) == ("failed", 429, 30_000)
    receiver.retry_after = "3600"
    log.clock.advance(30)
    deliverer.run_once()
    row = delivery_log(log.engine)[-1]
    assert row.next_retry_ms - row.ts_ms == 60_000


def test_gives_up_after_the_limit_and_goes_on(log, receiver, deliverers, clock) -> None:
    """An event not delivered within give_up_after_seconds of happening is given up: the
    attempt whose retry would come too late says so, and the next event goes."""
    deliverer = deliverers(hook(receiver.url, retry_initial_seconds=4, retry_max_seconds=8,
                                give_up_after_seconds=20))
    receiver.status = 503
    first = log.add("overheat", gpu=0)
    for _ in range(10):
        if deliverer.run_once()["pager"].gave_up:
            break
        clock.set(state(log.engine).next_attempt_ms)  # each retry is due before the limit
    rows = delivery_log(log.engine)
    assert [(r.event_id, r.status) for r in rows] == [(first, "failed")] * (len(rows) - 1) \
        + [(first, "gave_up")]
    assert [r.attempt for r in rows] == list(range(1, len(rows) + 1))
    assert rows[-1].http_status == 503 and rows[-1].next_retry_ms is None
    assert len(rows) >= 3 and rows[-2].next_retry_ms < rows[0].ts_ms + 20_000
    assert state(log.engine).cursor_event_id == first  # moved past it
    receiver.status = 200
    fresh = log.add("gpu_lost", gpu=0)
    deliverer.run_once()
    assert receiver.accepted()[-1].event["id"] == fresh


def test_an_event_too_old_when_its_turn_comes_is_given_up_unsent(
        log, receiver, deliverers, clock) -> None:
    """An event already older than give_up_after_seconds when it comes up (the deliverer
    was stopped that long; an import of old data) is given up without a request
    (attempt 0), and the events after it go."""
    deliverer = deliverers(hook(receiver.url, give_up_after_seconds=60))
    stale = log.add("overheat", gpu=0)
    clock.advance(61)
    fresh = log.add("critical", gpu=0)
    run = deliverer.run_once()["pager"]
    assert (run.gave_up, run.delivered, run.attempted) == (1, 1, 1)
    assert [r.event["id"] for r in receiver.requests] == [fresh]
    row = delivery_log(log.engine)[0]
    assert (row.event_id, row.attempt, row.status, row.http_status) == (stale, 0, "gave_up",
                                                                        None)
    assert row.error == "not sent: older than give_up_after_seconds (60 s)"


def test_a_rejection_is_not_retried(log, receiver, deliverers) -> None:
    """A 4xx (here 400) is the receiver refusing: recorded as rejected, never retried, and
    the next event goes; a redirect is not followed."""
    deliverer = deliverers(hook(receiver.url))
    receiver.status = 400
    rejected = log.add("overheat", gpu=0)
    deliverer.run_once()
    receiver.status = 302
    redirected = log.add("overheat", gpu=1)
    deliverer.run_once()
    receiver.status = 204
    delivered = log.add("critical", gpu=1)
    deliverer.run_once()
    deliverer.run_once()
    assert [r.event["id"] for r in receiver.requests] == [rejected, redirected, delivered]
    assert [(r.event_id, r.status, r.http_status) for r in delivery_log(log.engine)] == [
        (rejected, "rejected", 400), (redirected, "rejected", 302),
        (delivered, "delivered", 204)]


def test_a_failing_webhook_does_not_hold_up_the_others(log, receiver, deliverers) -> None:
    """One webhook's receiver is down; the other gets every event at once."""
    dead = Receiver()
    dead.stop()
    deliverer = deliverers(hook(dead.url, name="dead"), hook(receiver.url, name="alive"))
    ids = [log.add("overheat", gpu=i) for i in range(3)]
    runs = deliverer.run_once()
    assert runs["dead"].failed == 1 and runs["alive"].delivered == 3
    assert [r.event["id"] for r in receiver.requests] == ids
    assert state(log.engine, "dead").pending_event_id == ids[0]


def test_a_hanging_receiver_holds_up_only_its_own_webhook(log, receiver, deliverers) -> None:
    """A receiver that never answers keeps its webhook's run busy until the timeout; the
    dispatcher returns at once and the other webhook is served meanwhile."""
    hanging = Receiver()
    hanging.hang = True
    try:
        deliverer = deliverers(hook(hanging.url, name="hangs", timeout_seconds=1),
                               hook(receiver.url, name="fine"))
        event = log.add("overheat", gpu=0)
        started = deliverer.dispatch()
        assert set(started) == {"hangs", "fine"}
        assert started["fine"].result(timeout=10).delivered == 1
        hanging.wait_for(1)
        assert not started["hangs"].done()
        assert "hangs" not in deliverer.dispatch()  # never a second run beside the hung one
        run = started["hangs"].result(timeout=10)
        assert run.failed == 1
        row = delivery_log(log.engine, "hangs")[-1]
        assert (row.event_id, row.status, row.error) == (event, "failed", "timed out after 1 s")
        assert row.duration_ms >= 900
    finally:
        hanging.stop()


# -- at least once --------------------------------------------------------------------------
def test_a_lost_commit_means_the_same_event_again_with_the_same_key(
        db, log, receiver, deliverers, clock) -> None:
    """The state is the database's: a deliverer that lost its last commit (a crash right
    after the receiver's 2xx — here the row is put back as it was) sends that event again,
    with the same idempotency key, and the receiver can drop it; nothing is lost."""
    deliverer = deliverers(hook(receiver.url))
    first = log.add("overheat", gpu=0)
    deliverer.run_once()
    with db.begin() as conn:
        conn.execute(webhooks.update().values(cursor_event_id=first - 1,
                                              version=webhooks.c.version + 1))
    second = log.add("critical", gpu=0)
    restarted = deliverers(hook(receiver.url))  # a new process: state from the database
    restarted.run_once()
    keys = [r.key for r in receiver.requests]
    assert keys == [f"pager:{first}", f"pager:{first}", f"pager:{second}"]
    assert len({r.body for r in receiver.requests if r.key == f"pager:{first}"}) == 1


def test_two_deliverers_never_move_a_state_backwards(db, log, receiver, deliverers) -> None:
    """A second deliverer on the same host (a misconfiguration) can duplicate a delivery,
    but each state write checks the version, so the cursor only ever moves forward."""
    one, two = deliverers(hook(receiver.url)), deliverers(hook(receiver.url))
    ids = [log.add("overheat", gpu=0) for _ in range(3)]
    stale = two.store.state(two._rows["pager"])  # read before the other one wrote
    one.run_once()
    assert state(db).cursor_event_id == ids[-1]
    assert two.store.record(stale, Attempt(ids[0], 0, 1, "delivered", 200, None, 1)) is None
    assert state(db).cursor_event_id == ids[-1]


def test_configuration_changes_keep_the_cursor_and_retire_removed_webhooks(
        db, log, receiver, deliverers) -> None:
    """A restart with other kinds keeps the webhook's cursor; a webhook left out of the
    configuration is marked inactive (its cursor and log kept) and resumes if it returns."""
    deliverers(hook(receiver.url, kinds=["overheat"])).run_once()
    done = log.add("overheat", gpu=0)
    deliverers(hook(receiver.url, kinds=["overheat"])).run_once()
    assert state(db).cursor_event_id == done
    missed = log.add("critical", gpu=0)
    deliverers(hook(receiver.url + "&other", name="other"))
    row = state(db)
    assert (row.active, row.cursor_event_id) == (False, done)
    back = deliverers(hook(receiver.url, kinds=["critical"]))
    assert state(db).active
    back.run_once()
    assert receiver.requests[-1].event["id"] == missed


def test_an_event_being_retried_that_no_longer_matches_is_dropped(
        db, log, receiver, deliverers, clock) -> None:
    """Restarted with other kinds while an event was being retried: that event is no longer
    the webhook's, so its retry state goes and it is not sent again."""
    receiver.status = 503
    first = deliverers(hook(receiver.url, kinds=["overheat"]))
    retried = log.add("overheat", gpu=0)
    first.run_once()
    assert state(db).pending_event_id == retried
    receiver.status = 200
    clock.advance(60)
    deliverers(hook(receiver.url, kinds=["critical"])).run_once()
    row = state(db)
    assert (row.pending_event_id, row.attempts, row.next_attempt_ms, row.cursor_event_id) == (
        None, 0, None, retried)
    assert len(receiver.requests) == 1


# -- secrets ------------------------------------------------------------------------------
def test_secrets_and_url_tokens_stay_out_of_logs_and_the_database(
        db, log, receiver, deliverers, caplog) -> None:
    """Failures, retries and rejections are logged with the URL as scheme://host:port/…;
    neither the secret nor the tokens in the URL appear in a log line or a database row."""
    caplog.set_level("DEBUG", logger="gpuhistory")
    deliverer = deliverers(hook(receiver.url, secret=SECRET))
    receiver.status = 503
    log.add("overheat", gpu=0)
    deliverer.run_once()
    receiver.status = 401
    log.clock.advance(60)
    deliverer.run_once()
    assert "pager (http://127.0.0.1:" in caplog.text and "/…)" in caplog.text
    with db.connect() as conn:
        stored = " ".join(str(tuple(r)) for t in (webhooks, webhook_deliveries)
                          for r in conn.execute(sa.select(t)))
    for secret in (SECRET, "path-token-abc", "query-token-xyz"):
        assert secret not in caplog.text
        assert secret not in stored
    assert "SecretStr('**********')" in repr(hook(receiver.url, secret=SECRET))
    assert "query-token" not in repr(hook(receiver.url, secret=SECRET))


# -- PostgreSQL: ids taken before commit --------------------------------------------------
def test_an_event_still_to_commit_is_waited_for(pg_engine) -> None:
    """PostgreSQL: an event whose id was taken by a transaction still open is not skipped
    when a later event commits first; the webhook waits for it (a rolled-back id is passed
    over once it has been missing for settle_ms)."""
    clock = FakeClock()
    log = Log(pg_engine, clock)
    receiver = Receiver()
    try:
        deliverer = WebhookDeliverer(pg_engine, HOST, [hook(receiver.url)], clock,
                                     settle_ms=5_000)
        deliverer.start()
        before = log.add("overheat", gpu=0)
        slow = pg_engine.connect()
        tx = slow.begin()
        slow.execute(sa.text("INSERT INTO events (ts_ms, gpu_id, kind, payload) VALUES "
                             "(:ts, NULL, 'config_changed', '{}') "), {"ts": clock.now_ms()})
        after = log.add("critical", gpu=0)
        deliverer.run_once()
        assert [r.event["id"] for r in receiver.requests] == [before]
        tx.commit()
        slow.close()
        deliverer.run_once()
        assert [r.event["id"] for r in receiver.requests] == [before, before + 1, after]

        rolled_back = pg_engine.connect()
        tx = rolled_back.begin()
        rolled_back.execute(sa.text("INSERT INTO events (ts_ms, gpu_id, kind, payload) "
                                    "VALUES (0, NULL, 'config_changed', '{}')"))
        tx.rollback()
        rolled_back.close()
        last = log.add("gpu_lost", gpu=1)
        deliverer.run_once()
        assert receiver.requests[-1].event["id"] == after  # the gap may yet fill
        clock.advance(5)
        deliverer.run_once()
        assert receiver.requests[-1].event["id"] == last
        deliverer.close()
    finally:
        receiver.stop()




# -- storage ------------------------------------------------------------------------------
def test_migration_0007_down_and_up_again(db: sa.Engine) -> None:
    """0007 creates the two tables (as schema.py defines them), downgrading to 0006 drops
    them (and every later migration's), upgrading to head again restores them."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from gpuhistory.storage.engine import current_revision, downgrade, head_revision, upgrade
    from gpuhistory.storage.partitions import not_a_partition
    from gpuhistory.storage.schema import metadata, postgres_metadata

    def tables() -> set[str]:
        return set(sa.inspect(db).get_table_names())

    assert current_revision(db) == head_revision() >= "0007"
    assert {"webhooks", "webhook_deliveries"} <= tables()
    downgrade(db, "0006")
    assert current_revision(db) == "0006"
    assert not {"webhooks", "webhook_deliveries"} & tables()
    upgrade(db)
    assert current_revision(db) == head_revision()
    with db.connect() as conn:  # samples' day partitions and the PostgreSQL-only tables
        context = MigrationContext.configure(conn, opts={"include_object": not_a_partition})
        wanted = [metadata, postgres_metadata] if conn.dialect.name == "postgresql" \
            else metadata
        assert compare_metadata(context, wanted) == []


def test_retention_prunes_old_delivery_rows(log, receiver, deliverers, clock) -> None:
    """The retention job deletes delivery-log rows older than retention_delivery_days, in
    batches, and keeps the newer ones and the webhook's state."""
    from gpuhistory.analytics.retention import RetentionJob
    from gpuhistory.domain.config import Config

    deliverer = deliverers(hook(receiver.url))
    for _ in range(5):
        log.add("overheat", gpu=0)
    deliverer.run_once()
    clock.advance(10 * 86_400)
    recent = log.add("critical", gpu=0)
    deliverer.run_once()
    job = RetentionJob(log.engine, clock, Config(retention_delivery_days=7), batch_rows=2)
    assert job.run().deliveries_deleted == 5
    assert [r.event_id for r in delivery_log(log.engine)] == [recent]
    assert state(log.engine).cursor_event_id == recent
