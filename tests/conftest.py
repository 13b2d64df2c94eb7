"""Shared fixtures: every test gets its own SQLite file, migrated by Alembic (never create_all)."""

from __future__ import annotations

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
        from waitress import wasyncore

        self.server.task_dispatcher.shutdown()
        wasyncore.close_all(self.server._map)
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
