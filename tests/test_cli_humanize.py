"""Durations in the CLI's output are for people: two units at most, rounded, never the
seconds with three decimals the API gives."""

from __future__ import annotations

import pytest

from gpuhistory.cli.humanize import duration


@pytest.mark.parametrize(("seconds", "text"), [
    (531.084, "8 min 51 s"), (0, "0 s"), (0.3, "0.3 s"), (4.25, "4.2 s"), (9.96, "10 s"),
    (47, "47 s"), (59.6, "1 min"), (60, "1 min"), (3599.6, "1 h"), (3_660, "1 h 1 min"),
    (7_170, "2 h"), (7_199, "2 h"), (86_400, "1 d"), (93_600, "1 d 2 h"),
    (-90, "-1 min 30 s"), (None, "-"), (float("nan"), "-"),
])
def test_durations_read_as_people_say_them(seconds, text) -> None:
    """Below 10 s one decimal (none when whole); then whole seconds, min + s, h + min and
    d + h, the smaller unit rounded and carried (59.6 min is 1 h); None and NaN are "-"."""
    assert duration(seconds) == text
