"""The SQLite files vanishing or filling up under a running ``gpuhistory serve``.

Real ``serve`` subprocesses on real files: the WAL deleted, the database replaced by a
rename, the filesystem full (a small tmpfs). The service notices a lost file within a
tick, says ``degraded`` with the reason, refuses writes with 503 instead of acknowledging
them into a file nobody will read again, and after a restart every acknowledged lease is
there. Stopping on a full disk is clean: one error line per refused write, exit status 75,
no traceback.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from gpuhistory.storage.engine import make_engine, unavailable_reason, upgrade
from gpuhistory.storage.file_guard import FileGuard
from tests.test_serve import free_port, gpuhistory, wait_ready

pytestmark = pytest.mark.slow

INTERVAL = 0.1  # seconds between ticks: "within a tick" is measured in these
EXIT_UNSAVED = 75


@contextmanager
def serving(db: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``serve`` (sim backend, a tick every INTERVAL s) on ``db`` until the block ends;
    then SIGTERM, unless the block stopped it already."""
    port = free_port()
    proc = subprocess.Popen(
        gpuhistory("serve", "--db", str(db), "--port", str(port), "--backend", "sim",
                   "--interval", str(INTERVAL)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


def allocate(url: str, allocation_id: str) -> requests.Response:
    return requests.post(f"{url}/api/gpu/memory/allocate", json={
        "allocation_id": allocation_id, "memory_mb": 64, "ttl_seconds": 3600}, timeout=30)


def grant(url: str, prefix: str, count: int) -> dict[str, str]:
    """``count`` leases, each acknowledged (201): allocation id → lease token."""
    granted = {}
    for n in range(count):
        response = allocate(url, f"{prefix}-{n}")
        assert response.status_code == 201, response.text
        granted[f"{prefix}-{n}"] = response.json()["lease_token"]
    return granted


def health_when(url: str, ok: callable, timeout: float = 20) -> dict:
    """Poll /healthz (bounded) until ``ok(body)``; the body."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = requests.get(f"{url}/healthz", timeout=10).json()
        if ok(body):
            return body
        time.sleep(INTERVAL / 2)
    raise AssertionError(f"health never got there: {body}")


def assert_writes_refused(url: str, granted: dict[str, str], reason: str) -> None:
    """A grant, a release, a config change and a monitoring stop: each 503
    database_unavailable with ``reason``, Retry-After set."""
    allocation_id, token = next(iter(granted.items()))
    for response in (
        allocate(url, "refused"),
        requests.post(f"{url}/api/gpu/memory/deallocate", json={
            "allocation_id": allocation_id, "lease_token": token}, timeout=30),
        requests.put(f"{url}/api/gpu/config", json={"temp_optimal": 50}, timeout=30),
        requests.post(f"{url}/api/gpu/monitoring/stop", timeout=30),
    ):
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert (error["code"], error["details"]["reason"]) == ("database_unavailable", reason)
        assert response.headers["Retry-After"] == "1"


def leases_after_restart(db: Path) -> set[str]:
    """The active leases a fresh ``serve`` on ``db`` reports."""
    with serving(db) as (url, _):
        body = requests.get(f"{url}/api/gpu/memory/leases?limit=5000", timeout=30).json()
    return {x["allocation_id"] for x in body["leases"] if x["status"] == "active"}


def integrity_ok(db: Path) -> bool:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def lost_file(body: dict, what: str, how: str) -> bool:
    return body["status"] == "degraded" and any(
        what in r and how in r for r in body["reasons"])


def ticks_refused(body: dict) -> bool:
    storage = body.get("storage", {})
    return not storage.get("ok", True) and storage.get("reason") == "file_lost"


@pytest.mark.parametrize("ending", ["sigterm", "kill"])
def test_deleted_wal_was_reported_ok_and_lost_every_lease_now_degraded_and_503(
        tmp_path: Path, ending: str) -> None:
    """The ``-wal`` file deleted under a running serve: /healthz kept saying ok and the
    leases acknowledged afterwards were gone after a restart. Now the next tick's write is
    refused (ticks wait in memory), /healthz says degraded naming the WAL, every write is
    503 ``file_lost``, and after a restart every lease acknowledged before the deletion is
    there and the refused one is not — even when the process is then killed (``kill -9``),
    because the WAL's committed frames were checkpointed into the database file as soon as
    the loss was noticed."""
    db = tmp_path / "wal.db"
    with serving(db) as (url, proc):
        granted = grant(url, "before", 30)
        Path(f"{db}-wal").unlink()
        started = time.monotonic()
        body = health_when(url, ticks_refused)
        noticed_s = time.monotonic() - started
        assert lost_file(body, "WAL file", "was deleted"), body["reasons"]
        assert any("the database refuses writes (file_lost)" in r for r in body["reasons"])
        system = requests.get(f"{url}/api/system/status", timeout=30).json()["health"]
        assert system["status"] == "degraded" and any("WAL file" in r for r in system["reasons"])
        assert_writes_refused(url, granted, "file_lost")
        assert requests.get(f"{url}/api/gpu/status/all", timeout=30).status_code == 200
        health_when(url, lambda b: lost_file(b, "WAL file", "checkpointed"))
        if ending == "kill":
            proc.kill()
            proc.communicate(timeout=60)
        else:
            code, stderr = stop(proc)
            assert code == EXIT_UNSAVED and "Traceback" not in stderr, stderr
            assert "was deleted under the running service" in stderr
    assert noticed_s < 10, noticed_s  # (a tick is 0.1 s; the bound is for a loaded machine)
    assert leases_after_restart(db) == set(granted)
    assert integrity_ok(db)


def test_database_replaced_by_rename_is_noticed_and_nothing_goes_into_either_file(
        tmp_path: Path) -> None:
    """A copy of the database renamed over it (a restore, say): the running serve notices
    the new inode, says degraded naming the database file and refuses writes; after a
    restart on the replacement, the leases it held are all there, the refused grant is in
    neither file, and both files are intact."""
    db = tmp_path / "db.sqlite"
    copy = tmp_path / "restored.sqlite"
    with serving(db) as (url, proc):
        granted = grant(url, "before", 20)
        with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
            source.backup(target)  # a consistent copy, as a restore would bring
        old = db.with_suffix(".old")
        os.link(db, old)  # keep the replaced file to look at afterwards
        os.rename(copy, db)
        body = health_when(url, ticks_refused)
        assert lost_file(body, "database file", "was replaced by another file"), body
        assert_writes_refused(url, granted, "file_lost")
        code, stderr = stop(proc)
    assert code == EXIT_UNSAVED and "Traceback" not in stderr, stderr
    assert leases_after_restart(db) == set(granted)
    for path in (db, old):
        assert integrity_ok(path)
        with sqlite3.connect(path) as conn:
            ids = {r[0] for r in conn.execute("SELECT allocation_id FROM leases")}
        assert set(granted) <= ids and "refused" not in ids


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs of its own (root, or CAP_SYS_ADMIN, is needed to mount one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("mount is not installed")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Write zeros until the filesystem is full; the filler file."""
    filler = disk / "filler"
    with open(filler, "wb") as out:
        block = b"\0" * 65536
        for _ in itertools.count():
            try:
                out.write(block)
                out.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def test_full_disk_sigterm_exited_1_with_a_traceback_now_75_and_one_line_each(
        small_disk: Path) -> None:
    """serve on a filesystem that fills up: ticks wait, grants are 503 ``full``; SIGTERM
    used to end in exit status 1 and a traceback. Now each refused final write is one error
    line, the exit status is 75, no traceback; with space back, a restart has every lease
    acknowledged before the disk filled."""
    db = small_disk / "full.db"
    with serving(db) as (url, proc):
        granted = grant(url, "before", 10)
        filler = fill(small_disk)
        body = health_when(url, lambda b: b.get("storage", {}).get("reason") == "full")
        assert body["status"] == "degraded"
        refused = allocate(url, "refused")
        assert refused.status_code == 503 and \
            refused.json()["error"]["details"]["reason"] == "full"
        code, stderr = stop(proc)
    assert code == EXIT_UNSAVED, stderr
    assert "Traceback" not in stderr, stderr
    assert "could not record monitoring_stopped: the database refuses writes (full)" in stderr
    assert "refused the final writes" in stderr
    filler.unlink()
    assert leases_after_restart(db) == set(granted)
    assert integrity_ok(db)


def test_a_deleted_database_file_is_never_recreated_and_reads_go_on(tmp_path: Path) -> None:
    """In process: once the database file is deleted, a connection already open still
    reads, its writes are refused (rolled back, ``file_lost``), and no new connection is
    opened — one would create an empty database at the path."""
    db = tmp_path / "gone.db"
    engine = make_engine(db)
    upgrade(engine)
    guard = FileGuard.attach(engine)
    assert guard is not None and guard.check() is None
    try:
        with engine.connect() as kept:
            db.unlink()
            assert kept.execute(sa.text("SELECT count(*) FROM gpus")).scalar() == 0
            kept.commit()  # a transaction that wrote nothing commits as usual
            with pytest.raises(sa.exc.OperationalError) as refused:
                kept.execute(sa.text("INSERT INTO gpus (host, gpu_index, uuid, backend, "
                                     "first_seen_ms, last_seen_ms) VALUES ('h', 0, 'u', "
                                     "'sim', 0, 0)"))
                kept.commit()
            assert unavailable_reason(refused.value) == "file_lost"
            kept.rollback()
            assert kept.execute(sa.text("SELECT count(*) FROM gpus")).scalar() == 0
            kept.rollback()
            with pytest.raises(sa.exc.OperationalError) as no_new, engine.connect() as fresh:
                fresh.execute(sa.text("SELECT 1"))
            assert unavailable_reason(no_new.value) == "file_lost"
        assert not db.exists()
        assert "database file" in (guard.check() or "") and guard.database_lost
    finally:
        engine.dispose()
        guard.close()
