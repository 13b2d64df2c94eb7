"""No stale truth, with real processes: when monitoring is stopped or the sampler dies, the
`serve`/`api` processes stop serving its last values as current — /metrics, /healthz and
the JSON the dashboard reads (/healthz's freshness and /api/gpu/status/all) — within two
intervals of the moment the samples become stale."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gpuhistory.api.freshness import stale_after
from tests.test_roles import poll, stop
from tests.test_serve import free_port, gpuhistory, wait_ready

pytestmark = pytest.mark.slow

INTERVAL = 0.5  # seconds between ticks: short, so the test is quick


def metrics(url: str) -> dict[str, list]:
    body = requests.get(f"{url}/metrics", timeout=5).text
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def shows_stale(url: str, reason: str) -> bool:
    """/metrics, /healthz and the dashboard's JSON all say the values are not current."""
    samples = metrics(url)
    if "gpuhistory_gpu_temperature_celsius" in samples:
        return False
    available = [s.value for s in samples.get("gpuhistory_gpu_available", [])]
    flagged = {s.labels["reason"]: s.value for s in samples["gpuhistory_sampler_stale"]}
    health = requests.get(f"{url}/healthz", timeout=5).json()
    return (len(available) == 4 and set(available) == {0.0} and flagged[reason] == 1.0
            and len(samples["gpuhistory_gpu_sample_age_seconds"]) == 4
            and health["status"] == "degraded" and health["freshness"]["stale"]
            and health["freshness"]["reason"] == reason
            and any(r.startswith(f"{reason}:") for r in health["reasons"]))


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(gpuhistory(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


@pytest.fixture
def env() -> dict[str, str]:
    """The same configuration for every process: the interval is what staleness counts."""
    return {**os.environ, "GPUHISTORY_MONITOR_INTERVAL": str(INTERVAL)}


def test_monitoring_stopped_shows_on_serve_and_on_an_api(migrated_db: Path, env) -> None:
    """Stopping monitoring on `serve`: its own and a separate `api`'s /metrics drop the
    values and say monitoring_stopped, and both /healthz answers are degraded, at once
    (well within two intervals of the stop)."""
    db = migrated_db
    common = ["--db", str(db), "--host-name", "node-a"]
    serve_port, api_port = free_port(), free_port()
    serve = start(["serve", *common, "--backend", "sim", "--port", str(serve_port),
                   "--threads", "2"], env)
    api = start(["api", *common, "--port", str(api_port), "--threads", "2"], env)
    urls = [f"http://127.0.0.1:{serve_port}", f"http://127.0.0.1:{api_port}"]
    try:
        for url, proc in zip(urls, (serve, api), strict=True):
            wait_ready(url, proc)
        poll(lambda: all(requests.get(f"{u}/healthz", timeout=5).json()["status"] == "ok"
                         for u in urls), what="both processes healthy")
        assert "gpuhistory_gpu_temperature_celsius" in metrics(urls[1])
        answer = requests.post(f"{urls[0]}/api/gpu/monitoring/stop", timeout=10)
        assert answer.status_code == 200, answer.text
        stopped = time.monotonic()
        for url in urls:
            poll(lambda u=url: shows_stale(u, "monitoring_stopped"), timeout=10,
                 what=f"{url} to show monitoring_stopped")
        assert time.monotonic() - stopped < 2 * INTERVAL + 1.0  # +1 s: HTTP on a busy box
        status = requests.get(f"{urls[0]}/api/gpu/status/all", timeout=5).json()
        assert {g["monitoring"]["monitoring"] for g in status["gpus"]} == {False}
    finally:
        stderrs = [stop(proc) for proc in (api, serve)]
    assert serve.returncode == 0 and api.returncode == 0, stderrs


def test_a_killed_sampler_shows_as_stale_on_the_api(migrated_db: Path, env) -> None:
    """SIGKILL the `sampler` under a running `api`: once its newest tick is older than
    three intervals (stale_after), the api's /metrics, /healthz and dashboard JSON say
    sampler_stale within two more intervals; nothing else stopped it."""
    db = migrated_db
    common = ["--db", str(db), "--host-name", "node-b"]
    sampler = start(["sampler", *common, "--backend", "sim"], env)
    port = free_port()
    api = start(["api", *common, "--port", str(port), "--threads", "2"], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, api)
        poll(lambda: requests.get(f"{url}/healthz", timeout=5).json()["status"] == "ok",
             what="the api to be healthy")
        assert "gpuhistory_gpu_temperature_celsius" in metrics(url)
        sampler.send_signal(signal.SIGKILL)
        sampler.wait(timeout=10)
        killed = time.monotonic()
        poll(lambda: shows_stale(url, "sampler_stale"), timeout=20,
             what="the api to show sampler_stale")
        waited = time.monotonic() - killed
        assert waited < stale_after(INTERVAL) + 2 * INTERVAL + 1.0, waited
        health = requests.get(f"{url}/healthz", timeout=5).json()
        assert health["freshness"]["interval_seconds"] == INTERVAL
        assert health["last_sample"]["age_seconds"] > stale_after(INTERVAL)
    finally:
        stderrs = [stop(proc) for proc in (api, sampler)]
    assert api.returncode == 0, stderrs
