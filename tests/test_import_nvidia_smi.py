"""``import`` of logs written by ``nvidia-smi --query-gpu=... --format=csv[,nounits] -l N``."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from gpuhistory.domain.reading import GpuIdentity, Reading
from gpuhistory.domain.states import GPUState
from gpuhistory.formats import nvidia_smi_csv
from gpuhistory.formats.errors import FormatError
from gpuhistory.formats.nvidia_smi_csv import parse_timestamp, read_nvidia_smi
from gpuhistory.importer import ImportConflictError, import_file
from gpuhistory.storage.log import LogStore
from gpuhistory.storage.schema import events, gpus, samples, transitions
from tests.test_import_trace import snapshot

pytestmark = pytest.mark.postgres

HOST = "smihost"
UUID0 = "GPU-5ee1c0de-0000-4000-8000-000000000000"
UUID1 = "GPU-5ee1c0de-0000-4000-8000-000000000001"
EST = timezone(timedelta(hours=-5))
QUERY = ("timestamp, index, uuid, name, temperature.gpu, temperature.memory, "
         "memory.used [MiB], memory.total [MiB], utilization.gpu [%], power.draw [W], "
         "power.limit [W], clocks.sm [MHz], clocks.mem [MHz], clocks_event_reasons.active, "
         "pstate, fan.speed [%]")
# (index, uuid, temperature, memory temperature, used MiB, util %, power W, SM MHz, reasons,
#  fan cell) for each GPU at each of three ticks one second apart.
TICKS = [
    [(0, UUID0, 31, 33, 480, 0, "71.63", 345, "0x0000000000000001", "[N/A]"),
     (1, UUID1, 62, 56, 63000, 99, "699.48", 1365, "0x0000000000000004", "[Not Supported]")],
    [(0, UUID0, 32, 33, 480, 1, "72.10", 345, "0x0000000000000001", "N/A"),
     (1, UUID1, 63, 57, 63010, 100, "700.01", 1350, "0x0000000000000004", "[Unknown Error]")],
    [(0, UUID0, 45, 40, 60000, 97, "650.00", 1980, "0x0000000000000000", "30 %"),
     (1, UUID1, 63, 57, 30000, 50, "400.50", 1755, "0x0000000000000000", "[N/A]")],
]
TIMES = ["2026/11/26 12:34:56.789", "2026/11/26 12:34:57.790", "2026/11/26 12:34:58.791"]


def smi_log(units: bool = True, repeat_header: bool = True) -> str:
    """A log as nvidia-smi writes it, with a repeated header between ticks."""
    lines = [QUERY]
    for n, (when, tick) in enumerate(zip(TIMES, TICKS, strict=True)):
        if n and repeat_header:
            lines.append(QUERY)
        for index, uuid, temp, mtemp, used, util, power, sm, reasons, fan in tick:
            cells = [when, str(index), uuid, "NVIDIA H100 80GB HBM3", str(temp), str(mtemp),
                     f"{used} MiB", "81559 MiB", f"{util} %", f"{power} W", "700.00 W",
                     f"{sm} MHz", "2619 MHz", reasons, "P0", fan]
            if not units:
                cells = [c.removesuffix(" MiB").removesuffix(" %").removesuffix(" W")
                         .removesuffix(" MHz") for c in cells]
            lines.append(", ".join(cells))
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, text: str | bytes, name: str = "smi.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def est_ms(text: str) -> int:
    """A log time read as US Eastern standard time, worked out by hand: UTC = EST + 5 h."""
    naive = datetime.strptime(text, "%Y/%m/%d %H:%M:%S.%f")
    return round((naive + timedelta(hours=5)).replace(tzinfo=UTC).timestamp() * 1000)


def sample_rows(engine: sa.Engine) -> list[Any]:
    s = samples.c
    with engine.connect() as conn:
        return list(conn.execute(
            sa.select(gpus.c.gpu_index, *samples.columns)
            .join(gpus, gpus.c.id == s.gpu_id).order_by(s.ts_ms, gpus.c.gpu_index)))


@pytest.mark.parametrize("units", [True, False], ids=["units", "nounits"])
def test_log_imports_with_converted_values(engine: sa.Engine, tmp_path: Path,
                                           units: bool) -> None:
    """With or without ``nounits``, every value lands converted: units stripped, power in
    deciwatts, the hex clock-event mask as an integer, P0 as 0, N/A-like cells as NULL
    and "30 %" as 30; times read in the zone given."""
    path = write(tmp_path, smi_log(units=units))
    result = import_file(engine, path, host=HOST, tz=EST)
    assert (result.format, result.samples, result.gpus) == ("nvidia-smi", 6, 2)
    assert (result.first_ts_ms, result.last_ts_ms) == (est_ms(TIMES[0]), est_ms(TIMES[2]))

    stored = sample_rows(engine)
    expected = [
        (index, est_ms(when), temp, mtemp, used, util, round(float(power) * 10), sm, 2619,
         int(reasons, 16), 0, 30 if fan == "30 %" else None)
        for when, tick in zip(TIMES, TICKS, strict=True)
        for index, _, temp, mtemp, used, util, power, sm, reasons, fan in tick
    ]
    assert [(r.gpu_index, r.ts_ms, r.temperature_c, r.memory_temperature_c, r.memory_used_mib,
             r.utilization_pct, r.power_dw, r.sm_clock_mhz, r.mem_clock_mhz,
             r.clock_event_reasons, r.pstate, r.fan_pct) for r in stored] == expected
    # GPU 1 uses 63000 of 81559 MiB (77 %): NORMAL by memory, then 30000 (37 %): OPTIMAL.
    # GPU 0 climbs to 60000 MiB (73.6 %): NORMAL at the third tick.
    assert [(r.gpu_index, GPUState(r.state)) for r in stored] == [
        (0, GPUState.OPTIMAL), (1, GPUState.NORMAL), (0, GPUState.OPTIMAL),
        (1, GPUState.NORMAL), (0, GPUState.NORMAL), (1, GPUState.OPTIMAL)]

    with engine.connect() as conn:
        rows = list(conn.execute(sa.select(gpus).order_by(gpus.c.gpu_index)))
    assert [(r.host, r.gpu_index, r.uuid, r.name, r.memory_total_mib, r.power_limit_w,
             r.backend, r.first_seen_ms, r.last_seen_ms) for r in rows] == [
        (HOST, i, uuid, "NVIDIA H100 80GB HBM3", 81559, 700.0, "nvidia-smi",
         est_ms(TIMES[0]), est_ms(TIMES[2])) for i, uuid in ((0, UUID0), (1, UUID1))]


def test_nounits_and_units_read_the_same(tmp_path: Path) -> None:
    """The two output styles give identical readings and times."""
    with_units = list(read_nvidia_smi(write(tmp_path, smi_log(units=True), "a.csv"), EST))
    without = list(read_nvidia_smi(write(tmp_path, smi_log(units=False), "b.csv"), EST))
    assert [(r.ts_ms, r.reading) for r in with_units] == [(r.ts_ms, r.reading) for r in without]
    first = with_units[0].reading
    assert (first.uuid, first.name, first.power_w, first.power_limit_w, first.fan_pct) == \
        (UUID0, "NVIDIA H100 80GB HBM3", 71.63, 700.0, None)


@pytest.mark.parametrize("units", [True, False], ids=["units", "nounits"])
def test_fast_and_validating_paths_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         units: bool) -> None:
    """Every row read by the fast path reads the same through the validating path alone."""
    path = write(tmp_path, smi_log(units=units))
    fast = list(read_nvidia_smi(path, EST))

    def refuse(*_: Any) -> Reading:
        raise ValueError("take the validating path")

    monkeypatch.setattr(nvidia_smi_csv, "_fast_reading", refuse)
    assert list(read_nvidia_smi(path, EST)) == fast


def test_repeated_headers_are_skipped(tmp_path: Path) -> None:
    """Header lines repeated between ticks are skipped; rows keep their true line numbers."""
    rows = list(read_nvidia_smi(write(tmp_path, smi_log(repeat_header=True)), EST))
    assert [r.line for r in rows] == [2, 3, 5, 6, 8, 9]
    assert [r.reading.index for r in rows] == [0, 1] * 3


def test_a_header_naming_other_columns_starts_a_new_layout(tmp_path: Path) -> None:
    """Logs of different queries concatenated: a later header with other columns is read
    anew, and its rows are read by it."""
    text = (smi_log(repeat_header=False)
            + "index, timestamp, temperature.gpu, clocks.current.sm [MHz], "
              "clocks_throttle_reasons.active, power.draw.instant [W], pstate\n"
            + "0, 2026/11/26 12:35:00.000, 70, 1700 MHz, 0x20, 500.5 W, P2\n")
    rows = list(read_nvidia_smi(write(tmp_path, text), EST))
    last = rows[-1].reading
    assert rows[-1].ts_ms == est_ms("2026/11/26 12:35:00.000")
    assert (last.index, last.temperature_c, last.sm_clock_mhz, last.clock_event_reasons,
            last.power_w, last.pstate, last.memory_used_mib) == (0, 70, 1700, 0x20, 500.5, 2,
                                                                  None)
    assert last.uuid == "GPU-nvsmi-smi-0"


def test_times_are_read_in_the_given_zone() -> None:
    """nvidia-smi writes local time without a zone: it is read in ``tz`` (with its daylight
    saving rules), or in this machine's local zone when none is given."""
    assert parse_timestamp("2026/11/26 12:34:56.789", EST) == est_ms("2026/11/26 12:34:56.789")
    berlin = ZoneInfo("Europe/Berlin")
    winter = datetime(2026, 1, 15, 11, 0, tzinfo=UTC).timestamp() * 1000  # CET = UTC+1
    summer = datetime(2026, 7, 15, 10, 0, tzinfo=UTC).timestamp() * 1000  # CEST = UTC+2
    assert parse_timestamp("2026/01/15 12:00:00.000", berlin) == winter
    assert parse_timestamp("2026/07/15 12:00:00.000", berlin) == summer
    local = time.mktime((2026, 11, 26, 12, 34, 56, 0, 0, -1)) * 1000 + 789
    assert parse_timestamp("2026/11/26 12:34:56.789") == local
    assert parse_timestamp("2026/11/26 12:34:56", UTC) % 1000 == 0
    with pytest.raises(ValueError, match="not a time"):
        parse_timestamp("26.11.2026 12:34", UTC)
    with pytest.raises(ValueError):
        parse_timestamp("2026/13/40 12:34:56.000", UTC)


def test_without_uuid_column_a_uuid_is_derived(engine: sa.Engine, tmp_path: Path) -> None:
    """A log that did not query uuid gets GPU-nvsmi-<file stem>-<index> for each GPU."""
    text = ("timestamp, index, temperature.gpu, memory.used [MiB], memory.total [MiB]\n"
            "2026/11/26 12:00:00.000, 0, 40, 100 MiB, 1000 MiB\n"
            "2026/11/26 12:00:00.000, 1, 41, 100 MiB, 1000 MiB\n")
    import_file(engine, write(tmp_path, text, "node7.csv"), host=HOST, tz=UTC)
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.select(gpus.c.uuid)).scalars()) == [
            "GPU-nvsmi-node7-0", "GPU-nvsmi-node7-1"]


def test_lost_gpu_row_is_unavailable(engine: sa.Engine, tmp_path: Path) -> None:
    """A row of "[GPU is lost]" cells is an unavailable reading: an UNAVAILABLE sample and
    transition and a ``gpu_lost`` event, while the other GPU is read as usual."""
    lost = ", ".join(["2026/11/26 12:34:57.790", "1", UUID1, "[GPU is lost]"]
                     + ["[GPU is lost]"] * 12)
    lines = smi_log(repeat_header=False).splitlines()
    lines[4] = lost
    import_file(engine, write(tmp_path, "\n".join(lines) + "\n"), host=HOST, tz=EST)
    stored = sample_rows(engine)
    assert [(r.gpu_index, GPUState(r.state)) for r in stored][2:4] == [
        (0, GPUState.OPTIMAL), (1, GPUState.UNAVAILABLE)]
    assert stored[3].temperature_c is None
    with engine.connect() as conn:
        kinds = list(conn.execute(sa.select(events.c.kind, events.c.ts_ms)
                                  .order_by(events.c.id)))
        causes = list(conn.execute(sa.select(transitions.c.cause)).scalars())
    assert ("gpu_lost", est_ms(TIMES[1])) in kinds
    assert ("gpu_found", est_ms(TIMES[2])) in kinds
    assert "unavailable" in causes


def test_na_variants_are_null(tmp_path: Path) -> None:
    """[N/A], N/A, [Not Supported], [Unknown Error] and empty cells all read as None."""
    text = ("timestamp, index, temperature.gpu, fan.speed [%], power.draw [W], pstate, "
            "utilization.gpu [%]\n"
            "2026/11/26 12:00:00.000, 0, [N/A], N/A, [Not Supported], [Unknown Error], \n")
    (row,) = read_nvidia_smi(write(tmp_path, text), UTC)
    assert row.reading == Reading(index=0, uuid="GPU-nvsmi-smi-0")


def test_known_gpu_keeps_its_live_facts(engine: sa.Engine, tmp_path: Path) -> None:
    """A log of a GPU the log already knows (same host and uuid, from the live nvml
    backend) adds its samples under that GPU's row; the row keeps its backend and facts,
    and only its first-seen time moves back to the log's start."""
    store = LogStore(engine, HOST)
    live_ms = est_ms(TIMES[2]) + 3_600_000
    gpu_id = store.gpu_id(GpuIdentity(index=0, uuid=UUID0, name="H100 (live)",
                                      memory_total_mib=81559, slowdown_temp_c=89),
                          "nvml", live_ms)
    import_file(engine, write(tmp_path, smi_log()), host=HOST, tz=EST)
    with engine.connect() as conn:
        row = conn.execute(sa.select(gpus).where(gpus.c.id == gpu_id)).one()
        mine = conn.execute(sa.select(sa.func.count()).select_from(samples)
                            .where(samples.c.gpu_id == gpu_id)).scalar()
    assert (row.backend, row.name, row.slowdown_temp_c, row.power_limit_w) == \
        ("nvml", "H100 (live)", 89, None)
    assert (row.first_seen_ms, row.last_seen_ms) == (est_ms(TIMES[0]), live_ms)
    assert mine == 3


def test_start_ms_is_refused_for_a_log(engine: sa.Engine, tmp_path: Path) -> None:
    """An nvidia-smi log carries its own times; a start_ms for it is refused, not ignored."""
    before = snapshot(engine)
    with pytest.raises(ValueError, match="start_ms applies to traces only"):
        import_file(engine, write(tmp_path, smi_log()), host=HOST, start_ms=0)
    assert snapshot(engine) == before


def test_reimport_fails_cleanly(engine: sa.Engine, tmp_path: Path) -> None:
    """The same log imported twice: ImportConflictError, database as the first left it."""
    path = write(tmp_path, smi_log())
    import_file(engine, path, host=HOST, tz=EST)
    before = snapshot(engine)
    with pytest.raises(ImportConflictError, match="was it imported before"):
        import_file(engine, path, host=HOST, tz=EST)
    assert snapshot(engine) == before


LINES = smi_log(repeat_header=False).splitlines()


def replace_cell(line: int, cell: int, value: str) -> str:
    lines = list(LINES)
    cells = lines[line - 1].split(", ")
    cells[cell] = value
    lines[line - 1] = ", ".join(cells)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("\n".join(LINES[:4]) + "\n" + LINES[4][:30], 5, "expected 16 cells, found 3"),
        (replace_cell(3, 4, "62, 1"), 3, "expected 16 cells, found 17"),
        (replace_cell(4, 0, "yesterday"), 4, "'timestamp': 'yesterday' is not a time"),
        (replace_cell(4, 0, "2026/02/30 12:00:00.000"), 4, "column 'timestamp'"),
        (replace_cell(5, 6, "lots MiB"), 5, "'memory.used [MiB]': 'lots MiB' is not a number"),
        (replace_cell(5, 6, "12 GiB"), 5, "has unit 'GiB', expected MiB"),
        (replace_cell(6, 4, "-3"), 6, "'temperature.gpu': '-3' is out of range"),
        (replace_cell(6, 9, "nan W"), 6, "'power.draw [W]': 'nan W' is not finite"),
        (replace_cell(6, 9, "inf W"), 6, "is not finite"),
        (replace_cell(7, 14, "P99"), 7, "is not a performance state P0 to P15"),
        (replace_cell(7, 13, "0xZZ"), 7, "'clocks_event_reasons.active': '0xZZ' is not"),
        (replace_cell(7, 1, "x"), 7, "'index': 'x' is not a GPU index"),
        (replace_cell(7, 0, "2026/11/26 12:00:00.000"), 7, "timestamp goes back in time"),
        ("\n".join(LINES[1:]) + "\n", 1, "no header row (was the log written with"),
        ("timestamp, name\n2026/11/26 12:00:00.000, x\n", 1,
         "header lacks required column(s) ['index']"),
        (("\n".join(LINES[:3]) + "\n").encode() + b"\x00\x01\x02\xff\xfe garbage\n", 4,
         "not UTF-8"),
        (b"", 1, "empty file"),
        (LINES[0] + "\n", 2, "no data rows"),
    ],
    ids=["truncated", "extra-cell", "bad-time", "impossible-date", "non-numeric",
         "wrong-unit", "negative", "nan", "inf", "pstate", "hex", "index", "time-back",
         "noheader", "missing-index", "binary", "empty", "header-only"],
)
def test_bad_log_names_the_line_and_changes_nothing(
        engine: sa.Engine, tmp_path: Path, content: str | bytes, line: int,
        message: str) -> None:
    """Each kind of bad log is a FormatError naming its line, and every table is exactly
    as it was (no gpus row either)."""
    before = snapshot(engine)
    path = write(tmp_path, content)
    with pytest.raises(FormatError) as info:
        import_file(engine, path, host=HOST, tz=EST)
    assert (info.value.path, info.value.line) == (str(path), line)
    assert message in info.value.message
    assert snapshot(engine) == before
    assert before["gpus"] == []
