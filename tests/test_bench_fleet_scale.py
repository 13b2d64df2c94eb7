"""bench/fleet_scale.py runs end to end at a tiny size on PostgreSQL (a smoke test: nothing
here is timed or judged): 2 processes x 2 hosts x 2 simulated GPUs for a few seconds, each
host its own sampler in the database; once with direct connections, once through a
pgbouncer in transaction mode that the bench starts. Skips without PostgreSQL (and the
PgBouncer run without pgbouncer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bench.pgbouncer import binary as pgbouncer_binary

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = ("--hosts", "4", "--gpus", "2", "--processes", "2", "--seconds", "4",
        "--api-every", "1")


def _bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.fleet_scale", *args], cwd=REPO,
                          text=True, capture_output=True, timeout=timeout, check=False)


def _databases(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        names = {n for (n,) in conn.execute(sa.text(
            "SELECT datname FROM pg_database WHERE datname LIKE 'gpuhistory_bench_fleet_scale%'"))}
    engine.dispose()
    return names


def _run(url: str, tmp_path: Path, *extra: str) -> dict[str, Any]:
    before = _databases(url)
    out = tmp_path / "result.json"
    result = _bench(*TINY, "--pg-url", url, "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0].split()[:3] == ["benchmark", "figure", "value"]
    assert _databases(url) == before  # its database is dropped at the end
    return json.loads(out.read_text())


def _figure(data: dict[str, Any], name: str) -> dict[str, Any]:
    found = [f for f in data["figures"] if f["name"].startswith(name)]
    assert len(found) == 1, [f["name"] for f in data["figures"]]
    return found[0]


def _check_common(data: dict[str, Any]) -> None:
    assert data["machine"]["postgresql"].startswith("PostgreSQL")
    assert data["lost"]["gpus"] == 8  # 4 hosts x 2 GPUs, every one stored under its host
    assert data["sampler_claims"] == 4  # each host its own sampler, holding its claim
    assert data["lost"]["rows"] > 0 and data["lost"]["silent_gpus"] == 0
    assert _figure(data, "sample rows written per second")["value"] > 0
    commit = _figure(data, "tick commit")
    assert commit["n"] > 0 and commit["p50"] > 0
    assert _figure(data, "disk per GPU-day")["value"] > 0
    for path in ("status/all?host=*", "/api/fleet/hosts (", "/api/fleet/hosts?gpus=true"):
        asked = [f for f in data["figures"] if path in f["name"]]
        assert len(asked) == 1 and asked[0]["n"] > 0, path
    assert set(data["maintenance"]) == {"incidents", "rollups", "retention"}
    for job in data["maintenance"].values():
        assert job["most_runs_in_a_period"] <= 1
    assert data["connections"]["max_connections"] > 0
    assert sum(data["workers"]["threads"].values()) > 0
    assert data["samples"]["rows"] >= data["lost"]["rows"]


def test_help() -> None:
    result = _bench("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    for option in ("--hosts", "--processes", "--seconds", "--pgbouncer", "--pool-size"):
        assert option in result.stdout


def test_bad_sizes_are_usage_errors() -> None:
    for args in (("--hosts", "0"), ("--seconds", "0"), ("--processes", "-1")):
        result = _bench(*args, timeout=60)
        assert result.returncode == 2 and "must be" in result.stderr, args


def test_a_direct_run_the_server_cannot_connect_is_refused(fresh_postgres_url: str) -> None:
    """More hosts than max_connections, without --pgbouncer: refused before it makes
    anything, naming the way out."""
    before = _databases(fresh_postgres_url)
    result = _bench("--hosts", "100000", "--seconds", "1", "--pg-url", fresh_postgres_url,
                    timeout=60)
    assert result.returncode != 0
    assert "max_connections" in result.stderr and "--pgbouncer" in result.stderr
    assert _databases(fresh_postgres_url) == before


def test_tiny_fleet_direct(fresh_postgres_url: str, tmp_path: Path) -> None:
    data = _run(fresh_postgres_url, tmp_path)
    _check_common(data)
    assert data["settings"]["pgbouncer"] is False
    # One connection per sampler (4) plus the api's pool, seen by pg_stat_activity.
    assert data["connections"]["peak"] >= 4


def test_tiny_fleet_through_pgbouncer(fresh_postgres_url: str, tmp_path: Path) -> None:
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (Debian package pgbouncer)")
    data = _run(fresh_postgres_url, tmp_path, "--pgbouncer", "--pool-size", "2")
    _check_common(data)
    assert data["settings"]["pgbouncer"] is True
    # Four samplers and the api share PgBouncer's two server connections.
    assert 1 <= data["connections"]["peak"] <= 2
