"""GET /metrics over real HTTP: the Prometheus exposition agrees with the status API and the log."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from gpuhistory import __version__

pytestmark = pytest.mark.postgres

MIB = 1024 * 1024
STATES = ("OPTIMAL", "NORMAL", "THROTTLED", "CRITICAL", "UNAVAILABLE")


def scrape(app) -> tuple[requests.Response, dict[str, list]]:
    """The raw response and its samples by sample name (``_total`` included for counters)."""
    return scrape_url(app.url)


def scrape_url(url: str) -> tuple[requests.Response, dict[str, list]]:
    """:func:`scrape` of the server at ``url``."""
    response = requests.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    by_name: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            by_name.setdefault(sample.name, []).append(sample)
    return response, by_name


def per_gpu(samples: dict[str, list], name: str, **match: str) -> dict[int, float]:
    """``name``'s value by GPU index, among samples whose labels include ``match``."""
    return {int(s.labels["gpu"]): s.value for s in samples.get(name, [])
            if all(s.labels.get(k) == v for k, v in match.items())}


def status_all(app) -> dict[int, dict]:
    body = requests.get(f"{app.url}/api/gpu/status/all", timeout=10).json()
    return {doc["gpu_id"]: doc for doc in body["gpus"]}


def post(app, path: str, body: dict) -> requests.Response:
    return requests.post(f"{app.url}/api/gpu/memory/{path}", json=body, timeout=10)


def test_metrics_is_prometheus_text_with_four_labelled_gpus(app) -> None:
    """The body is the official text format (its content type, parseable by the official
    parser) and every per-GPU gauge carries gpu, uuid, name and host for the 4 GPUs."""
    response, samples = scrape(app)
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    status = status_all(app)
    temps = samples["gpuhistory_gpu_temperature_celsius"]
    assert sorted(int(s.labels["gpu"]) for s in temps) == [0, 1, 2, 3]
    for s in temps:
        doc = status[int(s.labels["gpu"])]
        assert s.labels["uuid"] == doc["uuid"] and s.labels["name"] == doc["name"]
        assert s.labels["host"] == doc["host"] == "testhost"
    for name in ("gpuhistory_gpu_state", "gpuhistory_gpu_available",
                 "gpuhistory_gpu_throttle_multiplier", "gpuhistory_gpu_lease_leased_bytes",
                 "gpuhistory_gpu_last_sample_timestamp_seconds"):
        assert {int(s.labels["gpu"]) for s in samples[name]} == {0, 1, 2, 3}, name
        assert all({"uuid", "name", "host"} <= set(s.labels) for s in samples[name]), name


def test_values_equal_the_status_api(app) -> None:
    """Each gauge is the status API's number for the same GPU, converted to base units;
    readings the sim leaves NULL (fan, power limit) have no sample at all."""
    app.tick(5, times=10)
    _, samples = scrape(app)
    status = status_all(app)
    for gpu, doc in status.items():
        m = doc["metrics"]
        expect = {
            "gpuhistory_gpu_temperature_celsius": m["temperature_celsius"],
            "gpuhistory_gpu_memory_temperature_celsius": m["memory_temperature_celsius"],
            "gpuhistory_gpu_memory_used_bytes": m["memory_used_mb"] * MIB,
            "gpuhistory_gpu_memory_total_bytes": m["memory_total_mb"] * MIB,
            "gpuhistory_gpu_utilization_ratio": m["load_percent"] / 100,
            "gpuhistory_gpu_power_watts": m["power_watts"],
            "gpuhistory_gpu_sm_clock_hertz": m["sm_clock_mhz"] * 1e6,
            "gpuhistory_gpu_memory_clock_hertz": m["mem_clock_mhz"] * 1e6,
            "gpuhistory_gpu_pstate": m["pstate"],
            "gpuhistory_gpu_throttle_multiplier": doc["throttling"]["speed_multiplier"],
            "gpuhistory_gpu_available": 1.0 if doc["available"] else 0.0,
            "gpuhistory_gpu_lease_capacity_bytes": doc["memory"]["capacity_mb"] * MIB,
            "gpuhistory_gpu_lease_available_bytes": doc["memory"]["available_mb"] * MIB,
        }
        for name, value in expect.items():
            assert per_gpu(samples, name)[gpu] == pytest.approx(value), (gpu, name)
        assert per_gpu(samples, "gpuhistory_gpu_state", state=doc["state"])[gpu] == 1.0
        assert sum(per_gpu(samples, "gpuhistory_gpu_state", state=s).get(gpu, 0)
                   for s in STATES) == 1.0
        for reason in m["clock_event_reasons"]:
            assert per_gpu(samples, "gpuhistory_gpu_clock_event_reason",
                           reason=reason)[gpu] == 1.0
        active = sum(s.value for s in samples["gpuhistory_gpu_clock_event_reason"]
                     if s.labels["gpu"] == str(gpu))
        assert active == len(m["clock_event_reasons"])
        assert m["fan_percent"] is None and m["power_limit_watts"] is None
    assert "gpuhistory_gpu_fan_ratio" not in samples
    assert "gpuhistory_gpu_power_limit_watts" not in samples
    newest = per_gpu(samples, "gpuhistory_gpu_last_sample_timestamp_seconds")
    assert set(newest.values()) == {app.clock.now_ms() / 1000}


def test_gpu1_at_its_critical_peak(app) -> None:
    """GPU 1 of the fleet trace at its peak: state CRITICAL is 1 (its other states 0) and
    the throttle multiplier is 0."""
    app.tick(5, times=30)
    _, samples = scrape(app)
    states = {s.labels["state"]: s.value for s in samples["gpuhistory_gpu_state"]
              if s.labels["gpu"] == "1"}
    assert states == {"OPTIMAL": 0.0, "NORMAL": 0.0, "THROTTLED": 0.0, "CRITICAL": 1.0,
                      "UNAVAILABLE": 0.0}
    assert per_gpu(samples, "gpuhistory_gpu_throttle_multiplier")[1] == 0.0
    assert per_gpu(samples, "gpuhistory_gpu_temperature_celsius")[1] >= 85


def test_leases_show_in_bytes_and_lease_counters(app, engine) -> None:
    """A granted lease shows in leased bytes (and leaves available bytes); granted,
    renewed and released leases are counted as the event log holds them."""
    lease = post(app, "allocate", {"allocation_id": "job", "memory_mb": 2048, "gpu_id": 2})
    assert lease.status_code == 201, lease.text
    _, samples = scrape(app)
    leased = per_gpu(samples, "gpuhistory_gpu_lease_leased_bytes")
    assert leased == {0: 0.0, 1: 0.0, 2: 2048 * MIB, 3: 0.0}
    capacity = per_gpu(samples, "gpuhistory_gpu_lease_capacity_bytes")[2]
    assert per_gpu(samples, "gpuhistory_gpu_lease_available_bytes")[2] == capacity - 2048 * MIB
    assert per_gpu(samples, "gpuhistory_gpu_lease_active_leases")[2] == 1.0
    token = lease.json()["lease_token"]
    assert post(app, "renew", {"allocation_id": "job", "lease_token": token}).ok
    assert post(app, "deallocate", {"allocation_id": "job", "lease_token": token}).ok
    _, samples = scrape(app)
    outcomes = {s.labels["outcome"]: s.value for s in samples["gpuhistory_lease_events_total"]}
    assert outcomes == {"granted": 1.0, "renewed": 1.0, "released": 1.0, "expired": 0.0}
    with engine.connect() as conn:
        logged = dict(conn.execute(sa.text(
            "SELECT kind, count(*) FROM events WHERE kind LIKE 'lease_%' GROUP BY kind")).all())
    assert {f"lease_{k}": v for k, v in outcomes.items() if v} == logged
    assert per_gpu(samples, "gpuhistory_gpu_lease_leased_bytes")[2] == 0.0


def test_lease_commit_counters_count_this_process_s_transactions(app) -> None:
    """gpuhistory_lease_commits_total and gpuhistory_lease_operations_total count the lease
    transactions of the serving process: a lone grant, renewal and release add one commit
    and one operation each; a refused one counts as an operation of its commit too."""
    _, before = scrape(app)
    value = {n: before[n][0].value for n in ("gpuhistory_lease_commits_total",
                                              "gpuhistory_lease_operations_total",
                                              "gpuhistory_lease_failed_commits_total")}
    lease = post(app, "allocate", {"allocation_id": "counted", "memory_mb": 64, "gpu_id": 0})
    token = lease.json()["lease_token"]
    assert post(app, "renew", {"allocation_id": "counted", "lease_token": token}).ok
    assert post(app, "deallocate", {"allocation_id": "counted", "lease_token": "wrong"}
                ).status_code == 403
    _, after = scrape(app)
    assert {n: after[n][0].value - v for n, v in value.items()} == {
        "gpuhistory_lease_commits_total": 3.0, "gpuhistory_lease_operations_total": 3.0,
        "gpuhistory_lease_failed_commits_total": 0.0}


def test_transition_and_incident_counters_count_the_log(app, engine) -> None:
    """gpuhistory_state_transitions_total and gpuhistory_overheat_incidents_total equal
    the rows of the transitions and incidents tables, per GPU (and new state)."""
    app.tick(5, times=40)
    _, samples = scrape(app)
    with engine.connect() as conn:
        moved = conn.execute(sa.text(
            "SELECT g.gpu_index, t.to_state, count(*) FROM transitions t "
            "JOIN gpus g ON g.id = t.gpu_id GROUP BY g.gpu_index, t.to_state")).all()
        overheated = dict(conn.execute(sa.text(
            "SELECT g.gpu_index, count(*) FROM incidents i JOIN gpus g ON g.id = i.gpu_id "
            "GROUP BY g.gpu_index")).all())
    assert moved, "the trace should have produced transitions"
    counted = {(int(s.labels["gpu"]), s.labels["to_state"]): s.value
               for s in samples["gpuhistory_state_transitions_total"]}
    assert {k: v for k, v in counted.items() if v} == {
        (gpu, STATES[to_state]): n for gpu, to_state, n in moved}
    assert len(counted) == 4 * len(STATES)  # every series exists, at 0 until it happens
    incidents = per_gpu(samples, "gpuhistory_overheat_incidents_total")
    assert incidents == {gpu: float(overheated.get(gpu, 0)) for gpu in range(4)}


def test_service_metrics(app) -> None:
    """gpuhistory_info names the version and backend; the last tick's duration and age come
    from the in-process sampler and follow the injected clock."""
    app.clock.advance(7)
    _, samples = scrape(app)
    (info,) = samples["gpuhistory_info"]
    assert info.labels == {"version": __version__, "backend": "sim"} and info.value == 1.0
    (duration,) = samples["gpuhistory_tick_duration_seconds"]
    assert duration.value == pytest.approx(app.sampler.last_tick.seconds)
    (age,) = samples["gpuhistory_last_tick_age_seconds"]
    assert age.value == pytest.approx(7.0)


def test_metrics_is_in_the_openapi_document_and_needs_no_token(make_app) -> None:
    """/metrics is documented as text/plain, and is readable without the API token."""
    app = make_app(token="s3cret-token-for-tests")
    doc = requests.get(f"{app.url}/api/openapi.json", timeout=10).json()
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert requests.get(f"{app.url}/metrics", timeout=10).status_code == 200


def test_promtool_check_metrics_finds_no_problems(app) -> None:
    """``promtool check metrics`` (Prometheus's own linter) exits 0 and prints nothing."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("GPUHISTORY_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("GPUHISTORY_REQUIRE_PROMETHEUS=1 but promtool is not on PATH")
        pytest.skip("promtool is not on PATH: apt-get install prometheus")
    app.tick(5, times=30)
    post(app, "allocate", {"allocation_id": "lint", "memory_mb": 1024})
    response, _ = scrape(app)
    result = subprocess.run([promtool, "check", "metrics"], input=response.text,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", (
        result.stdout + result.stderr)


def test_an_api_only_process_still_answers(live_api) -> None:
    """With no sampler and no lease manager in-process (and nothing logged yet), /metrics
    still answers: gpuhistory_info and the zeroed lease counters, no tick or GPU series."""
    server = live_api()
    response = requests.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    names = {s.name: s for f in text_string_to_metric_families(response.text)
             for s in f.samples}
    assert names["gpuhistory_info"].labels["backend"] == "none"
    assert "gpuhistory_tick_duration_seconds" not in names
    assert "gpuhistory_last_tick_age_seconds" not in names
    assert not any(name.startswith("gpuhistory_gpu_") for name in names)
    assert names["gpuhistory_lease_events_total"].value == 0.0
