"""`gpuhistory serve` as a real subprocess: HTTP, SIGTERM, and what it left in the log."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import FLEET4

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpuhistory(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpuhistory.cli.main", *args]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 30) -> dict:
    """Poll /healthz until the server answers with a sample (bounded; not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read()}")
        try:
            body = requests.get(f"{url}/healthz", timeout=1).json()
            if body.get("last_sample", {}).get("timestamp"):
                return body
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise AssertionError("serve did not become ready")


def test_serve_samples_answers_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """serve (sim, 8 GPUs): /healthz and status answer; SIGTERM leaves a consistent log."""
    db = tmp_path / "serve.db"
    port = free_port()
    env = {**os.environ, "GPUHISTORY_INTERVAL": "0.2"}  # settings from the environment too
    proc = subprocess.Popen(
        gpuhistory("serve", "--db", str(db), "--port", str(port), "--backend", "sim",
                   "--trace", str(FLEET4), "--sim-gpus", "8"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_ready(url, proc)
        assert health["backend"]["name"] == "sim" and health["monitoring"] is True
        everything = requests.get(f"{url}/api/gpu/status/all", timeout=5).json()
        assert everything["count"] == 8
        assert {g["backend"] for g in everything["gpus"]} == {"sim"}
        one = requests.get(f"{url}/api/gpu/status", params={"gpu_id": 3}, timeout=5).json()
        assert one["gpu_id"] == 3 and one["metrics"]["temperature_celsius"] is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "simulated" in stderr.lower()

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        kinds = [k for (k,) in conn.execute("SELECT kind FROM events ORDER BY id")]
        assert kinds[0] == "service_started" and kinds[1] == "monitoring_started"
        assert kinds[-2:] == ["monitoring_stopped", "service_stopped"]
        per_gpu = conn.execute("SELECT count(*) FROM samples GROUP BY gpu_id").fetchall()
        assert len(per_gpu) == 8 and min(n for (n,) in per_gpu) >= 1
        # Every tick wrote all 8 GPUs in one transaction: equal counts per GPU.
        assert len({n for (n,) in per_gpu}) == 1
        assert conn.execute("SELECT count(*) FROM transitions").fetchone()[0] >= 8


def test_serve_refuses_a_public_bind(tmp_path: Path) -> None:
    """Binding a non-loopback address without API tokens is refused with a clear message."""
    result = subprocess.run(
        gpuhistory("serve", "--db", str(tmp_path / "x.db"), "--host", "0.0.0.0",
                   "--backend", "sim"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "refusing to bind 0.0.0.0" in result.stderr


def test_serve_restarts_on_the_same_log(tmp_path: Path) -> None:
    """A second serve on the same database continues it: no duplicate GPUs, still consistent."""
    db = tmp_path / "again.db"
    for _ in range(2):
        port = free_port()
        proc = subprocess.Popen(
            gpuhistory("serve", "--db", str(db), "--port", str(port), "--backend", "sim",
                       "--interval", "0.2"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
        assert proc.returncode == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM gpus").fetchone() == (4,)
        assert conn.execute(
            "SELECT count(*) FROM events WHERE kind='service_started'").fetchone() == (2,)
