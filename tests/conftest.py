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
