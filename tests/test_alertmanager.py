"""The ``alertmanager`` webhook format against a real Prometheus Alertmanager (Debian's
``prometheus-alertmanager``), started on loopback with its own configuration, storage and
free port, clustering off: the alerts arrive, are grouped, are re-sent, and resolve — seen
through Alertmanager's own API and through the notifications it sends to a receiver.

Where the binary is absent these tests skip with the reason — unless
GPUHISTORY_REQUIRE_ALERTMANAGER=1 (CI), when they fail. Our side runs on a FakeClock set to
the real time (Alertmanager compares ``endsAt`` with its own clock); Alertmanager's own
timers are made short (group_wait 1 s, group_interval 200 ms), and the tests poll its API,
never sleep a fixed time.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from gpuhistory.alerts.config import WebhookConfig
from gpuhistory.clock import FakeClock
from tests import test_webhooks as shared
from tests.test_webhooks import HOST, Log, Receiver

pytestmark = pytest.mark.slow

db, deliverers = shared.db, shared.deliverers  # fixtures: the database, started deliverers

BINARY = "/usr/bin/prometheus-alertmanager"
WAIT_S = 20


def _binary() -> str | None:
    return BINARY if Path(BINARY).exists() else shutil.which("prometheus-alertmanager")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def eventually(probe: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Poll ``probe`` until it returns something truthy (Alertmanager works on its own
    threads and timers); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"Alertmanager: {what} within {timeout} s (last: {value!r})")
        time.sleep(0.05)


class Alertmanager:
    """The process, its URL, and its API."""

    def __init__(self, tmp: Path, notify_url: str) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = tmp / "alertmanager.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "route": {"receiver": "hook", "group_by": ["alertname"], "group_wait": "1s",
                      "group_interval": "200ms", "repeat_interval": "1h"},
            "receivers": [{"name": "hook", "webhook_configs": [
                {"url": notify_url, "send_resolved": True}]}],
        }))
        self.log = (tmp / "alertmanager.log").open("w")
        self.process = subprocess.Popen(
            [_binary() or BINARY, f"--config.file={config}", f"--storage.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=self.log, stderr=subprocess.STDOUT)
        eventually(self._ready, "ready")

    def _ready(self) -> bool:
        assert self.process.poll() is None, "Alertmanager exited; see alertmanager.log"
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def alerts(self) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.url}/api/v2/alerts", timeout=5)
        answer.raise_for_status()
        return answer.json()  # type: ignore[no-any-return]

    def groups(self) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.url}/api/v2/alerts/groups", timeout=5)
        answer.raise_for_status()
        return answer.json()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


@pytest.fixture
def notifications() -> Iterator[Receiver]:
    """Where Alertmanager sends its notifications (its webhook receiver)."""
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def alertmanager(tmp_path: Path, notifications: Receiver) -> Iterator[Alertmanager]:
    if _binary() is None:
        reason = f"Alertmanager is not installed ({BINARY}): apt-get install " \
                 "prometheus-alertmanager"
        if os.environ.get("GPUHISTORY_REQUIRE_ALERTMANAGER") == "1":
            pytest.fail(f"GPUHISTORY_REQUIRE_ALERTMANAGER=1 but {reason}")
        pytest.skip(reason)
    am = Alertmanager(tmp_path, f"http://127.0.0.1:{notifications.port}/notify")
    yield am
    am.close()


@pytest.fixture
def clock() -> FakeClock:
    """Our clock, starting at the real time: Alertmanager judges endsAt by its own."""
    return FakeClock(time.time_ns() // 1_000_000)


def ours(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Alertmanager's alerts by GPU."""
    return {a["labels"]["gpu"]: a for a in alerts if a["labels"].get("source") == "gpuhistory"}


def notified(notifications: Receiver, status: str) -> list[dict[str, Any]]:
    return [body for body in (json.loads(r.body) for r in list(notifications.requests))
            if body["status"] == status]


def test_alerts_arrive_group_are_re_sent_and_resolve(engine: sa.Engine, clock: FakeClock,
                                                     alertmanager: Alertmanager,
                                                     notifications: Receiver,
                                                     deliverers) -> None:
    """Two GPUs going CRITICAL arrive in Alertmanager as two active alerts with our labels,
    in one group (group_by alertname) and one firing notification; a re-send moves their
    endsAt on; the resumes resolve both: gone from the active alerts, and Alertmanager
    notifies "resolved"."""
    log = Log(engine, clock)
    hook = WebhookConfig(url=alertmanager.url, format="alertmanager", name="am",
                         resend_seconds=30)
    deliverer = deliverers(hook)
    log.add("critical", gpu=0, cause="temperature", temperature_celsius=91)
    log.add("critical", gpu=1, cause="memory", memory_percent=97.2)
    assert deliverer.run_once()["am"].delivered == 2

    active = eventually(lambda: len(ours(alertmanager.alerts())) == 2 and
                        ours(alertmanager.alerts()), "two active alerts")
    for gpu in ("0", "1"):
        assert active[gpu]["status"]["state"] == "active"
        assert active[gpu]["labels"] == {
            "alertname": "GPUCritical", "severity": "critical", "host": HOST, "gpu": gpu,
            "uuid": log.uuid(int(gpu)), "source": "gpuhistory"}
        assert active[gpu]["annotations"]["summary"] == f"GPU {gpu} on {HOST} is CRITICAL"

    groups = eventually(lambda: [g for g in alertmanager.groups()
                                 if g["labels"] == {"alertname": "GPUCritical"}], "a group")
    assert len(groups) == 1
    assert sorted(a["labels"]["gpu"] for a in groups[0]["alerts"]) == ["0", "1"]
    [firing] = eventually(lambda: notified(notifications, "firing"), "a firing notification")
    assert sorted(a["labels"]["gpu"] for a in firing["alerts"]) == ["0", "1"]
    assert firing["groupLabels"] == {"alertname": "GPUCritical"}

    ends_before = {gpu: a["endsAt"] for gpu, a in active.items()}
    clock.advance(30)
    assert deliverer.run_once()["am"].refreshed == 2
    moved = eventually(lambda: all(a["endsAt"] != ends_before[g]
                                   for g, a in ours(alertmanager.alerts()).items())
                       and ours(alertmanager.alerts()), "endsAt moved on by the re-send")
    assert set(moved) == {"0", "1"}

    clock.set(time.time_ns() // 1_000_000)  # resolve "now" by Alertmanager's clock
    log.add("resume", gpu=0, state="NORMAL", effective_state="NORMAL")
    log.add("resume", gpu=1, state="NORMAL", effective_state="NORMAL")
    assert deliverer.run_once()["am"].delivered == 2
    eventually(lambda: ours(alertmanager.alerts()) == {}, "the alerts resolved")
    [resolved] = eventually(lambda: notified(notifications, "resolved"),
                            "a resolved notification")
    assert sorted(a["labels"]["gpu"] for a in resolved["alerts"]) == ["0", "1"]
    assert {a["status"] for a in resolved["alerts"]} == {"resolved"}
