"""The file readers behind ``import`` and the sim backend: values, line numbers, errors."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from gpuhistory.domain.reading import Reading
from gpuhistory.formats import trace_csv
from gpuhistory.formats.errors import FormatError
from gpuhistory.formats.trace_csv import (
    COLUMNS,
    TraceRow,
    bundled_trace,
    fast_constructor,
    new_reading,
    read_trace,
)
from gpuhistory.importer import detect_format
from tests.conftest import FLEET4, H100_BURN

HEADER = ",".join(COLUMNS)
ROW = "0.000,0,31,33,71.628,345,2619,0,480,81559,1,0"


def reference_rows(path: Path) -> list[tuple[float, int, dict[str, object]]]:
    """A trace read with the csv module, field by field: the oracle for read_trace."""
    out = []
    with open(path, newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            values: dict[str, object] = {}
            for column in COLUMNS[2:]:
                text = row[column]
                values[column] = (None if text == "" else
                                  float(text) if column == "power_w" else int(text))
            out.append((float(row["t_s"]), int(row["gpu"]), {"line": line, **values}))
    return out


def write(tmp_path: Path, text: str | bytes, name: str = "t.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


@pytest.mark.parametrize("path", [H100_BURN, FLEET4], ids=["h100_burn", "fleet4"])
def test_bundled_traces_read_as_the_csv_module_reads_them(path: Path) -> None:
    """The fast reader yields, for every row of the recorded traces, exactly the values the
    csv module gives (an independent reader), with the right line numbers and uuids."""
    rows = list(read_trace(path))
    expected = reference_rows(path)
    assert len(rows) == len(expected) > 2000
    for row, (t_s, gpu, values) in zip(rows, expected, strict=True):
        assert isinstance(row, TraceRow)
        assert (row.t_s, row.reading.index, row.line) == (t_s, gpu, values["line"])
        assert row.reading.uuid == f"GPU-trace-{path.stem}-{gpu}"
        for column in COLUMNS[2:]:
            assert getattr(row.reading, column) == values[column], (row.line, column)
        assert row.reading.available and row.reading.fan_pct is None


def test_bundled_trace_points_into_the_package() -> None:
    """bundled_trace names the copies shipped with the package, which exist."""
    assert bundled_trace().name == "fleet4_derived.csv"
    assert bundled_trace("h100_burn.csv").is_file()


def test_fast_constructor_builds_the_same_reading_as_the_real_one() -> None:
    """The slot-setting constructor gives a Reading equal to Reading(...), every other field
    at its default, and a fresh ``extra`` dict per object (not one shared default)."""
    args = (3, "GPU-x-3", 41, None, 123.5, 1980, 2619, 87, 1000, 81559, 0x4, 0)
    names = ("index", "uuid", "temperature_c", "memory_temperature_c", "power_w",
             "sm_clock_mhz", "mem_clock_mhz", "utilization_pct", "memory_used_mib",
             "memory_total_mib", "clock_event_reasons", "pstate")
    fast = new_reading(*args)
    real = Reading(**dict(zip(names, args, strict=True)))
    assert fast == real
    assert [getattr(fast, f.name) for f in dataclasses.fields(Reading)] == \
        [getattr(real, f.name) for f in dataclasses.fields(Reading)]
    assert fast.memory_percent == real.memory_percent
    assert new_reading(*args).extra is not fast.extra
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.temperature_c = 1  # type: ignore[misc]


def test_fast_constructor_falls_back_where_it_does_not_fit() -> None:
    """A class with a __post_init__ (or without slots) is built by its real constructor,
    so its own checks still run."""

    @dataclasses.dataclass(frozen=True)
    class Checked:
        a: int
        b: int = 2

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("negative")

    make = fast_constructor(Checked, ("a",))
    assert make(1) == Checked(1)
    with pytest.raises(ValueError, match="negative"):
        make(-1)


def test_slow_path_reads_spaces_quotes_crlf_bom_hex_and_float_ints(tmp_path: Path) -> None:
    """Cells the fast path does not take (spaces, quotes, CRLF, a BOM, hex masks, "31.0" in
    an integer column, empty cells) are read by the validating path to the same values."""
    text = ("\ufeff" + ", ".join(COLUMNS) + "\r\n"
            + ' 0.5 , 1 ,"31", 33 ,71.5,345,2619,0,480,81559,0x24,0\r\n'
            + "0.6,1,31.0,,71.5,345,2619,0,480,81559,36,\r\n")
    rows = list(read_trace(write(tmp_path, text)))
    assert [(r.t_s, r.line) for r in rows] == [(0.5, 2), (0.6, 3)]
    first, second = rows[0].reading, rows[1].reading
    assert (first.index, first.temperature_c, first.memory_temperature_c, first.power_w,
            first.clock_event_reasons, first.pstate) == (1, 31, 33, 71.5, 0x24, 0)
    assert (second.temperature_c, second.memory_temperature_c, second.clock_event_reasons,
            second.pstate) == (31, None, 36, None)


def test_columns_in_any_order_missing_and_unknown(tmp_path: Path) -> None:
    """Columns may come in any order; missing ones read as None; unknown ones are ignored."""
    text = "gpu,note,temperature_c,t_s,power_w\n2,hello,55,1.25,300.5\n2,,56,1.35,\n"
    rows = list(read_trace(write(tmp_path, text), uuid_prefix="GPU-p"))
    assert [(r.t_s, r.reading.index, r.reading.temperature_c, r.reading.power_w)
            for r in rows] == [(1.25, 2, 55, 300.5), (1.35, 2, 56, None)]
    assert rows[0].reading.uuid == "GPU-p-2"
    assert rows[0].reading.memory_used_mib is None and rows[0].reading.pstate is None


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    """Blank lines are skipped, and the line numbers of later rows still match the file."""
    text = f"{HEADER}\n{ROW}\n\n{ROW.replace('0.000', '0.100', 1)}\n"
    assert [r.line for r in read_trace(write(tmp_path, text))] == [2, 4]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("0.1,0,-31,33,71.6,345,2619,0,480,81559,1,0", "'temperature_c': '-31' is out of range"),
        ("0.1,0,31,33,nan,345,2619,0,480,81559,1,0", "'power_w': 'nan' is not finite"),
        ("0.1,0,31,33,inf,345,2619,0,480,81559,1,0", "'power_w': 'inf' is not finite"),
        ("0.1,0,31,33,1e400,345,2619,0,480,81559,1,0", "'power_w': '1e400' is not finite"),
        ("0.1,0,hot,33,71.6,345,2619,0,480,81559,1,0", "'temperature_c': 'hot' is not a number"),
        ("0.1,0,31,33,71.6,345,2619,0,480,81559,99999999999999999999,0",
         "'clock_event_reasons': '99999999999999999999' is out of range"),
        ("0.1,0,31,33,71.6,345,2619,0,480,81559,1", "expected 12 cells, found 11"),
        ("0.1,0,31,33,71.6,345,2619,0,480,81559,1,0,7", "expected 12 cells, found 13"),
        (",0,31,33,71.6,345,2619,0,480,81559,1,0", "t_s and gpu must not be empty"),
        ("0.1,5000,31,33,71.6,345,2619,0,480,81559,1,0", "gpu 5000 is out of range"),
        ("0.1,0,3 1,33,71.6,345,2619,0,480,81559,1,0", "'temperature_c': '3 1' is not a number"),
        ("0.1,0,31,33,71..6,345,2619,0,480,81559,1,0", "'power_w': '71..6' is not a number"),
    ],
)
def test_bad_cells_name_line_and_column(tmp_path: Path, row: str, message: str) -> None:
    """Each kind of bad cell is a FormatError naming the file, the line and the column."""
    path = write(tmp_path, f"{HEADER}\n{ROW}\n{row}\n")
    with pytest.raises(FormatError) as info:
        list(read_trace(path))
    assert (info.value.path, info.value.line) == (str(path), 3)
    assert message in info.value.message
    assert str(info.value).startswith(f"{path}:3: ")


def test_time_going_back_is_an_error(tmp_path: Path) -> None:
    """Rows must be in time order: a t_s smaller than the previous row's is named."""
    path = write(tmp_path, f"{HEADER}\n{ROW.replace('0.000', '5.0', 1)}\n{ROW}\n")
    with pytest.raises(FormatError, match=r":3: t_s 0.0 goes back in time"):
        list(read_trace(path))


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        (b"", 1, "empty file"),
        (b"\n\n", 1, "empty file"),
        (b"time,gpu\n1,0\n", 1, "header lacks required column(s) ['t_s']"),
        (f"{HEADER}\n{ROW}\n{ROW}\n".encode() + b"\xff\xfe\x00garbage\n", 4, "not UTF-8"),
        (f"{HEADER}\n{ROW}\n0.1,0,3\x001\n".encode(), 3, "binary data (NUL byte)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 1, "not UTF-8"),
    ],
    ids=["empty", "blank", "no-t_s", "non-utf8", "nul", "png"],
)
def test_unreadable_files_name_the_line(tmp_path: Path, content: bytes, line: int,
                                        message: str) -> None:
    """Empty files, wrong headers, binary and non-UTF-8 bytes are FormatErrors with a line."""
    with pytest.raises(FormatError) as info:
        list(read_trace(write(tmp_path, content)))
    assert info.value.line == line
    assert message in info.value.message


def test_missing_file_is_a_format_error(tmp_path: Path) -> None:
    """A path that cannot be opened is a FormatError saying so (no line)."""
    with pytest.raises(FormatError, match="cannot open") as info:
        list(read_trace(tmp_path / "absent.csv"))
    assert info.value.line is None


def test_line_numbers_hold_across_chunk_boundaries(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With tiny chunks (so every few lines start a new chunk, some clean and some taking
    the slow path), rows and errors still carry their true line numbers."""
    monkeypatch.setattr(trace_csv, "CHUNK_BYTES", 100)
    lines = [HEADER]
    for i in range(60):
        cell = f" {i}" if i % 7 == 0 else str(i)  # a space sends that chunk the slow way
        lines.append(f"{i / 10:.1f},0,{cell},33,71.6,345,2619,0,480,81559,1,0")
        if i % 11 == 0:
            lines.append("")
    lines.append("9.9,0,31,33,71.6,345,2619,0,480,81559,1")
    path = write(tmp_path, "\n".join(lines) + "\n")
    rows = []
    with pytest.raises(FormatError) as info:
        rows.extend(read_trace(path))
    assert info.value.line == len(lines)
    file_lines = path.read_text().split("\n")
    assert len(rows) == 60
    for row in rows:
        assert file_lines[row.line - 1].split(",")[2].strip() == str(row.reading.temperature_c)


def test_fast_and_slow_paths_agree(tmp_path: Path) -> None:
    """The bundled trace read fast (clean chunks) and read with a space in every row (all
    through the validating path) gives the same rows."""
    text = FLEET4.read_text()
    spaced = "\n".join(line.replace(",", ", ") for line in text.split("\n"))
    fast = list(read_trace(write(tmp_path, text, "a.csv"), uuid_prefix="p"))
    slow = list(read_trace(write(tmp_path, spaced, "b.csv"), uuid_prefix="p"))
    assert fast == slow


@pytest.mark.parametrize(
    ("header", "fmt"),
    [
        (HEADER, "trace"),
        ("t_s,gpu,temperature_c", "trace"),
        ("timestamp, index, temperature.gpu, memory.used [MiB]", "nvidia-smi"),
        ("\ufefftimestamp, index, name", "nvidia-smi"),
    ],
)
def test_detect_format_from_the_header(tmp_path: Path, header: str, fmt: str) -> None:
    """The format is told from the header row alone."""
    assert detect_format(write(tmp_path, header + "\n")) == fmt


def test_detect_format_rejects_other_files(tmp_path: Path) -> None:
    """A header of neither format, or no header, is a FormatError on line 1."""
    with pytest.raises(FormatError, match=r":1: unrecognised header"):
        detect_format(write(tmp_path, "a,b,c\n1,2,3\n"))
    with pytest.raises(FormatError, match=r":1: empty file"):
        detect_format(write(tmp_path, ""))
    with pytest.raises(FormatError, match=r":1: not UTF-8"):
        detect_format(write(tmp_path, b"\xff\xfe\xfd\n"))
