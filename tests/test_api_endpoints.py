"""The seed's endpoints beyond status, over real HTTP: metrics, history, trend, throttle,
monitoring, config, system status, and the OpenAPI document."""

from __future__ import annotations

import pytest
import requests
import sqlalchemy as sa

from gpuhistory.config.layers import load_static
from gpuhistory.storage.schema import events

pytestmark = pytest.mark.postgres

SEED_ENDPOINTS = [
    ("get", "/api/gpu/status"), ("get", "/api/gpu/status/all"), ("get", "/api/gpu/metrics"),
    ("get", "/api/gpu/metrics/history"), ("get", "/api/gpu/temperature/trend"),
    ("post", "/api/gpu/memory/allocate"), ("post", "/api/gpu/memory/deallocate"),
    ("get", "/api/gpu/memory/available"), ("get", "/api/gpu/throttle/status"),
    ("post", "/api/gpu/monitoring/start"), ("post", "/api/gpu/monitoring/stop"),
    ("get", "/api/gpu/config"), ("put", "/api/gpu/config"),
]


def get(app, path, **params):
    return requests.get(f"{app.url}{path}", params=params, timeout=5)


def test_metrics_is_the_latest_sample(app) -> None:
    """/metrics returns the newest sample of the GPU with GPUMetrics names."""
    app.tick(10)
    body = get(app, "/api/gpu/metrics", gpu_id=2).json()
    assert body["gpu_id"] == 2 and body["backend"] == "sim"
    assert body["timestamp"].endswith("Z") and body["temperature_celsius"] is not None


def test_history_is_persisted_and_bounded(app) -> None:
    """History reads the log: since/until select a range, limit keeps the newest."""
    app.tick(1, times=250)
    default = get(app, "/api/gpu/metrics/history", gpu_id=0).json()
    assert default["count"] == 200  # the seed's history_size
    stamps = [s["timestamp"] for s in default["samples"]]
    assert stamps == sorted(stamps)
    last = get(app, "/api/gpu/metrics/history", gpu_id=0, limit=5).json()
    assert last["samples"][-1]["timestamp"] == stamps[-1] and last["count"] == 5
    start_s = (app.clock.now_ms() - 10_000) / 1000
    window = get(app, "/api/gpu/metrics/history", gpu_id=0, since=str(start_s)).json()
    assert window["count"] == 11
    bad = get(app, "/api/gpu/metrics/history", since="2026-01-02T00:00:00Z",
              until="2026-01-01T00:00:00Z")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_failed"


def test_trend_rises_on_the_overheating_gpu_and_is_stable_on_the_idle_one(app) -> None:
    """Trend during GPU 1's ramp: rising, positive slope, a threshold ahead; GPU 3 stable."""
    app.tick(1, times=40)  # t = 40 s: GPU 1 is heating up
    hot = get(app, "/api/gpu/temperature/trend", gpu_id=1, duration_minutes=0.3).json()
    assert hot["trend"] == "rising" and hot["slope_c_per_min"] > 0.5
    assert hot["samples"] >= 17 and hot["min"] <= hot["avg"] <= hot["max"]
    assert hot["next_threshold_celsius"] > hot["last"]
    assert hot["minutes_to_next_threshold"] > 0
    idle = get(app, "/api/gpu/temperature/trend", gpu_id=3).json()
    assert idle["trend"] == "stable" and idle["minutes_to_next_threshold"] is None


def test_trend_of_a_past_window(app) -> None:
    """``until`` moves the window into the past; an empty window has zero samples."""
    app.tick(1, times=30)
    early = get(app, "/api/gpu/temperature/trend", gpu_id=0, duration_minutes=1,
                until="2000-01-01T00:00:00Z").json()
    assert early["samples"] == 0 and early["trend"] == "stable" and early["avg"] is None


def test_throttle_status_with_critical_pause(app) -> None:
    """GPU 1 at its peak: multiplier 0; after it cools, the critical pause still holds."""
    app.tick(5, times=30)  # t = 150 s: GPU 1 is at ~90 °C
    peak = get(app, "/api/gpu/throttle/status", gpu_id=1).json()
    assert peak["state"] == "CRITICAL" and peak["speed_multiplier"] == 0.0
    app.tick(1, times=60)  # t = 210 s: the load stopped at 200 s, the card cooled
    after = get(app, "/api/gpu/throttle/status", gpu_id=1).json()
    assert after["state"] in ("OPTIMAL", "NORMAL")
    assert after["effective_state"] == "CRITICAL" and after["should_throttle"]
    assert 0 < after["cooldown_remaining_seconds"] <= 60
    then = get(app, "/api/gpu/throttle/status", gpu_id=1, at=peak["at"]).json()
    assert then["state"] == "CRITICAL"


def test_monitoring_stop_and_start_are_persisted(app) -> None:
    """stop/start are events with requested_by, so a restarted service honours them."""
    from gpuhistory.sampling.control import should_monitor

    app.sampler.start()
    stopped = requests.post(f"{app.url}/api/gpu/monitoring/stop", timeout=10).json()
    assert stopped["monitoring"] is False and not app.sampler.running
    assert should_monitor(app.engine) is False
    started = requests.post(f"{app.url}/api/gpu/monitoring/start", timeout=10).json()
    assert started["monitoring"] is True and should_monitor(app.engine) is True
    status = get(app, "/api/gpu/status", gpu_id=0).json()
    assert status["monitoring"]["monitoring"] is True


def test_config_get_shows_values_and_sources(make_app, tmp_path) -> None:
    """GET /config: effective values with their source (default, file, env)."""
    path = tmp_path / "gpuhistory.toml"
    path.write_text("temp_throttle = 83\n")
    static = load_static(path, environ={"GPUHISTORY_TEMP_NORMAL": "72"})
    application = make_app(static=static)
    body = get(application, "/api/gpu/config").json()
    assert body["config"]["temp_throttle"] == 83 and body["sources"]["temp_throttle"] == "file"
    assert body["config"]["temp_normal"] == 72 and body["sources"]["temp_normal"] == "env"
    assert body["sources"]["temp_optimal"] == "default"


def test_config_put_applies_persists_and_classifies_with_new_thresholds(app, engine) -> None:
    """A good PUT is one config_changed event; classification uses it from the next tick."""
    response = requests.put(f"{app.url}/api/gpu/config",
                            json={"temp_optimal": 30, "temp_normal": 32}, timeout=5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["config"]["temp_optimal"] == 30 and body["sources"]["temp_optimal"] == "api"
    assert body["changes"]["temp_optimal"] == {"old": 65, "new": 30}
    app.tick(1)
    assert get(app, "/api/gpu/status", gpu_id=3).json()["state"] == "NORMAL"  # idle 31 °C
    with engine.connect() as conn:
        payload = conn.execute(sa.select(events.c.payload).where(
            events.c.kind == "config_changed")).scalar()
    assert payload["changes"]["temp_optimal"] == {"old": 65, "new": 30}
    from gpuhistory.config.store import ConfigStore

    again = ConfigStore(engine, load_static(environ={}), app.clock)  # a restart
    assert again.current().temp_optimal == 30
    cleared = requests.put(f"{app.url}/api/gpu/config", json={"temp_optimal": None,
                                                              "temp_normal": None}, timeout=5)
    assert cleared.json()["config"]["temp_optimal"] == 65
    assert cleared.json()["sources"]["temp_optimal"] == "default"


def test_config_put_rejects_bad_values_whole_and_changes_nothing(app, engine) -> None:
    """Bad PUTs: 422 naming each bad key, 400 for unknown keys or wrong types; no event."""
    before = get(app, "/api/gpu/config").json()
    cases = [
        ({"temp_optimal": 80}, 422, "validation_failed"),  # not below temp_normal
        ({"memory_critical": 150, "hysteresis_c": -1}, 422, "validation_failed"),
        ({"temp_optimal": "hot"}, 400, "invalid_argument"),
        ({"no_such_key": 1}, 400, "invalid_argument"),
        ({}, 400, "invalid_argument"),
    ]
    for body, status, code in cases:
        response = requests.put(f"{app.url}/api/gpu/config", json=body, timeout=5)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["code"] == code
    two = requests.put(f"{app.url}/api/gpu/config",
                       json={"memory_critical": 150, "hysteresis_c": -1}, timeout=5).json()
    assert set(two["error"]["details"]["fields"]) == {"memory_critical", "hysteresis_c"}
    assert get(app, "/api/gpu/config").json() == before
    with engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT count(*) FROM events WHERE kind='config_changed'")).scalar() == 0


def test_system_status_has_gpu_cpu_and_memory(app) -> None:
    """/api/system/status: the GPUs' status with the machine's CPU and RAM."""
    body = get(app, "/api/system/status").json()
    assert body["gpu"]["count"] == 4
    assert body["cpu"]["count"] >= 1 and body["memory"]["total_mb"] > 0


def test_openapi_document_describes_every_endpoint(app) -> None:
    """/api/openapi.json lists the seed's thirteen endpoints and the error shape for each."""
    doc = get(app, "/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for method, path in SEED_ENDPOINTS:
        operation = doc["paths"][path][method]
        assert "200" in operation["responses"] or "201" in operation["responses"], path
        assert "503" in operation["responses"], path
    for path in ("/api/gpu/memory/renew", "/api/gpu/memory/leases", "/api/gpu/events",
                 "/api/gpu/events/stream", "/api/system/status", "/healthz"):
        assert path in doc["paths"]
    allocate = doc["paths"]["/api/gpu/memory/allocate"]["post"]
    assert "requestBody" in allocate and "409" in allocate["responses"]


def test_past_questions_use_the_thresholds_in_force_then(app) -> None:
    """Throttle advice ``at`` a time before a config change uses the old cooldown."""
    app.tick(5, times=30)  # GPU 1 critical
    app.tick(1, times=60)  # cooled at ~200 s: the 60 s critical pause runs
    before_change = app.clock.now_ms()
    past = get(app, "/api/gpu/throttle/status", gpu_id=1, at=str(before_change / 1000)).json()
    assert past["effective_state"] == "CRITICAL"
    app.clock.advance(1)
    requests.put(f"{app.url}/api/gpu/config", json={"critical_pause_seconds": 0,
                                                    "throttle_cooldown_seconds": 0}, timeout=5)
    app.clock.advance(1)
    now = get(app, "/api/gpu/throttle/status", gpu_id=1).json()
    assert now["effective_state"] == now["state"]  # no pause under the new config
    again = get(app, "/api/gpu/throttle/status", gpu_id=1, at=str(before_change / 1000)).json()
    assert again["effective_state"] == "CRITICAL"  # the past keeps its own thresholds


def test_status_at_a_past_time_has_the_leases_and_config_of_then(app) -> None:
    """status?at= answers with the leases active at that moment and the config in force."""
    lease = requests.post(f"{app.url}/api/gpu/memory/allocate", json={
        "allocation_id": "then", "memory_mb": 1024, "ttl_seconds": 100}, timeout=5).json()
    app.tick(10)
    during = app.clock.now_ms()
    app.clock.advance(1)
    requests.post(f"{app.url}/api/gpu/memory/deallocate", json={
        "allocation_id": "then", "lease_token": lease["lease_token"]}, timeout=5)
    requests.put(f"{app.url}/api/gpu/config", json={"temp_throttle": 80}, timeout=5)
    app.tick(10)
    past = get(app, "/api/gpu/status", gpu_id=0, at=str(during / 1000)).json()
    assert [x["allocation_id"] for x in past["leases"]] == ["then"]
    assert past["config"]["temp_throttle"] == 85 and "memory" not in past
    now = get(app, "/api/gpu/status/all", at=str(app.clock.now_ms() / 1000)).json()
    assert now["gpus"][0]["leases"] == [] and now["gpus"][0]["config"]["temp_throttle"] == 80
