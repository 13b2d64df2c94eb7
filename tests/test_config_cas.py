"""Configuration changes as compare-and-set: each PUT is validated against the configuration
it will produce, atomically with its write, so two changes each valid alone but invalid
together are never both acknowledged; ETag / If-Match make a change conditional on the
version it was based on (412 when another came first).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from gpuhistory.client import ApiError, Client
from gpuhistory.config.store import VersionMismatch, replay
from gpuhistory.domain.config import Config
from tests.clock_process import FileClock
from tests.test_lease_history import START_MS, ApiProcess

pytestmark = pytest.mark.postgres

# Each valid alone against the defaults (temp_normal 75 < temp_throttle 85), invalid
# together (temp_normal 84 is not below temp_throttle 80).
PAIR = ({"temp_normal": 84}, {"temp_throttle": 80})
CLEAR = {"temp_normal": None, "temp_throttle": None}


def put(url: str, body: dict[str, Any], **headers: str) -> requests.Response:
    return requests.put(f"{url}/api/gpu/config", json=body, headers=headers, timeout=60)


def race(calls: list) -> list[Any]:
    """Run the calls in threads released together; their results (or exceptions)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = calls[i]()
        except Exception as exc:  # examined by the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def stored_config(engine: sa.Engine) -> Config:
    """The configuration the stored changes make, validated strictly (raises if invalid)."""
    with engine.connect() as conn:
        payloads = conn.execute(sa.text(
            "SELECT payload FROM events WHERE kind = 'config_changed' ORDER BY id")).scalars()
        runtime = replay(p if isinstance(p, dict) else json.loads(p) for p in payloads)
    return Config.model_validate(runtime)


def test_racing_puts_valid_alone_invalid_together_are_never_both_acknowledged(app) -> None:
    """20 rounds of ``temp_normal: 84`` and ``temp_throttle: 80`` PUT at once over HTTP: in
    every round exactly one is acknowledged and the other is 422; the configuration in
    force is exactly the acknowledged change, and a later PUT of an unrelated key works."""
    for round_ in range(20):
        assert put(app.url, CLEAR).status_code == 200
        answers = race([lambda b=body: put(app.url, b) for body in PAIR])
        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 422], (round_, [a.text for a in answers])
        won = next(body for body, a in zip(PAIR, answers, strict=True) if a.status_code == 200)
        config = requests.get(f"{app.url}/api/gpu/config", timeout=10).json()["config"]
        assert (config["temp_normal"], config["temp_throttle"]) == (
            won.get("temp_normal", 75), won.get("temp_throttle", 85))
        lost = next(a for a in answers if a.status_code == 422).json()["error"]
        assert lost["code"] == "validation_failed"
    assert put(app.url, {"monitor_interval": 2}).status_code == 200


def test_many_threads_changing_thresholds_leave_exactly_the_acknowledged_changes(
        app, engine: sa.Engine) -> None:
    """16 threads each PUT a threshold change valid against the defaults, 5 rounds: the
    stored configuration is always valid and equals the acknowledged changes applied in
    the order of their versions."""
    bodies = [{"temp_normal": n} for n in (70, 78, 80, 84)] + \
             [{"temp_throttle": n} for n in (76, 80, 82, 88)] + \
             [{"temp_optimal": n} for n in (60, 70, 74, 77)] + \
             [{"temp_critical": n} for n in (86, 89, 95, 99)]
    for _ in range(5):
        assert put(app.url, {k: None for k in ("temp_optimal", "temp_normal", "temp_throttle",
                                               "temp_critical")}).status_code == 200
        answers = race([lambda b=body: put(app.url, b) for body in bodies])
        assert {a.status_code for a in answers} <= {200, 422}, [a.text for a in answers]
        acknowledged = sorted((a.json()["version"], body) for body, a
                              in zip(bodies, answers, strict=True) if a.status_code == 200)
        assert acknowledged, "no change was acknowledged"
        expected = Config().model_dump()
        for _, body in acknowledged:
            expected.update(body)
        assert stored_config(engine).model_dump() == expected
        in_force = requests.get(f"{app.url}/api/gpu/config", timeout=10).json()["config"]
        assert in_force == expected


def test_two_api_processes_never_both_acknowledge_an_invalid_pair(
        db_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    """Two ``gpuhistory api`` processes on one database, the pair PUT at once, one to each,
    20 rounds: exactly one acknowledged each round and the stored configuration valid."""
    FileClock(tmp_path / "clock", START_MS).close()
    apis = [ApiProcess(db_url, tmp_path / "clock", tmp_path / "api.log") for _ in range(2)]
    try:
        for api in apis:
            api.wait_ready()
        for round_ in range(20):
            assert put(apis[round_ % 2].url, CLEAR).status_code == 200
            answers = race([lambda b=body, api=api: put(api.url, b)
                            for body, api in zip(PAIR, apis, strict=True)])
            assert sorted(a.status_code for a in answers) == [200, 422], \
                (round_, [a.text for a in answers])
            stored_config(engine)  # valid, else it raises
    finally:
        statuses = [api.stop() for api in apis]
    assert statuses == [0, 0]


def test_if_match_applies_a_change_only_to_its_version(app) -> None:
    """GET's ETag names the version; a PUT with If-Match of it succeeds (new ETag); the same
    If-Match again is 412 precondition_failed and changes nothing; ``*`` and no If-Match
    apply to any version; a malformed If-Match is 400."""
    first = requests.get(f"{app.url}/api/gpu/config", timeout=10)
    tag = first.headers["ETag"]
    assert tag == f'"{first.json()["version"]}"'
    changed = put(app.url, {"temp_throttle": 82}, **{"If-Match": tag})
    assert changed.status_code == 200, changed.text
    new_tag = changed.headers["ETag"]
    assert new_tag != tag and changed.json()["version"] > first.json()["version"]
    assert requests.get(f"{app.url}/api/gpu/config", timeout=10).headers["ETag"] == new_tag

    stale = put(app.url, {"temp_throttle": 83}, **{"If-Match": tag})
    assert stale.status_code == 412
    error = stale.json()["error"]
    assert error["code"] == "precondition_failed" and error["details"]["etag"] == new_tag
    now = requests.get(f"{app.url}/api/gpu/config", timeout=10)
    assert now.json()["config"]["temp_throttle"] == 82 and now.headers["ETag"] == new_tag

    assert put(app.url, {"temp_throttle": 84}, **{"If-Match": "*"}).status_code == 200
    assert put(app.url, {"temp_throttle": 83}, **{"If-Match": f'"x", {now.headers["ETag"]}'}
               ).status_code == 412  # the version moved on with the "*" change
    assert put(app.url, {"temp_throttle": 81}).status_code == 200
    bad = put(app.url, {"temp_throttle": 80}, **{"If-Match": "W/5"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_argument"


def test_a_stale_version_is_refused_by_the_store(app) -> None:
    """The store's own check: a change based on version 0 after another change: refused."""
    app.config.change({"temp_throttle": 82})
    with pytest.raises(VersionMismatch):
        app.config.change({"temp_throttle": 83}, if_version={"0"})
    assert app.config.current().temp_throttle == 82


def test_client_update_config_with_if_version(app) -> None:
    """The Python client sends ``if_version`` as If-Match: its version applies, a stale one
    raises ApiError 412 precondition_failed and changes nothing."""
    client = Client(app.url)
    version = client.config()["version"]
    done = client.update_config(temp_throttle=82, if_version=version)
    assert done["version"] > version
    with pytest.raises(ApiError) as refused:
        client.update_config(temp_throttle=83, if_version=version)
    assert (refused.value.status, refused.value.code) == (412, "precondition_failed")
    assert client.config()["config"]["temp_throttle"] == 82
