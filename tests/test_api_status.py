"""/healthz and the status endpoints over real HTTP against a real SQLite log."""

from __future__ import annotations

import pytest
import requests

from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.sampler import Sampler
from gpuhistory.sampling.sim import SimBackend
from gpuhistory.storage.engine import head_revision
from tests.conftest import FLEET4

pytestmark = pytest.mark.postgres


def sim_sampler(store, clock, gpus=None):
    backend = SimBackend(clock, trace=FLEET4, gpus=gpus)
    from gpuhistory.domain.config import DEFAULT_CONFIG

    pipeline = Pipeline(store, backend.name, lambda: DEFAULT_CONFIG)
    return Sampler(backend, pipeline, store, clock, interval=1.0)


def test_status_all_lists_every_gpu_with_seed_field_names(store, clock, live_api) -> None:
    """status/all: one document per GPU with the GPUMetrics field names, backend 'sim'."""
    sampler = sim_sampler(store, clock)
    sampler.tick()
    server = live_api(sampler)
    body = requests.get(f"{server.url}/api/gpu/status/all", timeout=5).json()
    assert body["count"] == 4
    first = body["gpus"][0]
    assert first["backend"] == "sim" and first["state"] == "OPTIMAL" and first["available"]
    metrics = first["metrics"]
    for key in ("gpu_id", "uuid", "name", "timestamp", "state", "load_percent",
                "memory_used_mb", "memory_total_mb", "memory_percent", "temperature_celsius",
                "memory_temperature_celsius", "power_watts", "sm_clock_mhz", "mem_clock_mhz",
                "clock_event_reasons", "clock_event_reasons_mask", "pstate", "fan_percent",
                "backend"):
        assert key in metrics, key
    assert metrics["clock_event_reasons"] == ["GpuIdle"]
    assert metrics["backend"] == "sim"


def test_status_of_one_gpu_follows_the_trace(store, clock, live_api) -> None:
    """GPU 1 of the fleet trace is CRITICAL at its peak, with throttle advice 0.0."""
    sampler = sim_sampler(store, clock)
    sampler.tick()
    clock.advance(150)
    sampler.tick()
    server = live_api(sampler)
    doc = requests.get(f"{server.url}/api/gpu/status", params={"gpu_id": 1}, timeout=5).json()
    assert doc["gpu_id"] == 1 and doc["state"] == "CRITICAL"
    assert doc["throttling"]["speed_multiplier"] == 0.0
    assert doc["throttling"]["should_throttle"] is True
    assert doc["metrics"]["temperature_celsius"] >= 85


def test_status_at_a_past_time(store, clock, live_api) -> None:
    """?at= answers from the newest sample at or before that time."""
    sampler = sim_sampler(store, clock)
    sampler.tick()
    first = clock.now_ms()
    clock.advance(150)
    sampler.tick()
    server = live_api(sampler)
    doc = requests.get(f"{server.url}/api/gpu/status",
                       params={"gpu_id": 1, "at": str(first / 1000)}, timeout=5).json()
    assert doc["state"] == "OPTIMAL"


def test_unknown_gpu_is_404_and_bad_arguments_400(store, clock, live_api) -> None:
    """Errors use the one JSON shape: 404 for an unknown GPU, 400 for a malformed id or time."""
    sampler = sim_sampler(store, clock)
    sampler.tick()
    server = live_api(sampler)
    cases = [({"gpu_id": 7}, 404, "gpu_not_found"), ({"gpu_id": "x"}, 400, "invalid_argument"),
             ({"gpu_id": -1}, 422, "validation_failed"),
             ({"gpu_id": 0, "at": "yesterday"}, 400, "invalid_argument"),
             ({"gpu_id": 0, "at": "nan"}, 400, "invalid_argument")]
    for params, status, code in cases:
        response = requests.get(f"{server.url}/api/gpu/status", params=params, timeout=5)
        assert response.status_code == status, params
        error = response.json()["error"]
        assert error["code"] == code and error["message"] and isinstance(error["details"], dict)
    missing = requests.get(f"{server.url}/api/nothing", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_healthz_reports_database_backend_and_tick_age(store, clock, live_api,
                                                      database) -> None:
    """/healthz: database reachable with its revision, backend, and the age of the last tick."""
    sampler = sim_sampler(store, clock)
    sampler.tick()
    clock.advance(2)
    server = live_api(sampler)
    body = requests.get(f"{server.url}/healthz", timeout=5).json()
    assert body["status"] == "ok"
    assert body["database"] == {"ok": True, "revision": head_revision(),
                                "dialect": database}
    assert body["backend"]["name"] == "sim" and body["backend"]["ok"]
    assert body["last_sample"]["age_seconds"] == 2.0
    assert body["last_tick"]["gpus"] == 4


def test_empty_log_status_all_is_an_empty_list(live_api) -> None:
    """Before any tick there are no GPUs: an empty list, not an error."""
    server = live_api(None)
    body = requests.get(f"{server.url}/api/gpu/status/all", timeout=5).json()
    assert body["count"] == 0 and body["gpus"] == []
