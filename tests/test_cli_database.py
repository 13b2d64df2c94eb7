"""Commands that only read refuse a SQLite database that does not exist, instead of creating
an empty one and answering from it; the commands that write still create it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuhistory.cli.database import sqlite_file
from gpuhistory.cli.main import cli

READ_ONLY = [["status"], ["status", "--json"], ["history", "--gpu-id", "0"],
             ["incidents"], ["incidents", "--json"], ["incidents", "show", "1"],
             ["incidents", "rebuild"]]


def _forms(tmp_path: Path) -> dict[str, tuple[str, Path]]:
    missing = tmp_path / "not-yet" / "gpuhistory.db"
    return {"path": (str(missing), missing), "url": (f"sqlite:///{missing}", missing)}


@pytest.mark.parametrize("form", ["path", "url"])
@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_read_only_commands_refuse_a_missing_database(tmp_path: Path, command: list[str],
                                                      form: str) -> None:
    """`--db` naming a file that does not exist: exit 1, `no database at <path>` on stderr,
    and neither the file nor its folder is created."""
    db, path = _forms(tmp_path)[form]
    result = CliRunner().invoke(cli, [*command, "--db", db])
    assert result.exit_code == 1, result.output
    assert f"no database at {path}" in result.output
    assert "Traceback" not in result.output
    assert not path.exists() and not path.parent.exists()


def test_the_default_and_the_environment_database_are_checked_too(tmp_path: Path) -> None:
    """Without --db: GPUHISTORY_DB, else the user's data dir (XDG_DATA_HOME) must exist."""
    runner = CliRunner()
    env_db = tmp_path / "env.db"
    by_env = runner.invoke(cli, ["status"], env={"GPUHISTORY_DB": str(env_db)})
    assert by_env.exit_code == 1 and f"no database at {env_db}" in by_env.output
    default = tmp_path / "data" / "gpuhistory" / "gpuhistory.db"
    by_default = runner.invoke(cli, ["history"], env={"GPUHISTORY_DB": None,
                                                      "XDG_DATA_HOME": str(tmp_path / "data")})
    assert by_default.exit_code == 1 and f"no database at {default}" in by_default.output
    assert not env_db.exists() and not default.parent.exists()


def test_an_existing_database_is_read_and_a_writer_creates_one(tmp_path: Path) -> None:
    """`db upgrade` creates the file; then the same `status` reads it (no GPUs yet: exit 3,
    as documented) and `incidents` lists none."""
    db = str(tmp_path / "new.db")
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade", "--db", db]).exit_code == 0
    status = runner.invoke(cli, ["status", "--db", db, "--host-name", "testhost"])
    assert status.exit_code == 3 and "no GPUs recorded" in status.output
    listed = runner.invoke(cli, ["incidents", "--db", db, "--json"])
    assert listed.exit_code == 0 and '"count": 0' in listed.output


def test_which_databases_are_files() -> None:
    """Paths and sqlite URLs name files; PostgreSQL and in-memory SQLite do not."""
    assert sqlite_file("x.db") == Path("x.db")
    assert sqlite_file("~/x.db") == Path.home() / "x.db"
    assert sqlite_file("sqlite:////var/lib/g.db") == Path("/var/lib/g.db")
    assert sqlite_file("sqlite+pysqlite:///rel.db") == Path("rel.db")
    for not_a_file in ("postgresql+psycopg://u@h/db", "sqlite://", "sqlite:///:memory:",
                       "sqlite:///file:mem?mode=memory&uri=true"):
        assert sqlite_file(not_a_file) is None, not_a_file
