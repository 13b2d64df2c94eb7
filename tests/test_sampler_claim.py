"""One sampler per host per database: a second sampling process is refused, GPUManager
attaches read-only, and a crashed or silent sampler's claim is taken over."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.manager import GPUManager
from gpuhistory.sampling.claim import STALE_AFTER_MS, SamplerBusy, SamplerClaim
from gpuhistory.service import ServeSettings, Service
from gpuhistory.storage import claims
from tests.conftest import FLEET4

pytestmark = pytest.mark.postgres

HOST = "claimhost"


def sample_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM samples")).scalar_one()


@pytest.fixture
def serving(db_url: str, engine: sa.Engine):
    """A sampling service (role sampler) holding the claim of HOST, on wall-clock time like
    any other process sharing the database. Its interval is an hour: it ticks once as it
    starts and then only when a test says so, so the samples a test counts are its own."""
    service = Service(ServeSettings(db=db_url, backend="sim", trace=str(FLEET4),
                                    host_name=HOST, interval=3600), role="sampler")
    service.start_background()
    yield service
    service.shutdown()


def test_a_second_sampler_of_the_same_host_is_refused(serving: Service, db_url: str) -> None:
    """Another service sampling the same host into the same database cannot start."""
    assert serving.claim.held
    second = Service(ServeSettings(db=db_url, backend="sim", trace=str(FLEET4),
                                   host_name=HOST), role="sampler")
    try:
        with pytest.raises(SamplerBusy, match="one sampler per host"):
            second.start_background()
        assert not second.sampler.running
    finally:
        second.shutdown()
    other = Service(ServeSettings(db=db_url, backend="sim", trace=str(FLEET4),
                                  host_name="elsewhere"), clock=FakeClock(), role="sampler")
    try:
        other.start_background()  # another host in the same database is fine
        assert other.claim.held
    finally:
        other.shutdown()


def test_the_sampler_command_exits_non_zero_with_a_clear_error(serving: Service,
                                                               db_url: str) -> None:
    """`gpuhistory sampler` for a claimed host prints why and exits 1 (a real process)."""
    done = subprocess.run(
        [sys.executable, "-m", "gpuhistory.cli.main", "sampler", "--db", db_url,
         "--host-name", HOST, "--backend", "sim", "--interval", "1"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "already sampled into this database" in done.stderr
    assert "Traceback" not in done.stderr


def test_gpumanager_attaches_read_only_and_writes_no_samples(serving: Service, db_url: str,
                                                             engine: sa.Engine) -> None:
    """Beside a running sampler, GPUManager reads the log (status, trend) but never ticks."""
    serving.sampler.tick()
    before = sample_count(engine)
    manager = GPUManager(db=db_url, backend="sim", trace=FLEET4, host_name=HOST)
    try:
        assert manager.read_only
        status = manager.get_gpu_status(0)
        assert status["uuid"].startswith("GPU-sim") and status["metrics"] is not None
        manager.get_temperature_trend(gpu_id=0)
        assert manager.start_monitoring() is False
        assert sample_count(engine) == before
    finally:
        manager.close()
    assert serving.claim.held  # closing the read-only manager gave back nothing


def test_gpumanager_samples_when_no_service_does(db_url: str, engine: sa.Engine) -> None:
    """Alone, GPUManager holds the claim and samples; once closed, the claim is free."""
    manager = GPUManager(db=db_url, backend="sim", trace=FLEET4, host_name=HOST,
                         clock=FakeClock())
    try:
        assert not manager.read_only
        manager.get_gpu_status(0)
        assert sample_count(engine) > 0
    finally:
        manager.close()
    assert claims.holder(engine, HOST) is None


def test_a_silent_samplers_claim_is_taken_over_and_it_stops(engine: sa.Engine) -> None:
    """No heartbeat for STALE_AFTER_MS: another process takes the claim; the old one
    learns it at its next heartbeat and stops sampling."""
    clock = FakeClock()
    first = SamplerClaim(engine, HOST, clock, "serve")
    first.acquire()
    lost: list[bool] = []
    first.on_lost = lambda: lost.append(True)
    second = SamplerClaim(engine, HOST, clock, "sampler")
    clock.advance(STALE_AFTER_MS / 1000 - 1)
    with pytest.raises(SamplerBusy):
        second.acquire()
    clock.advance(2)
    second.acquire()
    assert first.renew() is False and lost == [True]
    assert claims.holder(engine, HOST).owner == second.owner


def test_a_crashed_samplers_claim_on_this_machine_is_taken_at_once(engine: sa.Engine,
                                                                   tmp_path: Path) -> None:
    """A claim whose process is gone from this machine does not wait to go stale (a
    restart after kill -9 samples at once)."""
    clock = FakeClock()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = SamplerClaim(engine, HOST, clock, "serve")
    row = dead._row()
    claims.take(engine, type(row)(**{**{f: getattr(row, f) for f in row.__slots__},
                                     "pid": int(gone.stdout)}), dead_pid=None)
    SamplerClaim(engine, HOST, clock, "serve").acquire()
