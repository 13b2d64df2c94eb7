"""``gpuhistory lease ...`` and ``gpuhistory status --url`` as real subprocesses against a
running server: what they print, and the exit statuses shell scripts branch on
(0 ok, 2 usage, 3 not found, 4 conflict, 5 forbidden, 6 unreachable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_client import API_TOKEN, RunningService, closed_port_url

pytestmark = pytest.mark.slow


@pytest.fixture
def served(migrated_db: Path) -> Iterator[RunningService]:
    running = RunningService(migrated_db)
    yield running
    running.close()


def gpuhistory(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI with a clean GPUHISTORY_* environment (plus ``env``)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GPUHISTORY_")}
    return subprocess.run([sys.executable, "-m", "gpuhistory.cli.main", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})})


def test_acquire_list_renew_release_round_trip(served: RunningService) -> None:
    """acquire prints "<id> <token>" for `read`; list shows it; renew and release use them;
    a second release is a conflict (4) with `error: <code>: <message>` on stderr."""
    url = served.url
    done = gpuhistory("lease", "acquire", "--url", url, "--memory-mb", "2048", "--gpu-id", "1",
                      "--ttl", "120", "--owner", "ci", "--id", "train-7")
    assert done.returncode == 0, done.stderr
    allocation_id, token = done.stdout.split()
    assert allocation_id == "train-7" and len(token) >= 32

    listed = gpuhistory("lease", "list", "--url", url, "--owner", "ci")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:5] == ["ALLOCATION", "ID", "GPU", "MIB", "OWNER"]
    assert row.split()[:5] == ["train-7", "1", "2048", "ci", "active"]
    as_json = json.loads(gpuhistory("lease", "list", "--url", url, "--gpu-id", "1",
                                    "--status", "active", "--json").stdout)
    assert as_json["count"] == 1 and as_json["leases"][0]["allocation_id"] == "train-7"

    renewed = gpuhistory("lease", "renew", "train-7", "--url", url, "--token", token,
                         "--ttl", "600")
    assert renewed.returncode == 0, renewed.stderr
    assert renewed.stdout.split()[0] == "train-7" and renewed.stdout.split()[1].endswith("Z")

    released = gpuhistory("lease", "release", "train-7", "--url", url, "--token", token)
    assert (released.returncode, released.stdout.strip()) == (0, "train-7 released")

    again = gpuhistory("lease", "release", "train-7", "--url", url, "--token", token)
    assert again.returncode == 4
    assert again.stderr.startswith("error: lease_not_active: ") and again.stdout == ""


def test_acquire_json_and_the_url_from_the_environment(served: RunningService) -> None:
    """--json prints the whole lease (token included); GPUHISTORY_URL replaces --url and
    the default id names the host and process."""
    done = gpuhistory("lease", "acquire", "--memory-mb", "1024", "--json",
                      env={"GPUHISTORY_URL": served.url})
    assert done.returncode == 0, done.stderr
    lease = json.loads(done.stdout)
    assert lease["memory_mb"] == 1024 and lease["status"] == "active" and lease["lease_token"]
    assert lease["allocation_id"].rsplit("-", 2)[1].isdigit()


def test_exit_status_3_when_the_lease_or_gpu_is_unknown(served: RunningService) -> None:
    """Renewing an unknown lease, or leasing on a GPU the host lacks: 404 → exit 3."""
    done = gpuhistory("lease", "renew", "no-such", "--url", served.url, "--token", "x")
    assert done.returncode == 3
    assert done.stderr.startswith("error: lease_not_found: ")
    done = gpuhistory("lease", "acquire", "--url", served.url, "--memory-mb", "1",
                      "--gpu-id", "7")
    assert done.returncode == 3 and "gpu_not_found" in done.stderr


def test_exit_status_4_over_capacity_and_duplicate(served: RunningService) -> None:
    """More than is leasable, or an id that is already held: 409 → exit 4."""
    done = gpuhistory("lease", "acquire", "--url", served.url, "--memory-mb", "10000000")
    assert done.returncode == 4
    assert done.stderr.startswith("error: over_capacity: ") and "available" in done.stderr
    assert gpuhistory("lease", "acquire", "--url", served.url, "--memory-mb", "512",
                      "--id", "dup").returncode == 0
    done = gpuhistory("lease", "acquire", "--url", served.url, "--memory-mb", "512",
                      "--id", "dup")
    assert done.returncode == 4 and "duplicate_allocation" in done.stderr


def test_exit_status_5_wrong_lease_token(served: RunningService) -> None:
    """Releasing with another token: 403 → exit 5, and the lease stays active."""
    allocation_id, _ = gpuhistory("lease", "acquire", "--url", served.url,
                                  "--memory-mb", "512").stdout.split()
    done = gpuhistory("lease", "release", allocation_id, "--url", served.url,
                      "--token", "not-the-token")
    assert done.returncode == 5
    assert done.stderr.startswith("error: lease_token_mismatch: ")
    active = json.loads(gpuhistory("lease", "list", "--url", served.url, "--status", "active",
                                   "--json").stdout)
    assert [x["allocation_id"] for x in active["leases"]] == [allocation_id]


def test_exit_status_5_without_the_servers_api_token(migrated_db: Path) -> None:
    """A server with an API token: acquire without it → 401 → exit 5; with it (from
    GPUHISTORY_TOKEN) → 0, and --api-token alone may release (an operator's override)."""
    running = RunningService(migrated_db, api_token=API_TOKEN)
    try:
        done = gpuhistory("lease", "acquire", "--url", running.url, "--memory-mb", "512")
        assert done.returncode == 5 and done.stderr.startswith("error: unauthorized: ")
        done = gpuhistory("lease", "acquire", "--url", running.url, "--memory-mb", "512",
                          "--id", "ops", env={"GPUHISTORY_TOKEN": API_TOKEN})
        assert done.returncode == 0, done.stderr
        done = gpuhistory("lease", "release", "ops", "--url", running.url,
                          "--api-token", API_TOKEN)
        assert (done.returncode, done.stdout.strip()) == (0, "ops released")
    finally:
        running.close()


def test_exit_status_6_when_the_server_is_unreachable() -> None:
    """Nothing listening at --url: exit 6 with `error: unreachable: ...` (lease and status)."""
    url = closed_port_url()
    done = gpuhistory("lease", "list", "--url", url)
    assert done.returncode == 6 and done.stderr.startswith("error: unreachable: ")
    done = gpuhistory("status", "--url", url)
    assert done.returncode == 6 and done.stderr.startswith("error: unreachable: ")


def test_exit_status_2_for_usage_errors() -> None:
    """Missing --memory-mb, or renew/release without any token: click's usage error, exit 2."""
    url = closed_port_url()
    assert gpuhistory("lease", "acquire", "--url", url).returncode == 2
    done = gpuhistory("lease", "renew", "job", "--url", url)
    assert done.returncode == 2 and "--token" in done.stderr
    assert gpuhistory("lease", "release", "job", "--url", url).returncode == 2
    assert gpuhistory("lease", "list", "--url", "not-a-url").returncode == 2


def test_status_url_asks_the_server(served: RunningService, tmp_path: Path) -> None:
    """status --url reads the server's API (not the database): the table, --json, one GPU,
    and exit 3 for a GPU the server does not have."""
    empty_db = str(tmp_path / "unused.db")
    table = gpuhistory("status", "--url", served.url, "--db", empty_db)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["GPU", "NAME", "STATE"] and len(lines) == 5
    assert all(line.rstrip().endswith("sim") for line in lines[1:])
    assert not Path(empty_db).exists()

    doc = json.loads(gpuhistory("status", "--json", "--gpu-id", "2",
                                env={"GPUHISTORY_URL": served.url}).stdout)
    assert doc["count"] == 1 and doc["host"] == "testhost" and doc["gpus"][0]["gpu_id"] == 2

    missing = gpuhistory("status", "--url", served.url, "--gpu-id", "9")
    assert missing.returncode == 3 and missing.stderr.startswith("error: gpu_not_found: ")
