"""PostgreSQL going away and coming back under a running API and sampler: every request
is a 503 that changes nothing, the sampler survives its failed ticks, and both recover on
their own. The database is made unreachable without stopping the shared server: new
connections are refused (ALLOW_CONNECTIONS false) and the open ones are terminated."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.storage.engine import make_engine, upgrade
from tests.conftest import App

pytestmark = pytest.mark.slow


class Outage:
    """Switches one database's connections off and on (as the server's superuser)."""

    def __init__(self, url: str) -> None:
        self.name = sa.make_url(url).database
        admin_url = sa.make_url(url).set(database="postgres")
        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT",
                                      poolclass=sa.pool.NullPool)

    def begin(self) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE {self.name} WITH ALLOW_CONNECTIONS false")
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = :d"), {"d": self.name})

    def end(self) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE {self.name} WITH ALLOW_CONNECTIONS true")

    def close(self) -> None:
        self.end()
        self.admin.dispose()


@pytest.fixture
def running(fresh_postgres_url: str) -> Iterator[tuple[App, Outage]]:
    engine = make_engine(fresh_postgres_url)
    upgrade(engine)
    app = App(engine, FakeClock())
    outage = Outage(fresh_postgres_url)
    try:
        yield app, outage
    finally:
        outage.close()
        app.close()
        engine.dispose()


def samples_of_gpu0(app: App) -> list[int]:
    with app.engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT s.ts_ms FROM samples s JOIN gpus g ON g.id = s.gpu_id "
            "WHERE g.gpu_index = 0 ORDER BY s.ts_ms")).scalars())


def test_while_postgresql_is_away_requests_are_503_and_everything_recovers(running) -> None:
    """While the database is away, the status is answered from the status projection
    until one interval has passed since it last read the log, then 503 like every request
    that must read; everything recovers when it is back."""
    app, outage = running
    app.tick(1, times=2)
    grant = {"allocation_id": "job", "memory_mb": 1024, "gpu_id": 0, "ttl_seconds": 600}
    outage.begin()
    try:
        held = requests.get(f"{app.url}/api/gpu/status/all", timeout=30)
        assert held.status_code == 200 and held.json()["count"] == 4  # within the interval
        app.clock.advance(app.sampler.interval)
        for method, path, body in (("get", "/api/gpu/status/all", None),
                                   ("get", "/api/gpu/metrics", None),
                                   ("post", "/api/gpu/memory/allocate", grant)):
            answer = requests.request(method, f"{app.url}{path}", json=body, timeout=30)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "database_unavailable"
        health = requests.get(f"{app.url}/healthz", timeout=30)
        assert health.status_code == 503 and health.json()["status"] == "down"
        app.clock.advance(1)
        app.sampler.safe_tick()  # fails, is recorded, never raises
        assert app.sampler.last_tick is not None and app.sampler.last_tick.error
    finally:
        outage.end()
    app.clock.advance(1)
    app.sampler.safe_tick()
    assert app.sampler.last_tick.error is None
    assert requests.get(f"{app.url}/healthz", timeout=30).status_code == 200
    granted = requests.post(f"{app.url}/api/gpu/memory/allocate", json=grant, timeout=30)
    assert granted.status_code == 201, granted.text  # the refused grant changed nothing
    status = requests.get(f"{app.url}/api/gpu/status/all", timeout=30).json()
    assert status["count"] == 4 and status["gpus"][0]["memory"]["leased_mb"] == 1024
    assert samples_of_gpu0(app)[-1] == app.clock.now_ms()


def test_ticks_taken_while_postgresql_is_away_are_kept_and_written_later(running) -> None:
    app, outage = running
    app.tick(1)
    before = samples_of_gpu0(app)
    outage.begin()
    try:
        for _ in range(3):
            app.clock.advance(1)
            app.sampler.safe_tick()
    finally:
        outage.end()
    app.clock.advance(1)
    app.sampler.safe_tick()
    assert len(samples_of_gpu0(app)) == len(before) + 4
