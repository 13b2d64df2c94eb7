"""Shared fixtures: every test gets its own SQLite file, migrated by Alembic (never create_all)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.storage.engine import make_engine, upgrade
from gpuhistory.storage.log import LogStore

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO / "gpuhistory" / "data" / "traces"
H100_BURN = TRACES / "h100_burn.csv"
FLEET4 = TRACES / "fleet4_derived.csv"


@pytest.fixture
def pg_engine() -> Iterator[sa.Engine]:
    """A fresh PostgreSQL database, migrated, on the server GPUHISTORY_TEST_POSTGRES names
    (a SQLAlchemy URL of any database there, with the right to create databases); dropped
    afterwards. Skips the test when the variable is not set."""
    url = os.environ.get("GPUHISTORY_TEST_POSTGRES")
    if not url:
        pytest.skip("set GPUHISTORY_TEST_POSTGRES to a PostgreSQL URL to run this")
    name = f"gpuhistory_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine = make_engine(sa.make_url(url).set(database=name).render_as_string(False))
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name}")
        admin.dispose()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gpuhistory.db"


@pytest.fixture
def engine(db_path: Path) -> Iterator[sa.Engine]:
    """A real SQLite file brought to the latest migration."""
    eng = make_engine(db_path)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> LogStore:
    return LogStore(engine, host="testhost")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class LiveServer:
    """A real HTTP server (waitress) running the app in a thread, on a free port."""

    def __init__(self, app) -> None:
        import threading

        from waitress.server import create_server

        self.server = create_server(app, host="127.0.0.1", port=0, threads=4)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        from gpuhistory.service import stop_waitress

        stop_waitress(self.server)
        self.thread.join(5)


@pytest.fixture
def live_api(engine: sa.Engine, clock: FakeClock):
    """Factory: start the app over real HTTP with a given sampler (or none)."""
    from gpuhistory.api.app import create_app
    from gpuhistory.context import ServiceContext

    servers: list[LiveServer] = []

    def start(sampler=None, host: str = "testhost") -> LiveServer:
        context = ServiceContext(engine=engine, host=host, clock=clock, sampler=sampler)
        server = LiveServer(create_app(context))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


class App:
    """The whole API over real HTTP on a migrated SQLite file, with a fake clock.

    The sim sampler replays the 4-GPU fleet trace; ``tick(seconds)`` advances the clock
    and samples, so tests move through the trace without sleeping.
    """

    def __init__(self, engine: sa.Engine, clock: FakeClock, token: str | None = None,
                 static=None, stream_seconds: float = 2.0) -> None:
        from gpuhistory.api.app import create_app
        from gpuhistory.config.layers import load_static
        from gpuhistory.config.store import ConfigStore
        from gpuhistory.context import ServiceContext
        from gpuhistory.leases.manager import LeaseManager
        from gpuhistory.sampling.pipeline import Pipeline
        from gpuhistory.sampling.sampler import Sampler
        from gpuhistory.sampling.sim import SimBackend

        self.engine, self.clock = engine, clock
        self.config = ConfigStore(engine, static or load_static(environ={}), clock,
                                  refresh_ms=0)
        self.store = LogStore(engine, "testhost")
        self.backend = SimBackend(clock, trace=FLEET4)
        self.pipeline = Pipeline(self.store, "sim", self.config)
        self.sampler = Sampler(self.backend, self.pipeline, self.store, clock,
                               interval=lambda: self.config().monitor_interval)
        self.leases = LeaseManager(engine, "testhost", clock, self.config)
        self.context = ServiceContext(engine=engine, host="testhost", clock=clock,
                                      config=self.config, sampler=self.sampler,
                                      config_store=self.config, leases=self.leases,
                                      api_token=token, stream_seconds=stream_seconds)
        self.sampler.tick()
        self.server = LiveServer(create_app(self.context))
        self.url = self.server.url

    def tick(self, seconds: float = 1.0, times: int = 1) -> None:
        for _ in range(times):
            self.clock.advance(seconds)
            self.sampler.tick()

    def close(self) -> None:
        self.sampler.stop()
        self.server.close()


@pytest.fixture
def app(engine: sa.Engine, clock: FakeClock):
    application = App(engine, clock)
    yield application
    application.close()


@pytest.fixture
def make_app(engine: sa.Engine, clock: FakeClock):
    """Factory for an App with options (an API token, a static config)."""
    apps: list[App] = []

    def make(**kwargs) -> App:
        application = App(engine, clock, **kwargs)
        apps.append(application)
        return application

    yield make
    for application in apps:
        application.close()
