"""Leases across real `serve` processes: kill -9 and restart, and two servers on one file."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.test_serve import free_port, gpuhistory, wait_ready

pytestmark = pytest.mark.slow


def start(db: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        gpuhistory("serve", "--db", str(db), "--port", str(port), "--backend", "sim",
                   "--interval", "0.5", *extra),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_lease_survives_kill_9_with_the_same_expiry(tmp_path: Path) -> None:
    """Granted, server SIGKILLed, restarted: still active, same expiry; a short one expired."""
    db = tmp_path / "leases.db"
    proc, url = start(db)
    try:
        long = requests.post(f"{url}/api/gpu/memory/allocate", json={
            "allocation_id": "train-42", "memory_mb": 20_480, "ttl_seconds": 3600,
            "owner": "alice"}, timeout=10).json()
        short = requests.post(f"{url}/api/gpu/memory/allocate", json={
            "allocation_id": "blip", "memory_mb": 512, "ttl_seconds": 1}, timeout=10).json()
        assert long["status"] == short["status"] == "active"
    finally:
        proc.kill()  # SIGKILL: no clean shutdown
        proc.communicate(timeout=30)
    proc, url = start(db)
    try:
        deadline = time.monotonic() + 10  # until the 1 s lease's expiry has passed, bounded
        while time.monotonic() < deadline:
            leases = {x["allocation_id"]: x for x in requests.get(
                f"{url}/api/gpu/memory/leases", timeout=10).json()["leases"]}
            if leases["blip"]["status"] != "active":
                break
            time.sleep(0.05)
        assert leases["train-42"]["status"] == "active"
        assert leases["train-42"]["expires_at"] == long["expires_at"]
        assert leases["blip"]["status"] == "expired"
        assert requests.get(f"{url}/api/gpu/memory/available", timeout=10
                            ).json()["leased_mb"] == 20_480
        released = requests.post(f"{url}/api/gpu/memory/deallocate", json={
            "allocation_id": "train-42", "lease_token": long["lease_token"]}, timeout=10)
        assert released.status_code == 200  # the token still works after the restart
    finally:
        stop(proc)


def test_two_servers_on_one_database_never_oversubscribe(tmp_path: Path) -> None:
    """A serve and an api process on one file (one sampler per host: a second serve of
    the host is refused), 16 clients each asking 10 GiB of each: 7 grants in all."""
    db = tmp_path / "shared.db"
    first, url1 = start(db)
    port = free_port()
    second = subprocess.Popen(
        gpuhistory("api", "--db", str(db), "--port", str(port), "--host-name", _hostname()),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url2 = f"http://127.0.0.1:{port}"
    wait_ready(url2, second)
    codes: list[int] = []
    lock = threading.Lock()

    def grab(url: str, i: int) -> None:
        code = requests.post(f"{url}/api/gpu/memory/allocate", json={
            "allocation_id": f"job-{i}", "memory_mb": 10_240}, timeout=30).status_code
        with lock:
            codes.append(code)

    try:
        threads = [threading.Thread(target=grab, args=(url1 if i % 2 else url2, i))
                   for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes.count(201) == 7 and codes.count(409) == 25
        for url in (url1, url2):
            assert requests.get(f"{url}/api/gpu/memory/available", timeout=10
                                ).json()["leased_mb"] == 7 * 10_240
    finally:
        stop(first)
        stop(second)


def test_monitoring_stop_is_honoured_after_a_restart(tmp_path: Path) -> None:
    """POST monitoring/stop, restart: sampling stays stopped until started again."""
    db = tmp_path / "mon.db"
    proc, url = start(db)
    try:
        assert requests.post(f"{url}/api/gpu/monitoring/stop", timeout=10
                             ).json()["monitoring"] is False
    finally:
        stop(proc)
    port = free_port()
    proc = subprocess.Popen(gpuhistory("serve", "--db", str(db), "--port", str(port),
                                       "--backend", "sim"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_ready(url, proc)
        assert health["monitoring"] is False
        assert requests.post(f"{url}/api/gpu/monitoring/start", timeout=10
                             ).json()["monitoring"] is True
    finally:
        stop(proc)


def _hostname() -> str:
    from gpuhistory.context import machine_name

    return machine_name()
