"""Behind PgBouncer in transaction pooling mode: the sampler claim, the fleet maintenance
claims, a lease's grant/renew/release and sampler ticks all work through Debian's
``pgbouncer`` started on a free loopback port in front of the test PostgreSQL database,
with fewer server connections than clients (each transaction may land on another one).

psycopg 3 prepares a statement on the server after it ran five times on a connection; the
installed PgBouncer (1.18) cannot route those, so the URL carries
``prepare_threshold=none`` (gpuhistory/storage/engine.py) — the last test shows what
happens without it.

Skips when pgbouncer is not installed, unless GPUHISTORY_REQUIRE_PGBOUNCER=1 (CI), which
makes a missing pgbouncer a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from gpuhistory.cli.main import cli
from gpuhistory.clock import FakeClock
from gpuhistory.service import ServeSettings, Service
from gpuhistory.storage import maintenance_runs
from gpuhistory.storage.engine import DatabaseUrlError, _driver_options, make_engine
from tests.conftest import FLEET4, PostgresDatabase
from tests.test_serve import free_port

pytestmark = pytest.mark.postgres

REQUIRE_ENV = "GPUHISTORY_REQUIRE_PGBOUNCER"
SERVER_CONNECTIONS = 2  # PgBouncer's pool per database and user: fewer than the clients


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer"
                                          if os.access("/usr/sbin/pgbouncer", os.X_OK) else None)
    if found is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"pgbouncer is not installed and {REQUIRE_ENV}=1")
        pytest.skip("pgbouncer is not installed (Debian package pgbouncer)")
    return found


@dataclass
class Bouncer:
    port: int
    database: str

    def url(self, **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in query.items())
        return (f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"
                + (f"?{params}" if params else ""))


def wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {proc.communicate()[1]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)  # a process starting, not a TTL
    raise RuntimeError("pgbouncer did not start listening")


@pytest.fixture
def bouncer(postgres_server: PostgresDatabase, tmp_path: Path) -> Iterator[Bouncer]:
    """PgBouncer in transaction mode before the (emptied) test database."""
    binary = pgbouncer_binary()
    postgres_server.empty()
    target = sa.make_url(postgres_server.url)
    port = free_port()
    (tmp_path / "userlist.txt").write_text('"postgres" ""\n')
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(f"""[databases]
gh = host={target.host or '127.0.0.1'} port={target.port or 5432} dbname={target.database} \
user={target.username or 'postgres'} pool_size={SERVER_CONNECTIONS}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {tmp_path / 'userlist.txt'}
pool_mode = transaction
max_client_conn = 200
server_reset_query =
query_wait_timeout = 10
ignore_startup_parameters = extra_float_digits,options
""")
    command = [binary, str(ini)]
    if os.geteuid() == 0:  # it refuses to run as root
        command[1:1] = ["-u", "nobody"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, proc)
        yield Bouncer(port, "gh")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def backend_pids(engine: sa.Engine, times: int) -> set[int]:
    pids = set()
    for _ in range(times):
        with engine.connect() as conn:
            pids.add(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
    return pids


def test_a_fleet_of_samplers_works_through_transaction_pooling(bouncer: Bouncer,
                                                               postgres_server) -> None:
    """Three samplers (engines of their own) through PgBouncer with two server connections:
    claims taken, ticks written, each maintenance job claimed once, a lease granted,
    renewed and released — every transaction on whichever server connection is free."""
    url = bouncer.url(prepare_threshold="none")
    clock = FakeClock()
    services = [Service(ServeSettings(db=url, backend="sim", trace=str(FLEET4), sim_gpus=2,
                                      host_name=f"node-{i}", interval=1.0),
                        clock=clock, role="sampler") for i in range(3)]
    direct = make_engine(postgres_server.url)
    try:
        for service in services:
            service.claim.acquire()
            service.schedule_jobs()
            assert service.engine.pool.size() == 1  # type: ignore[attr-defined]
        for _ in range(12):  # past psycopg's default prepare threshold of 5 executions
            clock.advance(1)
            for service in services:
                service.sampler.tick()
                assert service.claim.renew()
                for job in service.maintenance_jobs:
                    service.maintenance.fire(job)
        lease, token = services[1].leases.grant("job-42", 1024, gpu_index=1, ttl_seconds=60)
        assert (lease.host, lease.gpu_id) == ("node-1", 1)
        services[1].leases.renew("job-42", token, ttl_seconds=120)
        services[1].leases.release("job-42", token)
        for service in services:
            service.leases.reap()
        with direct.connect() as conn:
            per_host = dict(conn.execute(sa.text(
                "SELECT g.host, count(DISTINCT s.ts_ms) FROM samples s "
                "JOIN gpus g ON g.id = s.gpu_id GROUP BY g.host")).all())
            claims = conn.execute(sa.text("SELECT count(*) FROM sampler_claims")).scalar_one()
            kinds = conn.execute(sa.text(
                "SELECT e.kind FROM events e WHERE e.kind LIKE 'lease%' ORDER BY e.id"
            )).scalars().all()
        assert per_host == {f"node-{i}": 12 for i in range(3)}
        assert claims == 3
        assert kinds == ["lease_granted", "lease_renewed", "lease_released"]
        runs = maintenance_runs.rows(direct)
        assert {name: row.runs for name, row in runs.items()} == {
            "incidents": 2, "retention": 1, "rollups": 1}  # 12 s: two 10 s periods, one 30 s
        assert all(row.last_error is None for row in runs.values())
        assert sum(sum(s.maintenance.ran.values()) for s in services) == 4
        # Transaction pooling indeed: three clients, each keeping its connection to the
        # pooler open, served by at most two server connections (in session mode each
        # client would hold a server of its own, and the third would wait).
        pids = set().union(*(backend_pids(s.engine, 5) for s in services))
        assert len(pids) <= SERVER_CONNECTIONS
        assert all(s.engine.pool.checkedin() == 1 for s in services)  # type: ignore[attr-defined]
    finally:
        for service in services:
            service.shutdown()
        direct.dispose()


def test_without_the_url_setting_prepared_statements_break_behind_the_pooler(
        bouncer: Bouncer, caplog: pytest.LogCaptureFixture) -> None:
    """What ``prepare_threshold=none`` prevents: once psycopg prepares the tick's
    statements, two samplers' prepared statements collide on the shared server
    connections, and ticks fail."""
    clock = FakeClock()
    services = [Service(ServeSettings(db=bouncer.url(), backend="sim", trace=str(FLEET4),
                                      sim_gpus=2, host_name=f"node-{i}", interval=1.0),
                        clock=clock, role="sampler") for i in range(3)]
    try:
        for _ in range(12):
            clock.advance(1)
            for service in services:
                service.sampler.tick()
    finally:
        for service in services:
            service.shutdown()
    assert "prepared statement" in caplog.text


# -- the URL setting -----------------------------------------------------------------------
def test_prepare_threshold_is_taken_out_of_the_url_and_given_to_psycopg() -> None:
    url, options = _driver_options(
        "postgresql+psycopg://u:secret@db:6432/gh?prepare_threshold=none&application_name=a")
    assert url == "postgresql+psycopg://u:secret@db:6432/gh?application_name=a"
    assert options == {"prepare_threshold": None}
    assert _driver_options("postgresql+psycopg://db/gh?prepare_threshold=10")[1] == {
        "prepare_threshold": 10}
    assert _driver_options("postgresql+psycopg://db/gh") == ("postgresql+psycopg://db/gh", {})


@pytest.mark.parametrize("url", ["postgresql+psycopg://db/gh?prepare_threshold=sometimes",
                                 "sqlite:///x.db?prepare_threshold=none"])
def test_a_bad_prepare_threshold_is_a_usage_error(url: str, tmp_path: Path) -> None:
    with pytest.raises(DatabaseUrlError):
        make_engine(url)
    result = CliRunner().invoke(cli, ["sampler", "--db", url, "--backend", "sim"])
    assert result.exit_code == 2 and "--db: prepare_threshold" in result.output
