"""Every time option of the CLI takes the same forms and refuses the same nonsense, as a
usage error (exit 2) with a message — never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from gpuhistory.cli.main import cli
from gpuhistory.cli.times import parse_cli_time
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


NOW = parse_log_time("2026-11-26T03:12:00Z")


@pytest.mark.parametrize(("text", "expected_offset_s"), [
    ("now", 0), ("NOW", 0), ("-1h", -3600), ("1h", -3600), ("90m", -5400),
    ("-10m", -600), ("-10min", -600), ("1h30m", -5400), ("1h 30m", -5400),
    ("now-15m", -900), ("now - 2d", -172_800), ("+15m", 900), ("1.5h", -5400),
    ("30s", -30), ("1w", -604_800),
])
def test_relative_times_count_from_the_injected_now(text, expected_offset_s) -> None:
    """A duration with units is ago (with or without "-"), "+" is ahead, "now" is now —
    all counted from the ``now`` given, not the machine's clock."""
    assert parse_cli_time(text, NOW) == NOW + expected_offset_s * 1000


def test_absolute_times_ignore_now_and_bare_numbers_stay_epoch_seconds() -> None:
    """ISO-8601 and epoch seconds mean what they say whatever now is; "90" is 1970 + 90 s,
    not 90 minutes ago (a relative time needs its unit)."""
    assert parse_cli_time("2026-11-26T03:00:00Z", NOW) == NOW - 720_000
    assert parse_cli_time("90", NOW) == 90_000


@pytest.mark.parametrize("text", ["-1x", "1hh", "m", "-", "now+", "1h-", "ten minutes",
                                  "-99999999w", "+9999999999d"])
def test_bad_relative_times_are_refused(text) -> None:
    """Unknown units, a sign or unit alone, and a time outside 1970 … 9999 are errors."""
    with pytest.raises(ValueError):
        parse_cli_time(text, NOW)


def test_relative_times_work_on_the_command_line(engine, db_url: str) -> None:
    """--since -1h --until now is accepted where an ISO time is (history of a GPU the empty,
    migrated database does not have: exit 3, not a usage error)."""
    result = CliRunner().invoke(cli, ["history", "--since", "-1h", "--until", "now", "--db",
                                      db_url])
    assert result.exit_code == 3, result.output
    backwards = CliRunner().invoke(cli, ["history", "--since", "now", "--until", "-1h", "--db",
                                         db_url])
    assert backwards.exit_code == 2 and "--since must not be after --until" in backwards.output
