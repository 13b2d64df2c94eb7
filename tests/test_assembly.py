"""``assembly.build``: each role gets exactly the parts it runs, wired alike, none started.

The roles' differences that matter in production are checked here on the bundle itself:
the sampler's one-connection pool, which process name its claim carries, that the ``api``
role never imports the NVML backend and the ``sampler`` role never imports Flask.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gpuhistory.assembly import ROLES, SAMPLER_POOL_SIZE, ServeSettings, build
from gpuhistory.clock import FakeClock
from gpuhistory.sampling.sim import SimBackend
from tests.conftest import FLEET4

# The parts each role holds; every other part of ``Parts`` is None (or empty).
OPTIONAL = ("files", "store", "leases", "callbacks", "backend", "pipeline", "sampler", "claim",
            "scheduler", "rollups", "incidents", "retention", "maintenance", "alerts",
            "context", "app")
SCHEDULED = ("backend", "pipeline", "sampler", "claim", "scheduler", "rollups", "incidents",
             "retention", "maintenance", "alerts")
EXPECTED = {
    "both": {"files", "store", "leases", *SCHEDULED, "context", "app"},
    "sampler": {"files", "store", "leases", *SCHEDULED},
    "api": {"files", "store", "leases", "context", "app"},
    "python": {"store", "leases", "callbacks", "backend", "pipeline", "sampler", "claim"},
    "reader": set(),
}


def _settings(db_path: Path, **kwargs: Any) -> ServeSettings:
    return ServeSettings(db=str(db_path), backend="sim", trace=str(FLEET4),
                         host_name="testhost", **kwargs)


@pytest.mark.parametrize("role", ROLES)
def test_each_role_holds_exactly_its_parts(role: str, db_path: Path, clock: FakeClock) -> None:
    """A role's bundle has the parts it runs and none of the others'."""
    parts = build(_settings(db_path), role, clock=clock)
    try:
        held = {name for name in OPTIONAL if getattr(parts, name) is not None}
        assert held == EXPECTED[role]
        assert bool(parts.maintenance_jobs) == (role in ("both", "sampler"))
        assert parts.engine is not None and parts.config is not None
        if parts.context is not None:
            assert parts.context.sampler is parts.sampler  # api: None, both: the sampler
            assert parts.context.leases is parts.leases
            assert parts.context.files is parts.files
    finally:
        parts.engine.dispose()


def test_build_starts_nothing(db_path: Path, clock: FakeClock) -> None:
    """``both`` built: no thread, the scheduler stopped, no claim taken, nothing logged."""
    threads = threading.active_count()
    parts = build(_settings(db_path), "both", clock=clock)
    try:
        assert threading.active_count() == threads
        assert parts.scheduler is not None and not parts.scheduler.running
        assert parts.claim is not None and not parts.claim.held
        assert parts.sampler is not None and not parts.sampler.running
        with parts.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM sampler_claims")).scalar() == 0
            assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar() == 0
    finally:
        parts.engine.dispose()


@pytest.mark.parametrize(("role", "pool_size", "expected"), [
    ("sampler", None, SAMPLER_POOL_SIZE), ("sampler", 3, 3), ("both", 2, 2), ("api", 4, 4),
])
def test_pool_size_per_role(role: str, pool_size: int | None, expected: int, db_path: Path,
                            clock: FakeClock) -> None:
    """The sampler keeps one connection unless --db-pool-size says otherwise, with no
    overflow; the others keep what --db-pool-size says."""
    parts = build(_settings(db_path, db_pool_size=pool_size), role, clock=clock)
    try:
        pool = parts.engine.pool
        assert isinstance(pool, sa.pool.QueuePool)
        assert pool.size() == expected and pool._max_overflow == 0
    finally:
        parts.engine.dispose()


def test_serve_keeps_the_default_pool(db_path: Path, clock: FakeClock) -> None:
    """Without --db-pool-size, serve and api keep the engine's default pool (not 1)."""
    parts = build(_settings(db_path), "both", clock=clock)
    try:
        pool = parts.engine.pool
        assert isinstance(pool, sa.pool.QueuePool) and pool.size() > SAMPLER_POOL_SIZE
    finally:
        parts.engine.dispose()


@pytest.mark.parametrize(("role", "process"), [("both", "serve"), ("sampler", "sampler"),
                                               ("python", "python")])
def test_claim_names_the_process(role: str, process: str, db_path: Path,
                                 clock: FakeClock) -> None:
    """The sampler claim says which kind of process samples the host (SamplerBusy shows
    it); the service's roles write ticks in the background, GPUManager in the caller."""
    parts = build(_settings(db_path), role, clock=clock)
    try:
        assert parts.claim is not None and parts.claim.process == process
        assert parts.sampler is not None
        assert parts.sampler.background_writes == (role != "python")
    finally:
        parts.engine.dispose()


def test_injected_backend_engine_and_clock_are_used(engine: sa.Engine,
                                                    clock: FakeClock) -> None:
    """Tests hand in their engine, clock and backend; ``scheduled=False`` leaves out the
    scheduler, its jobs and the claim, and the sampler writes in the caller."""
    backend = SimBackend(clock, trace=FLEET4)
    parts = build(ServeSettings(host_name="testhost"), "both", clock=clock, engine=engine,
                  backend=backend, scheduled=False)
    assert parts.engine is engine and parts.clock is clock and parts.backend is backend
    assert parts.scheduler is None and parts.claim is None and not parts.maintenance_jobs
    assert parts.sampler is not None and not parts.sampler.background_writes
    assert parts.app is not None and parts.context is not None


def test_unknown_role_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown role 'web'"):
        build(_settings(db_path), "web")
    assert not db_path.exists()  # refused before the database was opened


PROBE = """
import json, os, sys
import psutil
from gpuhistory.cli.main import cli  # what `gpuhistory ROLE` imports
from gpuhistory.service import ServeSettings, Service
service = Service(ServeSettings(db=sys.argv[2], backend="sim", host_name="probe"),
                  role=sys.argv[1])
watched = ("flask", "flask_openapi3", "gpuhistory.api.app", "gpuhistory.sampling.nvml",
           "pynvml", "gpuhistory.sampling.sampler")
print(json.dumps({"modules": [m for m in watched if m in sys.modules],
                  "rss_mib": psutil.Process().memory_info().rss / 2**20,
                  "load": os.getloadavg()[0]}))
service.shutdown()
"""


def _probe(role: str, tmp_path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, role, str(tmp_path / f"{role}.db")],
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_sampler_role_never_imports_flask(tmp_path: Path) -> None:
    """``gpuhistory sampler`` builds no app, so Flask is never loaded (it costs the
    process ~15 MiB of RSS); it does load the sampler."""
    found = _probe("sampler", tmp_path)
    assert "flask" not in found["modules"] and "gpuhistory.api.app" not in found["modules"]
    assert "gpuhistory.sampling.sampler" in found["modules"]
    print(f"sampler role RSS {found['rss_mib']:.0f} MiB (load average {found['load']:.1f})")


def test_api_role_never_imports_nvml(tmp_path: Path) -> None:
    """``gpuhistory api`` has no backend: neither the NVML backend module nor pynvml is
    loaded; Flask is."""
    found = _probe("api", tmp_path)
    assert "gpuhistory.sampling.nvml" not in found["modules"]
    assert "pynvml" not in found["modules"]
    assert "flask" in found["modules"]
