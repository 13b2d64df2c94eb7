"""The alerts endpoints over real HTTP, on SQLite and PostgreSQL: the webhooks with their
cursor, lag and last outcome (never a secret or a URL token), the delivery log with its
filters and paging, and the error shape for bad arguments."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from gpuhistory.alerts.config import WebhookConfig
from gpuhistory.alerts.deliverer import WebhookDeliverer
from gpuhistory.clock import FakeClock, iso_utc
from tests.conftest import App, sqlite_only
from tests.test_webhooks import Receiver

pytestmark = pytest.mark.postgres

SECRET = "api-test-secret-0123456789"


@pytest.fixture
def app(engine: sa.Engine, clock: FakeClock) -> Iterator[App]:
    """The whole API over real HTTP with the sim sampler, on SQLite and PostgreSQL in turn
    (the ``postgres`` marker of tests/conftest.py)."""
    application = App(engine, clock)
    yield application
    application.close()


@pytest.fixture
def sqlite_app(engine: sa.Engine, clock: FakeClock) -> Iterator[App]:
    """For what does not depend on the database: arguments, the document."""
    application = App(engine, clock)
    yield application
    application.close()


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    """A receiver that answers 200, and one that is down (its port closed)."""
    up, down = Receiver(), Receiver()
    down.stop()
    yield up, down
    up.stop()


@pytest.fixture
def delivered(app, receivers) -> Iterator[dict[str, Any]]:
    """The app's GPU 1 overheats; "pager" delivers its events, "down" keeps failing at
    its first one (retried twice)."""
    up, down = receivers
    hooks = [WebhookConfig(name="pager", url=up.url, kinds=["overheat", "critical"],
                           secret=SECRET),
             WebhookConfig(name="down", url=down.url, kinds=["*"], gpus=[1],
                           retry_initial_seconds=1, retry_max_seconds=1)]
    deliverer = WebhookDeliverer(app.engine, "testhost", hooks, app.clock,
                                 rng=random.Random(3))
    deliverer.start()
    started = app.clock.now_ms()
    app.tick(5, times=30)
    for _ in range(3):
        deliverer.run_once()
        app.clock.advance(2)
    yield {"deliverer": deliverer, "started_ms": started, "up": up}
    deliverer.close()


def get(app, path: str, **params: Any) -> requests.Response:
    return requests.get(f"{app.url}{path}", params=params, timeout=5)


def test_webhooks_show_cursor_lag_and_last_outcome(app, delivered) -> None:
    """Each webhook as the deliverer registered it: redacted URL, kinds, GPUs, signed or
    not, its cursor and lag, the event being retried, the last outcome."""
    response = get(app, "/api/alerts/webhooks")
    assert response.status_code == 200
    for hidden in (SECRET, "path-token", "query-token"):
        assert hidden not in response.text
    body = response.json()
    assert body["host"] == "testhost" and body["count"] == 2
    pager, down = sorted(body["webhooks"], key=lambda w: w["name"] != "pager")
    sent = [r.event for r in delivered["up"].accepted()]
    assert {e["kind"] for e in sent} == {"overheat", "critical"}
    assert pager["url"] == f"http://127.0.0.1:{delivered['up'].port}/…"
    assert (pager["kinds"], pager["gpus"], pager["signed"], pager["active"]) == (
        ["overheat", "critical"], None, True, True)
    assert (pager["lag_events"], pager["lag_seconds"], pager["pending"]) == (0, None, None)
    assert pager["cursor"] >= sent[-1]["id"]
    assert (pager["last_status"], pager["last_http_status"], pager["last_error"]) == (
        "delivered", 200, None)
    assert pager["last_delivered_at"] == pager["last_attempt_at"]
    assert pager["settings"]["give_up_after_seconds"] == 86400

    assert (down["signed"], down["gpus"], down["kinds"]) == (False, [1], ["*"])
    assert down["last_status"] == "failed" and down["last_error"] == "connection refused"
    assert down["pending"]["failed_attempts"] == 3
    assert down["pending"]["event_id"] > down["cursor"]
    assert down["lag_events"] >= 1 and down["lag_seconds"] > 0
    assert down["last_delivered_at"] is None


def test_a_webhook_left_out_of_the_configuration_shows_inactive(app, delivered) -> None:
    again = WebhookDeliverer(app.engine, "testhost",
                             [WebhookConfig(name="pager", url=delivered["up"].url,
                                            kinds=["overheat"])], app.clock)
    again.start()
    hooks = {w["name"]: w for w in get(app, "/api/alerts/webhooks").json()["webhooks"]}
    assert (hooks["pager"]["active"], hooks["down"]["active"]) == (True, False)
    assert hooks["pager"]["signed"] is False and hooks["pager"]["kinds"] == ["overheat"]
    assert [w["name"] for w in get(app, "/api/alerts/webhooks").json()["webhooks"]] == [
        "pager", "down"]  # active first
    again.close()


def test_other_hosts_webhooks_by_host_or_all(app, delivered) -> None:
    """With many hosts on one database: this server's host by default, another by name,
    every host with host=*; a webhook name is looked up on the host asked for."""
    other = WebhookDeliverer(app.engine, "otherhost",
                             [WebhookConfig(name="remote", url=delivered["up"].url,
                                            kinds=["*"])], app.clock)
    other.start()
    assert [w["name"] for w in get(app, "/api/alerts/webhooks").json()["webhooks"]] == [
        "down", "pager"]
    theirs = get(app, "/api/alerts/webhooks", host="otherhost").json()
    assert theirs["host"] == "otherhost" and [
        (w["name"], w["host"]) for w in theirs["webhooks"]] == [("remote", "otherhost")]
    every = get(app, "/api/alerts/webhooks", host="*").json()
    assert every["host"] == "*" and {(w["host"], w["name"]) for w in every["webhooks"]} == {
        ("testhost", "down"), ("testhost", "pager"), ("otherhost", "remote")}
    assert get(app, "/api/alerts/deliveries", webhook="remote").status_code == 404
    assert get(app, "/api/alerts/deliveries", webhook="remote", host="otherhost").json() == {
        "count": 0, "next_before_id": None, "deliveries": []}
    mine = get(app, "/api/alerts/deliveries", host="*").json()["deliveries"]
    assert {d["host"] for d in mine} == {"testhost"}
    other.close()


def test_deliveries_filter_and_page(app, delivered) -> None:
    """Newest first; by webhook, status, event and time; limit and before_id page through
    without overlap."""
    everything = get(app, "/api/alerts/deliveries", limit=1000).json()
    rows = everything["deliveries"]
    assert everything["count"] == len(rows) and everything["next_before_id"] is None
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    pager = get(app, "/api/alerts/deliveries", webhook="pager").json()["deliveries"]
    assert pager and {(r["webhook"], r["status"], r["attempt"]) for r in pager} == {
        ("pager", "delivered", 1)}
    assert [r["event_id"] for r in reversed(pager)] == [
        r.event["id"] for r in delivered["up"].accepted()]
    assert {r["kind"] for r in pager} == {"overheat", "critical"}
    assert {r["gpu_id"] for r in pager} == {1}
    failed = get(app, "/api/alerts/deliveries", status="failed").json()["deliveries"]
    assert [(r["webhook"], r["attempt"], r["error"]) for r in failed] == [
        ("down", n, "connection refused") for n in (3, 2, 1)]
    assert all(r["next_retry_at"] is not None and r["http_status"] is None for r in failed)
    one = get(app, "/api/alerts/deliveries", event_id=failed[0]["event_id"]).json()
    assert {r["event_id"] for r in one["deliveries"]} == {failed[0]["event_id"]}

    first_attempt = failed[-1]["timestamp"]
    since = get(app, "/api/alerts/deliveries", webhook="down", since=first_attempt).json()
    assert since["count"] == 3
    until = get(app, "/api/alerts/deliveries", webhook="down", until=first_attempt).json()
    assert [r["attempt"] for r in until["deliveries"]] == [1]
    before = get(app, "/api/alerts/deliveries",
                 until=iso_utc(delivered["started_ms"] - 1)).json()
    assert before["count"] == 0

    page, seen = {"next_before_id": None}, []
    while True:
        params = {"limit": 2}
        if page["next_before_id"] is not None:
            params["before_id"] = page["next_before_id"]
        page = get(app, "/api/alerts/deliveries", **params).json()
        seen += [r["id"] for r in page["deliveries"]]
        if page["next_before_id"] is None:
            break
    assert seen == [r["id"] for r in rows]


BAD_ARGUMENTS = [
    ("/api/alerts/deliveries", {"webhook": "nobody"}, 404, "webhook_not_found"),
    ("/api/alerts/deliveries", {"webhook": "bad name!"}, 422, "validation_failed"),
    ("/api/alerts/deliveries", {"status": "lost"}, 422, "validation_failed"),
    ("/api/alerts/deliveries", {"limit": 0}, 422, "validation_failed"),
    ("/api/alerts/deliveries", {"limit": "many"}, 400, "invalid_argument"),
    ("/api/alerts/deliveries", {"event_id": -1}, 422, "validation_failed"),
    ("/api/alerts/deliveries", {"since": "yesterday"}, 400, "invalid_argument"),
    ("/api/alerts/deliveries", {"since": "2026-01-02T00:00:00Z",
                                "until": "2026-01-01T00:00:00Z"}, 422, "validation_failed"),
    ("/api/alerts/deliveries", {"bogus": 1}, 400, "invalid_argument"),
    ("/api/alerts/webhooks", {"bogus": 1}, 400, "invalid_argument"),
    ("/api/alerts/webhooks", {"host": "a\x01b"}, 422, "validation_failed"),
]


@sqlite_only
def test_bad_arguments_get_the_error_shape(sqlite_app) -> None:
    """Each bad argument: its status and code in the one error shape, never a 500."""
    for path, params, status, code in BAD_ARGUMENTS:
        response = get(sqlite_app, path, **params)
        assert response.status_code == status, (path, params, response.text)
        error = response.json()["error"]
        assert error["code"] == code and error["message"], (path, params)
        assert isinstance(error["details"], dict)


@sqlite_only
def test_without_webhooks_the_answers_are_empty(sqlite_app) -> None:
    app = sqlite_app
    assert get(app, "/api/alerts/webhooks").json() == {"host": "testhost", "count": 0,
                                                       "webhooks": []}
    assert get(app, "/api/alerts/deliveries").json() == {"count": 0, "next_before_id": None,
                                                         "deliveries": []}


@sqlite_only
def test_openapi_documents_the_alert_endpoints(sqlite_app) -> None:
    doc = get(sqlite_app, "/api/openapi.json").json()
    for path, statuses in (("/api/alerts/webhooks", {"200", "400", "422", "503"}),
                           ("/api/alerts/deliveries", {"200", "400", "404", "422", "503"})):
        operation = doc["paths"][path]["get"]
        assert set(operation["responses"]) == statuses
        assert operation["tags"] == ["alerts"]
    params = {p["name"] for p in doc["paths"]["/api/alerts/deliveries"]["get"]["parameters"]}
    assert params == {"host", "webhook", "status", "event_id", "since", "until", "before_id",
                      "limit"}
