"""Every time option of the CLI takes the same forms and refuses the same nonsense, as a
usage error (exit 2) with a message — never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from gpuhistory.cli.main import cli
from gpuhistory.clock import MAX_TIME_MS, parse_log_time

BAD = ["-99999999999", "99999999999999", "nan", "inf", "2026-13-01", "yesterday",
       "0001-01-01T00:00:00Z", "\x00"]


@pytest.mark.parametrize("command", [["history", "--since"], ["status", "--at"],
                                     ["incidents", "--until"]])
@pytest.mark.parametrize("value", BAD)
def test_bad_times_are_usage_errors(tmp_path, command, value) -> None:
    result = CliRunner().invoke(cli, [*command, value, "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 2, result.output
    assert "between 1970 and 9999" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.db").exists()  # refused before anything was opened


def test_the_log_time_range() -> None:
    assert parse_log_time("0") == 0
    assert parse_log_time("1970-01-01T00:00:00Z") == 0
    assert parse_log_time("9999-12-31T23:59:59.999Z") == MAX_TIME_MS
    assert parse_log_time("2026-11-26T03:12:00+01:00") == parse_log_time("1795659120")
    with pytest.raises(ValueError):
        parse_log_time("-1")
