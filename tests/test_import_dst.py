"""nvidia-smi logs written through daylight-saving changes, imported with ``--timezone``.

Each log is what ``nvidia-smi --query-gpu=... --format=csv -l N`` writes on a host whose
clock runs in the zone: the UTC instants of the loop (about N seconds apart, a few ms of
drift, as in /work/shared/traces/h200_nvidia_smi.csv) turned into local time by the zone's
own rules, one row per GPU. So the autumn logs step back by an hour in the middle, and the
spring logs skip one. The tests check that every stored UTC time is exactly the instant the
row was written, and that what the rows cannot place is refused, never guessed.

``tests/data/nvidia_smi_dst/`` holds genuine logs of each change: nvidia-smi on an H200,
its wall clock shifted to just before the change (``capture.sh`` there says how).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from gpuhistory.cli.main import cli
from gpuhistory.formats.errors import FormatError
from gpuhistory.formats.local_time import parse_zone
from gpuhistory.formats.nvidia_smi_csv import read_nvidia_smi
from gpuhistory.importer import import_file
from gpuhistory.storage.engine import make_engine
from gpuhistory.storage.schema import gpus, samples
from tests.test_import_trace import snapshot

pytestmark = pytest.mark.postgres

HOST = "dsthost"
REAL = Path(__file__).parent / "data" / "nvidia_smi_dst"
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
QUERY = ("timestamp, index, uuid, name, temperature.gpu, temperature.memory, memory.used [MiB], "
         "memory.total [MiB], utilization.gpu [%], power.draw [W], power.limit [W], "
         "clocks.current.sm [MHz], clocks.current.memory [MHz], clocks_event_reasons.active, "
         "pstate, fan.speed [%]")
DRIFT_MS = (8, 1, 1, 3, 1, 2)  # how late each loop of -l 1 ran (the H200 log's pattern)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def loop_instants(start: datetime, ticks: int, every_s: int) -> list[datetime]:
    """When nvidia-smi's loop ran: every ``every_s`` seconds, each a few ms late."""
    at, out = start, []
    for n in range(ticks):
        out.append(at)
        at += timedelta(seconds=every_s, milliseconds=DRIFT_MS[n % len(DRIFT_MS)])
    return out


def smi_log(zone: ZoneInfo, instants: list[datetime], gpus: int = 3,
            per_row_ms: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """The log's text, and (GPU index, UTC epoch ms) of each row in file order.

    ``per_row_ms``: each GPU's row is written that many ms after the previous GPU's (0: one
    timestamp for the whole loop).
    """
    lines, truth = [QUERY], []
    for n, instant in enumerate(instants):
        for index in range(gpus):
            at = instant + timedelta(milliseconds=per_row_ms * index)
            local = at.astimezone(zone).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
            lines.append(", ".join([
                local, str(index), f"GPU-6c80ba26-6496-a066-6c4a-c3b8c83311{index:02d}",
                "NVIDIA H200", str(41 + (n + index) % 3), "41", "0 MiB", "143771 MiB", "0 %",
                f"{80.8 + index / 100:.2f} W", "700.00 W", "345 MHz", "3201 MHz",
                "0x0000000000000001", "P0", "[N/A]"]))
            truth.append((index, round(at.timestamp() * 1000)))
    return "\n".join(lines) + "\n", truth


def write(tmp_path: Path, text: str, name: str = "smi.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def stored(engine: sa.Engine) -> list[tuple[int, int]]:
    """(GPU index, ts_ms) of every stored sample, in time then index order."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(gpus.c.gpu_index, samples.c.ts_ms)
                            .join(gpus, gpus.c.id == samples.c.gpu_id)
                            .order_by(samples.c.ts_ms, gpus.c.gpu_index))
        return [(r.gpu_index, r.ts_ms) for r in rows]


def assert_continuous(rows: list[tuple[int, int]], gpus: int, every_s: int) -> None:
    """Each GPU's stored times step forward by the loop's interval (plus its few ms)."""
    for index in range(gpus):
        times = [ts for i, ts in rows if i == index]
        steps = {b - a for a, b in pairwise(times)}
        assert steps and all(every_s * 1000 < s <= every_s * 1000 + 10 for s in steps), steps


def local_texts(text: str) -> list[str]:
    return [line.split(",", 1)[0] for line in text.splitlines()[1:]]


# -- autumn: a repeated hour ------------------------------------------------------------------
AUTUMN = [  # zone, the instant the clocks went back (UTC), the repeated local hour
    pytest.param(BERLIN, "2026-10-25T01:00:00", "02", id="berlin-2026-10-25"),
    pytest.param(NEW_YORK, "2026-11-01T06:00:00", "01", id="new-york-2026-11-01"),
]


@pytest.mark.parametrize(("zone", "change", "hour"), AUTUMN)
@pytest.mark.parametrize("per_row_ms", [0, 15], ids=["one-time-per-loop", "a-time-per-row"])
def test_autumn_log_through_the_repeated_hour_no_longer_goes_back_in_time(
        engine: sa.Engine, tmp_path: Path, zone: ZoneInfo, change: str, hour: str,
        per_row_ms: int) -> None:
    """``-l 1`` through the moment the clocks go back (local time steps back an hour, e.g.
    02:59:59 CEST → 02:00:00 CET) was refused as "timestamp goes back in time". Now each
    GPU's rows after its step are the second pass: every stored time is exactly the UTC
    instant the row was written, one second apart throughout."""
    instants = loop_instants(utc(change) - timedelta(seconds=20), 40, 1)
    text, truth = smi_log(zone, instants, per_row_ms=per_row_ms)
    texts = local_texts(text)
    assert texts[0].endswith(f" {hour}:59:40.000") and f" {hour}:00:" in texts[-1]
    result = import_file(engine, write(tmp_path, text), host=HOST, tz=zone)
    assert result.samples == len(truth) == 120
    rows = stored(engine)
    assert rows == sorted(truth, key=lambda r: (r[1], r[0]))
    assert_continuous(rows, 3, 1)


@pytest.mark.parametrize(("zone", "change", "hour"), AUTUMN)
def test_autumn_log_entering_and_leaving_the_repeated_hour_is_placed_exactly(
        engine: sa.Engine, tmp_path: Path, zone: ZoneInfo, change: str, hour: str) -> None:
    """``-l 30`` from before the repeated hour, through both passes of it, to after it:
    both passes land an hour apart in UTC, in order, with no gap and no overlap."""
    instants = loop_instants(utc(change) - timedelta(minutes=70), 280, 30)
    text, truth = smi_log(zone, instants)
    import_file(engine, write(tmp_path, text), host=HOST, tz=zone)
    rows = stored(engine)
    assert rows == sorted(truth, key=lambda r: (r[1], r[0]))
    assert_continuous(rows, 3, 30)
    # The repeated hour's local times each occur twice in the file and once per pass here.
    in_hour = [t for t in local_texts(text) if f" {hour}:" in t]
    assert len(in_hour) == 2 * 120 * 3


@pytest.mark.parametrize(("zone", "change", "hour"), AUTUMN)
@pytest.mark.parametrize("which", ["second", "first"])
def test_a_log_of_only_one_pass_of_the_repeated_hour_is_refused_not_placed_an_hour_early(
        engine: sa.Engine, tmp_path: Path, zone: ZoneInfo, change: str, hour: str,
        which: str) -> None:
    """A log that holds only rows inside the repeated hour has no step back to say which
    pass it is: it used to be placed as the first pass (an hour early for the second) without
    a word. Now it is refused, naming the first row and the two fixed offsets that would
    settle it; nothing is written."""
    start = utc(change) + (timedelta(seconds=5) if which == "second"
                           else -timedelta(seconds=30))
    text, _ = smi_log(zone, loop_instants(start, 20, 1))
    offsets = "+01:00 or +02:00" if zone is BERLIN else "-05:00 or -04:00"
    before = snapshot(engine)
    with pytest.raises(FormatError) as info:
        import_file(engine, write(tmp_path, text), host=HOST, tz=zone)
    assert info.value.line == 2
    assert "is ambiguous in" in info.value.message and zone.key in info.value.message
    assert f"use --timezone {offsets}" in info.value.message
    assert snapshot(engine) == before == {**before, "samples": []}


@pytest.mark.parametrize(("zone", "change", "hour"), AUTUMN)
def test_the_suggested_fixed_offset_places_a_second_pass_log_exactly(
        tmp_path: Path, zone: ZoneInfo, change: str, hour: str) -> None:
    """Through the CLI: the refusal's exit status 1 and ``file:line: reason``; then the
    offset of the second pass it suggests imports the log at its true UTC times."""
    text, truth = smi_log(zone, loop_instants(utc(change) + timedelta(seconds=5), 20, 1))
    path, db = write(tmp_path, text), tmp_path / "cli.db"
    runner = CliRunner()
    refused = runner.invoke(cli, ["import", str(path), "--db", str(db), "--host-name", HOST,
                                  "--timezone", zone.key])
    assert refused.exit_code == 1 and f"{path}:2: " in refused.output
    second = "+01:00" if zone is BERLIN else "-05:00"
    done = runner.invoke(cli, ["import", str(path), "--db", str(db), "--host-name", HOST,
                               "--timezone", second])
    assert done.exit_code == 0, done.output
    engine = make_engine(db)
    try:
        assert stored(engine) == sorted(truth, key=lambda r: (r[1], r[0]))
    finally:
        engine.dispose()


def test_a_clock_stepping_back_twice_in_the_repeated_hour_is_refused(
        engine: sa.Engine, tmp_path: Path) -> None:
    """One step back is the clocks changing; a second one inside the same hour is time
    going backwards, refused at its line."""
    text, _ = smi_log(BERLIN, loop_instants(utc("2026-10-25T00:59:50"), 20, 1), gpus=1)
    lines = text.splitlines()
    lines.insert(18, lines[14].replace("02:00:03", "02:00:01"))  # back after the change
    before = snapshot(engine)
    with pytest.raises(FormatError) as info:
        import_file(engine, write(tmp_path, "\n".join(lines) + "\n"), host=HOST, tz=BERLIN)
    assert info.value.line == 19 and "goes back in time" in info.value.message
    assert snapshot(engine) == before


# -- spring: a skipped hour ---------------------------------------------------------------
SPRING = [
    pytest.param(BERLIN, "2026-03-29T01:00:00", id="berlin-2026-03-29"),
    pytest.param(NEW_YORK, "2026-03-08T07:00:00", id="new-york-2026-03-08"),
]


@pytest.mark.parametrize(("zone", "change"), SPRING)
def test_spring_log_across_the_skipped_hour_is_continuous_in_utc(
        engine: sa.Engine, tmp_path: Path, zone: ZoneInfo, change: str) -> None:
    """``-l 1`` through the moment the clocks go forward (local 01:59:59 → 03:00:00): the
    stored times run on one second apart, exactly the instants written."""
    text, truth = smi_log(zone, loop_instants(utc(change) - timedelta(seconds=20), 40, 1))
    texts = local_texts(text)
    assert " 01:59:" in texts[0] and " 03:00:" in texts[-1]
    import_file(engine, write(tmp_path, text), host=HOST, tz=zone)
    rows = stored(engine)
    assert rows == sorted(truth, key=lambda r: (r[1], r[0]))
    assert_continuous(rows, 3, 1)


@pytest.mark.parametrize(("zone", "change"), SPRING)
def test_a_time_in_the_skipped_hour_is_refused_with_the_offsets(
        engine: sa.Engine, tmp_path: Path, zone: ZoneInfo, change: str) -> None:
    """02:30 on the night the clocks skip 02:00 to 03:00 never happened there: refused at its
    line (no silent shift by an hour), suggesting the fixed offsets either side."""
    day = change[:10].replace("-", "/")
    text = (f"{QUERY}\n" + ", ".join([
        f"{day} 02:30:00.000", "0", "GPU-x", "NVIDIA H200", "41", "41", "0 MiB",
        "143771 MiB", "0 %", "80.81 W", "700.00 W", "345 MHz", "3201 MHz",
        "0x0000000000000001", "P0", "[N/A]"]) + "\n")
    offsets = "+01:00 or +02:00" if zone is BERLIN else "-05:00 or -04:00"
    before = snapshot(engine)
    with pytest.raises(FormatError) as info:
        import_file(engine, write(tmp_path, text), host=HOST, tz=zone)
    assert info.value.line == 2
    assert "never happened in" in info.value.message
    assert f"use --timezone {offsets}" in info.value.message
    assert snapshot(engine) == before


def test_rows_are_placed_in_file_order_after_the_repeated_hour(tmp_path: Path) -> None:
    """The reader holds the repeated hour's rows until it ends, then yields every row in
    file order with its line number."""
    text, truth = smi_log(BERLIN, loop_instants(utc("2026-10-25T00:59:55"), 10, 1), gpus=2)
    rows = list(read_nvidia_smi(write(tmp_path, text), BERLIN))
    assert [r.line for r in rows] == list(range(2, 22))
    assert [(r.reading.index, r.ts_ms) for r in rows] == truth


@pytest.mark.parametrize(("text", "offset"), [
    ("+01:00", timedelta(hours=1)), ("-05:00", timedelta(hours=-5)),
    ("+0530", timedelta(hours=5, minutes=30)), ("-03", timedelta(hours=-3)),
])
def test_a_fixed_offset_is_a_zone(text: str, offset: timedelta) -> None:
    """``--timezone`` takes the fixed offsets its refusals suggest."""
    assert parse_zone(text).utcoffset(None) == offset


@pytest.mark.parametrize("bad", ["+24:00", "+01:75", "Mars/Olympus", "CEST+2"])
def test_an_unknown_zone_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    text, _ = smi_log(BERLIN, loop_instants(utc("2026-07-01T00:00:00"), 2, 1))
    done = CliRunner().invoke(cli, ["import", str(write(tmp_path, text)), "--db",
                                    str(tmp_path / "z.db"), "--timezone", bad])
    assert done.exit_code == 2 and "--timezone" in done.output
    assert not (tmp_path / "z.db").exists()


# -- genuine nvidia-smi output ---------------------------------------------------------------
@pytest.mark.parametrize(("name", "zone", "start_s", "local"), [
    ("berlin_autumn", BERLIN, 1792889980, ("02:59:59", "02:00:00")),
    ("new_york_autumn", NEW_YORK, 1793512780, ("01:59:59", "01:00:00")),
    ("berlin_spring", BERLIN, 1774745980, ("01:59:59", "03:00:00")),
    ("new_york_spring", NEW_YORK, 1772953180, ("01:59:59", "03:00:00")),
])
def test_real_nvidia_smi_log_through_the_change_imports_at_its_true_instants(
        engine: sa.Engine, name: str, zone: ZoneInfo, start_s: int,
        local: tuple[str, str]) -> None:
    """nvidia-smi's own output through each change (42 rows, one second apart, the local
    clock stepping back or forward an hour in the middle): imported with the zone's name,
    the first row is at the instant the capture started and every following one about a
    second later — no hour lost, none doubled."""
    path = REAL / f"{name}.csv"
    texts = local_texts(path.read_text())
    changes = [n for n, (a, b) in enumerate(pairwise(texts))
               if f" {local[0]}." in a and f" {local[1]}." in b]
    assert len(changes) == 1 and 5 < changes[0] < 35  # the change is well inside the log
    import_file(engine, path, host=HOST, tz=zone)
    times = [ts for _, ts in stored(engine)]
    assert len(times) == len(texts) == 42
    assert start_s * 1000 <= times[0] < (start_s + 2) * 1000
    assert all(900 < b - a < 1100 for a, b in pairwise(times)), times


def test_real_log_of_only_the_second_pass_is_refused_then_placed_by_its_offset(
        engine: sa.Engine, tmp_path: Path) -> None:
    """The genuine Berlin log cut to the rows after the clocks went back (02:00:00 CET
    on): refused with the offsets; with ``+01:00`` (CET) its rows land at exactly the UTC
    instants the whole log gives them."""
    lines = (REAL / "berlin_autumn.csv").read_text().splitlines()
    step = next(n for n in range(2, len(lines)) if " 02:00:00." in lines[n])
    second = write(tmp_path, "\n".join([lines[0], *lines[step:]]) + "\n", "second.csv")
    with pytest.raises(FormatError, match=r"use --timezone \+01:00 or \+02:00") as info:
        import_file(engine, second, host=HOST, tz=BERLIN)
    assert info.value.line == 2
    whole = [r.ts_ms for r in read_nvidia_smi(REAL / "berlin_autumn.csv", BERLIN)]
    import_file(engine, second, host=HOST, tz=parse_zone("+01:00"))
    assert [ts for _, ts in stored(engine)] == whole[step - 1:]
