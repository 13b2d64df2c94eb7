"""The ``alertmanager`` and ``chat`` webhook formats against a real local HTTP receiver, on
SQLite and PostgreSQL: what each event becomes (an alert firing, resolving, or nothing; a
one-line ``text``), the re-sending of active alerts on the FakeClock, and that ordered
delivery, retries and the delivery log work as for signed webhooks."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import sqlalchemy as sa

from gpuhistory.alerts.config import ALERT_KINDS, WebhookConfig, parse_webhooks
from gpuhistory.clock import iso_utc
from gpuhistory.storage.schema import incidents
from tests import test_webhooks as shared
from tests.conftest import REPO
from tests.test_webhooks import HOST, Log, Receiver, delivery_log, state

pytestmark = pytest.mark.postgres

# The fixtures of tests/test_webhooks.py: the database, a real receiver, the log, deliverers.
db, receiver, log, deliverers, sim_app = (shared.db, shared.receiver, shared.log,
                                          shared.deliverers, shared.sim_app)

DASHBOARD = "https://gpu-node-01.example.com:8321"


def am_hook(receiver: Receiver, **settings: Any) -> WebhookConfig:
    settings.setdefault("name", "am")
    return WebhookConfig(url=f"http://127.0.0.1:{receiver.port}/", format="alertmanager",
                         **settings)


def posted(receiver: Receiver) -> list[list[dict[str, Any]]]:
    return [json.loads(r.body) for r in receiver.requests]


def by_alert(alerts: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(a["labels"]["alertname"], a["labels"]["gpu"]): a for a in alerts}


# -- alertmanager ----------------------------------------------------------------------------
def test_alert_fires_with_labels_and_annotations_then_resolves(log: Log, receiver, deliverers,
                                                               clock) -> None:
    """A critical event POSTs one alert to /api/v2/alerts (labels from the GPU, startsAt the
    event, endsAt four re-sends ahead); the resume of that GPU POSTs the same labels with
    endsAt the resume's time. Events that are not alerts are not sent."""
    deliverer = deliverers(am_hook(receiver))
    critical = log.add("critical", gpu=1, cause="temperature", temperature_celsius=92,
                       memory_percent=41.5)
    fired_at = clock.now_ms()
    log.add("throttle", gpu=1, state="CRITICAL", effective_state="CRITICAL")
    run = deliverer.run_once()["am"]
    assert (run.delivered, run.attempted) == (1, 1)
    [request] = receiver.requests
    assert request.path == "/api/v2/alerts"
    assert request.headers["Content-Type"] == "application/json"
    assert "X-Gpuhistory-Signature" not in request.headers
    [firing] = json.loads(request.body)
    assert firing["labels"] == {"alertname": "GPUCritical", "severity": "critical",
                                "host": HOST, "gpu": "1", "uuid": log.uuid(1),
                                "source": "gpuhistory"}
    assert firing["annotations"]["summary"] == f"GPU 1 on {HOST} is CRITICAL"
    assert "temperature 92 °C" in firing["annotations"]["description"]
    assert firing["annotations"]["event_id"] == str(critical)
    assert firing["startsAt"] == iso_utc(fired_at)
    assert firing["endsAt"] == iso_utc(clock.now_ms() + 4 * 60_000)
    assert "generatorURL" not in firing  # no dashboard_url

    clock.advance(30)
    log.add("resume", gpu=1, state="NORMAL", effective_state="NORMAL", temperature_celsius=70)
    assert deliverer.run_once()["am"].delivered == 1
    [resolved] = json.loads(receiver.requests[-1].body)
    assert resolved["labels"] == firing["labels"]
    assert resolved["startsAt"] == firing["startsAt"]
    assert resolved["endsAt"] == iso_utc(clock.now_ms())
    assert [r.status for r in delivery_log(log.engine, "am")] == ["delivered", "delivered"]
    row = state(log.engine, "am")
    assert row.settings["format"] == "alertmanager" and row.signed is False
    assert row.kinds == [*ALERT_KINDS, "resume", "gpu_found"]  # what it reads, for the lag


def test_a_resolve_with_no_alert_active_sends_nothing(log: Log, receiver, deliverers) -> None:
    """A resume after a mere throttle (no alert fired) and a gpu_found of a GPU never lost
    send nothing and leave no delivery row; the cursor moves past them."""
    deliverer = deliverers(am_hook(receiver))
    log.add("resume", gpu=0, state="NORMAL")
    last = log.add("gpu_found", gpu=2)
    run = deliverer.run_once()["am"]
    assert (run.attempted, run.skipped) == (0, 2)
    assert receiver.requests == []
    assert delivery_log(log.engine, "am") == []
    assert state(log.engine, "am").cursor_event_id == last


def test_gpu_found_resolves_lost_and_critical_but_resume_not_lost(log: Log, receiver,
                                                                   deliverers) -> None:
    """gpu_found resolves every stateful alert of its GPU; resume resolves only CRITICAL
    and overheat — a lost GPU stays lost. Another GPU's alerts are untouched."""
    deliverer = deliverers(am_hook(receiver))
    log.add("overheat", gpu=0, temperature_celsius=86, threshold_celsius=85)
    log.add("critical", gpu=0, cause="temperature", temperature_celsius=86)
    log.add("gpu_lost", gpu=0, error="GPU is lost")
    log.add("critical", gpu=3, cause="memory")
    deliverer.run_once()
    receiver.requests.clear()
    log.add("resume", gpu=0, state="NORMAL")
    deliverer.run_once()
    assert set(by_alert(posted(receiver)[0])) == {("GPUOverheat", "0"), ("GPUCritical", "0")}
    receiver.requests.clear()
    log.add("gpu_found", gpu=0)
    deliverer.run_once()
    assert set(by_alert(posted(receiver)[0])) == {("GPULost", "0")}


def test_active_alerts_are_re_sent_every_resend_seconds(log: Log, receiver, deliverers,
                                                        clock) -> None:
    """Firing alerts are POSTed again every resend_seconds with endsAt moved on, so
    Alertmanager keeps them; a resolved one is no longer re-sent; nothing is re-sent
    before the cadence."""
    deliverer = deliverers(am_hook(receiver, resend_seconds=30))
    log.add("critical", gpu=0, cause="temperature")
    log.add("gpu_lost", gpu=1, error="GPU is lost")
    assert deliverer.run_once()["am"].delivered == 2
    receiver.requests.clear()
    clock.advance(10)
    assert deliverer.run_once() == {}  # nothing new and no re-send due
    clock.advance(20)
    assert deliverer.run_once()["am"].refreshed == 2
    [resent] = posted(receiver)
    assert set(by_alert(resent)) == {("GPUCritical", "0"), ("GPULost", "1")}
    assert {a["endsAt"] for a in resent} == {iso_utc(clock.now_ms() + 4 * 30_000)}
    log.add("resume", gpu=0, state="NORMAL")
    deliverer.run_once()
    receiver.requests.clear()
    clock.advance(30)
    assert deliverer.run_once()["am"].refreshed == 1
    assert set(by_alert(posted(receiver)[0])) == {("GPULost", "1")}


def test_a_new_alertmanager_webhook_learns_the_alerts_already_firing(log: Log, receiver,
                                                                     deliverers) -> None:
    """A webhook starts at the end of the log, but its first run re-sends what is active
    there: Alertmanager learns about a GPU lost before it was configured."""
    log.add("gpu_lost", gpu=2, error="GPU is lost")
    deliverer = deliverers(am_hook(receiver))
    assert deliverer.run_once()["am"].refreshed == 1
    assert set(by_alert(posted(receiver)[0])) == {("GPULost", "2")}


def test_catch_up_posts_an_alert_resolved_since_as_ended(log: Log, receiver, deliverers,
                                                         clock) -> None:
    """After an outage, a critical that has since resumed is posted with endsAt the resume
    (no page for what is over), then resolved again by the resume itself."""
    deliverer = deliverers(am_hook(receiver))
    receiver.stop()
    log.add("critical", gpu=0, cause="temperature")
    clock.advance(5)
    log.add("resume", gpu=0, state="NORMAL")
    resumed_at = clock.now_ms()
    assert deliverer.run_once()["am"].failed == 1
    receiver.start()
    clock.advance(600)
    assert deliverer.run_once()["am"].delivered == 2
    firing, resolved = posted(receiver)
    assert firing[0]["endsAt"] == resolved[0]["endsAt"] == iso_utc(resumed_at)
    assert [r.status for r in delivery_log(log.engine, "am")] == \
        ["failed", "delivered", "delivered"]


def test_xid_alert_ends_on_its_own(log: Log, receiver, deliverers, clock) -> None:
    """An XID alert carries its code as a label and ends xid_alert_seconds after the
    error; it is re-sent until then and not after."""
    deliverer = deliverers(am_hook(receiver, xid_alert_seconds=120, resend_seconds=60))
    log.add("xid", gpu=1, code=79)
    started = clock.now_ms()
    deliverer.run_once()
    [[alert]] = posted(receiver)
    assert alert["labels"]["alertname"] == "GPUXidError"
    assert alert["labels"]["xid"] == "79"
    assert alert["labels"]["severity"] == "warning"
    assert alert["endsAt"] == iso_utc(started + 120_000)
    clock.advance(60)
    assert deliverer.run_once()["am"].refreshed == 1
    clock.advance(61)
    assert deliverer.run_once()["am"].refreshed == 0


def test_alertmanager_down_is_retried_in_order(log: Log, receiver, deliverers, clock) -> None:
    """A 503 from Alertmanager is a failed attempt, retried after the backoff; the resolve
    waits behind the firing alert and both arrive in order."""
    deliverer = deliverers(am_hook(receiver, retry_initial_seconds=1))
    receiver.status = 503
    log.add("gpu_lost", gpu=0, error="GPU is lost")
    log.add("gpu_found", gpu=0)
    assert deliverer.run_once()["am"].failed == 1
    receiver.status = 200
    clock.advance(2)
    assert deliverer.run_once()["am"].delivered == 2
    firing, resolved = (json.loads(r.body)[0] for r in receiver.accepted())
    assert firing["labels"] == resolved["labels"]
    assert firing["labels"]["alertname"] == "GPULost"
    assert receiver.requests[0].headers["X-Gpuhistory-Attempt"] == "1"
    assert receiver.requests[1].headers["X-Gpuhistory-Attempt"] == "2"
    assert [r.status for r in delivery_log(log.engine, "am")] == \
        ["failed", "delivered", "delivered"]


def _incident(engine: sa.Engine, gpu_row: int, start_ms: int) -> int:
    with engine.begin() as conn:
        return int(conn.execute(incidents.insert().values(
            gpu_id=gpu_row, start_ms=start_ms, end_ms=None, last_sample_ms=start_ms,
            peak_temp_c=90, peak_ms=start_ms, temp_sum=90, temp_n=1, above_critical_ms=0,
            severity="overheat", clock_event_reasons=0, temp_throttle=85, hysteresis_c=2,
            temp_critical=90, detected_ms=start_ms, updated_ms=start_ms)
        ).inserted_primary_key[0])


def test_links_go_to_the_post_mortem_once_the_incident_is_detected(log: Log, receiver,
                                                                   deliverers, clock) -> None:
    """With dashboard_url, an alert links to the GPU's history; once the incident around it
    is detected, the re-sent alert links to its post-mortem instead."""
    deliverer = deliverers(am_hook(receiver, dashboard_url=DASHBOARD + "/"))
    log.add("overheat", gpu=1, temperature_celsius=88, threshold_celsius=85)
    deliverer.run_once()
    [[alert]] = posted(receiver)
    assert alert["annotations"]["dashboard"] == f"{DASHBOARD}/#/history/1?range=1h"
    assert alert["generatorURL"] == alert["annotations"]["dashboard"]
    incident = _incident(log.engine, log.gpu_rows[1], clock.now_ms() - 2_000)
    clock.advance(60)
    deliverer.run_once()
    [[resent]] = posted(receiver)[1:]
    assert resent["annotations"]["dashboard"] == f"{DASHBOARD}/#/incidents/{incident}"


# -- chat ------------------------------------------------------------------------------------
def documented_chat_body() -> dict[str, Any]:
    text = (REPO / "docs" / "alerts.md").read_text()
    block = re.search(r"<!-- chat-body -->\s*```json\n(.*?)```", text, re.S)
    assert block, "docs/alerts.md lost its chat body example"
    return json.loads(block.group(1))


def test_chat_messages_are_one_readable_text_line(sim_app, receiver, deliverers) -> None:
    """The sampler's own overheat and critical events arrive as the documented body — only
    a ``text`` — each one line naming the GPU, its host, the temperature, the state and the
    dashboard link."""
    deliverer = deliverers(WebhookConfig(url=receiver.url, name="chat", format="chat",
                                         kinds=["overheat", "critical"],
                                         dashboard_url=DASHBOARD))
    sim_app.tick(5, times=30)
    assert deliverer.run_once()["chat"].delivered > 0
    documented = documented_chat_body()
    bodies = [json.loads(r.body) for r in receiver.requests]
    assert {r.headers["X-Gpuhistory-Event"] for r in receiver.requests} == \
        {"overheat", "critical"}
    for body, request in zip(bodies, receiver.requests, strict=True):
        assert set(body) == set(documented) == {"text"}
        line = body["text"]
        assert "\n" not in line
        assert re.match(rf"gpuhistory: GPU \d+ \(.+\) on {HOST} (overheat|CRITICAL) · ", line)
        assert re.search(r" · \d+ °C", line), line
        assert " · state CRITICAL · " in line, line
        assert line.endswith("?range=1h") or "/#/incidents/" in line
        assert request.headers["X-Gpuhistory-Event"] in ("overheat", "critical")
    assert re.match(r"gpuhistory: GPU \d+ \(.+\) on \S+ \w+ · ", documented["text"])
    assert {r.status for r in delivery_log(sim_app.engine, "chat")} == {"delivered"}


def test_chat_for_an_event_without_a_gpu_names_the_host(log: Log, receiver,
                                                        deliverers) -> None:
    """service_started has no GPU: the line names the host and the payload's fields."""
    deliverer = deliverers(WebhookConfig(url=receiver.url, name="chat", format="chat",
                                         kinds=["service_started"]))
    log.add("service_started", host=HOST, version="0.1.0")
    deliverer.run_once()
    assert json.loads(receiver.requests[0].body) == {
        "text": f"gpuhistory: {HOST} service_started · host {HOST} · version 0.1.0"}


# -- configuration ---------------------------------------------------------------------------
def test_format_settings_are_validated_at_start() -> None:
    """An unknown format, a secret on a format nobody verifies, an alertmanager webhook
    asked for non-alert kinds, or a bad dashboard URL are start-up errors naming the key;
    alertmanager defaults to every alert and posts to /api/v2/alerts under its base URL."""
    base = {"url": "http://am.example.com:9093", "name": "am"}
    cases = {
        "webhooks.0.format": {**base, "format": "slack", "kinds": ["*"]},
        "a secret signs only format 'signed'": {**base, "format": "chat", "kinds": ["*"],
                                                "secret": "x" * 20},
        "not ['throttle']": {**base, "format": "alertmanager", "kinds": ["throttle"]},
        "dashboard URL": {**base, "kinds": ["*"], "dashboard_url": "ftp://x"},
        "webhooks.0.kinds": {**base, "format": "chat"},
    }
    for needle, raw in cases.items():
        with pytest.raises(ValueError, match=re.escape(needle)):
            parse_webhooks([raw])
    [am] = parse_webhooks([{**base, "format": "alertmanager"}])
    assert am.alert_kinds == ALERT_KINDS
    assert am.post_url == "http://am.example.com:9093/api/v2/alerts"
    assert WebhookConfig(url="http://u:p@am:9093/prefix/", format="alertmanager").post_url == \
        "http://am:9093/prefix/api/v2/alerts"
    assert WebhookConfig(url="http://am/api/v2/alerts", format="alertmanager").post_url == \
        "http://am/api/v2/alerts"
    assert am.settings()["format"] == "alertmanager"
