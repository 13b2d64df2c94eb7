"""Hostile files given to ``gpuhistory import``: each is refused with a message naming the
file (and the line, where there is one), a non-zero exit, and the database exactly as it
was — after a good import, so "as it was" is not simply empty.

Truncated lines, wrong columns, wrong units, binary garbage, empty files, huge, negative and
non-finite numbers, an endless line, and paths that are not CSV files at all: a device, a
FIFO, a directory, a symlink to a device, and a system file outside the working folder.
There is no "allowed folder" for import: it is a CLI command that reads, with its user's
own permissions, any regular file it is given (the HTTP API has no import endpoint, so no
remote caller can make the service read a path). What it refuses is anything that is not a
regular file, before reading a byte (docs/import.md).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from gpuhistory.cli.main import cli
from gpuhistory.storage.engine import make_engine
from tests.conftest import FLEET4

START = "2026-01-01T00:00:00Z"
HOST = "filehost"
GOOD = FLEET4.read_text().splitlines()[:41]  # header and 10 ticks of 4 GPUs
HEADER = GOOD[0]
SMI_HEADER = ("timestamp, index, uuid, temperature.gpu, memory.used [MiB], "
              "memory.total [MiB], power.draw [W], clocks_event_reasons.active, pstate")
SMI_ROW = "2026/11/26 12:00:{s:02d}.000, {i}, GPU-hostile-{i}, 45, 1000 MiB, 81559 MiB, " \
          "70.00 W, 0x0000000000000000, P0"


def smi(*rows: str) -> str:
    good = [SMI_ROW.format(s=s, i=i) for s in range(3) for i in range(2)]
    return "\n".join([SMI_HEADER, *good, *rows]) + "\n"


def trace(*rows: str) -> str:
    return "\n".join([*GOOD, *rows]) + "\n"


RANDOM_BYTES = random.Random(7).randbytes(4096)

# (id, content, extra arguments, message; "{line}" is checked as "FILE:LINE:")
TRACE_CASES: list[tuple[str, str | bytes, str]] = [
    ("truncated last line", trace("1.0,0,31,3"), ":42: expected 12 cells, found 4"),
    ("truncated line mid-file", "\n".join([*GOOD[:5], "0.0,1,31", *GOOD[5:]]) + "\n",
     ":6: expected 12 cells, found 3"),
    ("truncated header", "t_s,gp\n0.0,0\n", ":1: header lacks required column(s) ['gpu']"),
    ("an extra cell", trace(GOOD[-1].replace("0.000", "11.0", 1) + ",99"),
     ":42: expected 12 cells, found 13"),
    ("columns of another file", "when,which,what\n1,2,3\n", ":1: unrecognised header"),
    ("a word in a number column", trace("11.0,0,hot,33,71.6,345,2619,0,480,81559,1,0"),
     ":42: column 'temperature_c': 'hot' is not a number"),
    ("a number beyond 64 bits", trace("11.0,0,31,33,71.6,345,2619,0,"
                                      "99999999999999999999999,81559,1,0"),
     ":42: column 'memory_used_mib'"),
    ("a negative temperature", trace("11.0,0,-40,33,71.6,345,2619,0,480,81559,1,0"),
     ":42: column 'temperature_c': '-40' is out of range"),
    ("NaN power", trace("11.0,0,31,33,nan,345,2619,0,480,81559,1,0"),
     ":42: column 'power_w': 'nan' is not finite"),
    ("infinite power", trace("11.0,0,31,33,1e999,345,2619,0,480,81559,1,0"),
     ":42: column 'power_w': '1e999' is not finite"),
    ("a time past the year 9999", trace("1e12,0,31,33,71.6,345,2619,0,480,81559,1,0"),
     ":42: the row's time"),
    ("a GPU index beyond 1023", trace("11.0,5000,31,33,71.6,345,2619,0,480,81559,1,0"),
     ":42: gpu 5000 is out of range"),
    ("time going back", trace("0.5,0,31,33,71.6,345,2619,0,480,81559,1,0"),
     ":42: t_s 0.5 goes back in time"),
    ("binary garbage", RANDOM_BYTES, ":1: not UTF-8"),
    ("garbage after good rows", trace().encode() + RANDOM_BYTES, ":42: not UTF-8"),
    ("a NUL byte", trace().encode() + b"11.0,0,3\x001,33\n", ":42: binary data (NUL byte)"),
    ("an image", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + RANDOM_BYTES, ":1: not UTF-8"),
    ("an empty file", b"", ":1: empty file"),
    ("blank lines only", b"\n\n\n", ":1: empty file"),
    ("a header only", HEADER + "\n", ":2: no data rows after the header"),
    ("an endless first line", b"t_s,gpu," + b"9" * (200 * 1024), ":1: a line longer than"),
    ("an endless line after good rows", trace().encode() + b"1" * (3 << 20),
     ":42: a line longer than"),
]

SMI_CASES: list[tuple[str, str | bytes, str]] = [
    ("smi truncated last line", smi("2026/11/26 12:00:09.000, 0, GPU-hostile-0, 4"),
     ":8: expected 9 cells, found 4"),
    ("smi without index", SMI_HEADER.replace("index, ", "") + "\n",
     ":1: header lacks required column(s) ['index']"),
    ("smi without a header", "\n".join(smi().splitlines()[1:]) + "\n", ":1: no header row"),
    ("smi wrong unit", smi(SMI_ROW.format(s=9, i=0).replace("70.00 W", "70.00 MHz")),
     ":8: column 'power.draw [W]': '70.00 MHz' has unit 'MHz', expected W"),
    ("smi bad timestamp", smi(SMI_ROW.format(s=9, i=0).replace("2026/11/26", "2026/13/45")),
     ":8: column 'timestamp'"),
    ("smi bad mask", smi(SMI_ROW.format(s=9, i=0).replace("0x0000000000000000", "0xZZ")),
     ":8: column 'clocks_event_reasons.active': '0xZZ' is not a number"),
    ("smi bad pstate", smi(SMI_ROW.format(s=9, i=0).replace("P0", "P99")),
     ":8: column 'pstate': 'P99' is not a performance state"),
    ("smi huge memory", smi(SMI_ROW.format(s=9, i=0).replace(
        "1000 MiB", "99999999999999999999999 MiB")), ":8: column 'memory.used [MiB]'"),
    ("smi index not a number", smi(SMI_ROW.format(s=9, i="x")),
     ":8: column 'index': 'x' is not a GPU index"),
    ("smi garbage after the header", smi().encode() + RANDOM_BYTES, ":8: not UTF-8"),
]


def snapshot(engine: sa.Engine) -> dict[str, Any]:
    """Every table, in full: what "nothing changed" compares."""
    out = {}
    with engine.connect() as conn:
        for table in sorted(sa.inspect(engine).get_table_names()):
            out[table] = sorted(map(tuple, conn.execute(sa.text(f'SELECT * FROM "{table}"'))),
                                key=repr)
    return out


class Db:
    """A database already holding a good import (so "unchanged" is not simply empty)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        done = run_import(path, FLEET4, "--start", START)
        assert done.exit_code == 0, done.output
        self.engine = make_engine(path)
        self.baseline = snapshot(self.engine)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Db]:
    database = Db(tmp_path_factory.mktemp("files") / "files.db")
    yield database
    database.engine.dispose()


def run_import(db: Path, file: Path | str, *args: str) -> Any:
    return CliRunner().invoke(cli, ["import", str(file), "--db", str(db), "--host-name",
                                    HOST, *args], catch_exceptions=False)


def check_refused(db: Db, file: Path | str, message: str, *args: str,
                  exit_code: int = 1) -> str:
    """The import fails with ``exit_code`` and ``message``; the database is as it was."""
    done = run_import(db.path, file, *args)
    assert done.exit_code == exit_code, done.output
    assert message in done.output, done.output
    assert snapshot(db.engine) == db.baseline
    return str(done.output)


@pytest.mark.parametrize(("content", "message"), [c[1:] for c in TRACE_CASES],
                         ids=[c[0] for c in TRACE_CASES])
def test_a_hostile_trace_is_refused_by_line_and_changes_nothing(
        db: Db, tmp_path: Path, content: str | bytes, message: str) -> None:
    """Refused with FILE:LINE: and the reason; the database is as before."""
    path = tmp_path / "hostile.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    output = check_refused(db, path, message, "--start", "2026-02-01T00:00:00Z")
    assert str(path) in output


@pytest.mark.parametrize(("content", "message"), [c[1:] for c in SMI_CASES],
                         ids=[c[0] for c in SMI_CASES])
def test_a_hostile_nvidia_smi_log_is_refused_by_line_and_changes_nothing(
        db: Db, tmp_path: Path, content: str | bytes, message: str) -> None:
    """The same for nvidia-smi logs: wrong units, times, masks, states, sizes."""
    path = tmp_path / "hostile-smi.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    output = check_refused(db, path, message, "--timezone", "UTC")
    assert str(path) in output


def test_the_good_files_above_do_import(tmp_path: Path) -> None:
    """The hostile cases differ from files that import: the same rows, unspoiled, do."""
    path = tmp_path / "good.csv"
    path.write_text(trace())
    assert run_import(tmp_path / "a.db", path, "--start", START).exit_code == 0
    path.write_text(smi())
    assert run_import(tmp_path / "b.db", path, "--timezone", "UTC").exit_code == 0


@pytest.mark.parametrize("fmt", ["auto", "trace", "nvidia-smi"])
def test_a_device_is_refused_before_a_byte_is_read(db: Db, fmt: str) -> None:
    """/dev/zero never ends and has no newline: refused as a device, in every format."""
    check_refused(db, "/dev/zero", "not a regular file (a device)", "--format", fmt,
                  *(["--start", START] if fmt == "trace" else []))


def test_a_symlink_to_a_device_is_refused(db: Db, tmp_path: Path) -> None:
    link = tmp_path / "innocent.csv"
    link.symlink_to("/dev/urandom")
    check_refused(db, link, "not a regular file (a device)", "--start", START)


def test_a_socket_is_refused(db: Db, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        check_refused(db, path, "cannot open")  # (sockets cannot be opened as files)


@pytest.mark.slow
def test_a_fifo_is_refused_without_blocking(db: Db, tmp_path: Path) -> None:
    """A FIFO with no writer would block a plain open() forever: a real process, bounded
    by a timeout, exits at once with the refusal and writes nothing."""
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-m", "gpuhistory.cli.main", "import", str(fifo), "--db",
         str(db.path), "--format", "trace", "--start", START], capture_output=True, text=True,
        timeout=60)
    assert done.returncode == 1, done.stderr
    assert "not a regular file (a FIFO)" in done.stderr
    assert snapshot(db.engine) == db.baseline


def test_a_directory_and_a_missing_path_are_usage_errors(db: Db, tmp_path: Path) -> None:
    check_refused(db, tmp_path, "is a directory", exit_code=2)
    check_refused(db, tmp_path / "absent.csv", "does not exist", exit_code=2)


def test_a_system_file_outside_the_folder_is_not_a_trace(db: Db, tmp_path: Path) -> None:
    """A regular file anywhere is read with the user's own rights, and refused unless it is
    a CSV of the right shape: /etc/passwd, also by a path climbing out of the folder."""
    climbing = os.path.relpath("/etc/passwd", tmp_path)
    for path in ("/etc/passwd", str(tmp_path / climbing)):
        output = check_refused(db, path, "unrecognised header")
        assert "root:" not in output  # the file's content is not echoed


def test_an_unreadable_file_is_refused(db: Db, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path = tmp_path / "secret.csv"
    path.write_text(trace())
    path.chmod(0)
    check_refused(db, path, "cannot open: Permission denied", "--start", START)
