"""Process roles: one `gpuhistory sampler` and two `gpuhistory api` processes on one SQLite
file, as real subprocesses; what each serves, what crosses between them, and clean stops."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.test_serve import free_port, gpuhistory, wait_ready

pytestmark = pytest.mark.slow


def poll(check: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    """Call ``check`` until it returns something truthy (bounded; not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    return stderr


def test_sampler_and_two_apis_share_one_database(migrated_db: Path) -> None:
    db = migrated_db  # migrated: no race between three first migrations
    common = ("--db", str(db), "--host-name", "node-a")
    sampler = subprocess.Popen(
        gpuhistory("sampler", *common, "--backend", "sim", "--interval", "0.2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    ports = [free_port(), free_port()]
    apis = [subprocess.Popen(gpuhistory("api", *common, "--port", str(port), "--threads", "2"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    procs = [sampler, *apis]
    try:
        for url, proc in zip(urls, apis, strict=True):
            health = wait_ready(url, proc)  # ready once the sampler's samples are there
            assert "backend" not in health and "monitoring" not in health
            assert health["last_sample"]["age_seconds"] is not None
            assert health["status"] == "ok"
        assert sampler.poll() is None

        # Both APIs see the sampler's samples.
        for url in urls:
            everything = requests.get(f"{url}/api/gpu/status/all", timeout=5).json()
            assert everything["count"] == 4
            assert {g["backend"] for g in everything["gpus"]} == {"sim"}

        # A lease granted through one API is visible and counted through the other.
        granted = requests.post(f"{urls[0]}/api/gpu/memory/allocate", json={
            "allocation_id": "roles-1", "memory_mb": 1024, "gpu_id": 0, "ttl_seconds": 600,
            "owner": "tester"}, timeout=10)
        assert granted.status_code == 201, granted.text
        seen = requests.get(f"{urls[1]}/api/gpu/memory/leases", timeout=10).json()["leases"]
        assert [x["status"] for x in seen if x["allocation_id"] == "roles-1"] == ["active"]
        capacity = requests.get(f"{urls[1]}/api/gpu/memory/available",
                                params={"gpu_id": 0}, timeout=10).json()
        assert capacity["leased_mb"] == 1024 and capacity["active_leases"] == 1

        # Monitoring start/stop belongs to the sampler process.
        for url in urls:
            for action in ("stop", "start"):
                answer = requests.post(f"{url}/api/gpu/monitoring/{action}", timeout=10)
                assert answer.status_code == 409
                assert answer.json()["error"]["code"] == "no_sampler"

        # A config change through an API reaches the sampler: every sim GPU is far above
        # these thresholds, so its next ticks log state changes after the change.
        put = requests.put(f"{urls[0]}/api/gpu/config", json={
            "temp_optimal": 1, "temp_normal": 2, "temp_throttle": 3, "temp_critical": 4},
            timeout=10)
        assert put.status_code == 200, put.text
        changed = requests.get(f"{urls[1]}/api/gpu/events",
                               params={"kind": "config_changed"}, timeout=10).json()
        since = changed["last_id"]
        assert changed["count"] >= 1
        poll(lambda: requests.get(f"{urls[1]}/api/gpu/config", timeout=10
                                  ).json()["config"]["temp_throttle"] == 3,
             what="the other API to see the config change")  # within refresh_ms

        def critical_by_new_thresholds() -> list[dict]:
            found = requests.get(f"{urls[1]}/api/gpu/events", params={
                "kind": "state_change", "since_id": since}, timeout=10).json()["events"]
            # CRITICAL for a temperature below the default temp_throttle (85): only the new
            # thresholds make that a critical temperature.
            return [e for e in found if e["payload"]["to"] == "CRITICAL"
                    and e["payload"]["cause"] == "temperature"
                    and e["payload"]["temperature_celsius"] < 85]

        after = poll(critical_by_new_thresholds, what="a state_change after the config PUT")
        assert all(e["id"] > since for e in after)
    finally:
        stderrs = [stop(proc) for proc in reversed(procs)]
    for proc, stderr in zip(reversed(procs), stderrs, strict=True):
        assert proc.returncode == 0, stderr
    assert "simulated" in stderrs[-1].lower()

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = conn.execute(
            "SELECT kind, payload FROM events WHERE kind IN ('service_started', "
            "'service_stopped', 'monitoring_started', 'monitoring_stopped') ORDER BY id"
        ).fetchall()
    by_pid: dict[int, list[str]] = {}
    roles: dict[int, str] = {}
    for kind, payload in rows:
        doc = json.loads(payload)
        if kind.startswith("service_"):
            by_pid.setdefault(doc["pid"], []).append(kind)
            roles[doc["pid"]] = doc["role"]
    assert {proc.pid for proc in procs} == set(by_pid)
    assert all(kinds == ["service_started", "service_stopped"] for kinds in by_pid.values())
    assert roles == {sampler.pid: "sampler", apis[0].pid: "api", apis[1].pid: "api"}
    monitoring = [kind for kind, _ in rows if kind.startswith("monitoring_")]
    assert monitoring == ["monitoring_started", "monitoring_stopped"]


def test_api_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    result = subprocess.run(
        gpuhistory("api", "--db", str(tmp_path / "x.db"), "--host", "0.0.0.0"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "refusing to bind 0.0.0.0" in result.stderr


def test_sampler_has_no_http_options() -> None:
    result = subprocess.run(gpuhistory("sampler", "--port", "8321"), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "--port" in result.stderr


@pytest.mark.parametrize("role", ["serve", "sampler", "api"])
def test_an_unreachable_database_is_one_line_and_exit_1(role: str) -> None:
    """A process started while its database is down says so in one line (no traceback) and
    exits 1, so systemd's Restart=on-failure tries again; the password is not shown."""
    url = f"postgresql+psycopg://gpuhistory:s3cret-pw@127.0.0.1:{free_port()}/fleet"
    result = subprocess.run(gpuhistory(role, "--db", url, "--backend", "sim")
                            if role != "api" else gpuhistory(role, "--db", url),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "cannot open the database" in result.stderr
    assert "Traceback" not in result.stderr and "s3cret-pw" not in result.stderr
