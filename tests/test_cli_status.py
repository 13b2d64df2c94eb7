"""``gpuhistory status`` as people use it, run as a real process on a real SQLite file: in a
pseudo-terminal (pexpect) it is coloured and ``--watch`` redraws until Ctrl-C (exit 0);
piped or with NO_COLOR there is not one escape code; ``-p`` lists the processes recorded
under each GPU; relative times work for ``--at``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from gpuhistory.cli.main import cli
from gpuhistory.cli.output import render_text, status_table
from gpuhistory.storage.engine import make_engine
from gpuhistory.storage.schema import gpu_processes, gpus
from tests.conftest import REPO

pytestmark = pytest.mark.slow

TRACE = REPO / "gpuhistory" / "data" / "traces" / "fleet4_derived.csv"
HOST = "clihost"
ESC = "\x1b"
TIMEOUT = 60  # the CLI starts in seconds on a loaded machine; nothing here waits on a timer


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GPUHISTORY_") and k not in ("NO_COLOR", "FORCE_COLOR")}
    return {**env, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "40", **extra}


IMPORTED_AT_MS: list[int] = []  # when the module's database was made (its "now")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bundled 4-GPU trace imported to start 10 min ago, with two processes on GPU 2 (one
    of them ended) and one on GPU 0."""
    path = tmp_path_factory.mktemp("status") / "status.db"
    done = CliRunner().invoke(cli, ["import", str(TRACE), "--db", str(path), "--host-name",
                                    HOST, "--start", "-10m"])
    assert done.exit_code == 0, done.output
    engine = make_engine(str(path))
    with engine.begin() as conn:
        row = {r.gpu_index: r.id for r in conn.execute(sa.select(gpus.c.id, gpus.c.gpu_index))}
        now = time.time_ns() // 1_000_000  # the trace covers about -10 min .. -5.7 min
        IMPORTED_AT_MS.append(now)
        conn.execute(gpu_processes.insert(), [
            {"gpu_id": row[2], "pid": 4242, "name": "python", "used_memory_mib": 38_000,
             "first_seen_ms": now - 300_000, "last_seen_ms": now, "ended_ms": None},
            {"gpu_id": row[2], "pid": 977, "name": "old-job", "used_memory_mib": 1_000,
             "first_seen_ms": now - 600_000, "last_seen_ms": now - 480_000,
             "ended_ms": now - 480_000},
            {"gpu_id": row[0], "pid": 13, "name": "nvtop", "used_memory_mib": None,
             "first_seen_ms": now - 300_000, "last_seen_ms": now, "ended_ms": None}])
    engine.dispose()
    yield path


def spawn(db: Path, *args: str, **env: str) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, ["-m", "gpuhistory.cli.main", "status", "--db",
                                          str(db), "--host", HOST, *args],
                         env=_env(**env), encoding="utf-8", timeout=TIMEOUT,
                         dimensions=(40, 200))


def run_piped(db: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuhistory.cli.main", "status", "--db",
                           str(db), "--host", HOST, *args], capture_output=True, text=True,
                          env=_env(**env), timeout=TIMEOUT)


def test_watch_redraws_in_a_terminal_and_exits_0_on_ctrl_c(db: Path) -> None:
    """--watch 0.2 in a pseudo-terminal draws the table, redraws it (a second frame, with its
    own header), and on Ctrl-C stops with exit status 0 — no traceback, no "Aborted!"."""
    child = spawn(db, "--watch", "0.2")
    child.expect(r"Every 0\.2 s: ")
    child.expect("BACKEND")
    child.expect(r"Every 0\.2 s: ")  # the second frame
    child.expect("BACKEND")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "Traceback" not in child.before and "Aborted" not in child.before


def test_colour_on_a_terminal_and_none_with_no_color(db: Path) -> None:
    """In a terminal the states are coloured (SGR escape codes); with NO_COLOR set, the
    same terminal gets not one escape code."""
    coloured = spawn(db)
    coloured.expect(pexpect.EOF)
    assert re.search(r"\x1b\[[0-9;]*m", coloured.before), coloured.before
    plain = spawn(db, NO_COLOR="1")
    plain.expect(pexpect.EOF)
    assert "OPTIMAL" in plain.before and ESC not in plain.before
    for child in (coloured, plain):
        child.close()
        assert child.exitstatus == 0


def test_piped_output_has_no_escape_codes_and_watch_stops_on_sigint(db: Path) -> None:
    """Piped, the table is plain text without trailing blanks; piped --watch prints frame
    after frame, still plain, and SIGINT ends it with exit status 0."""
    once = run_piped(db)
    assert once.returncode == 0, once.stderr
    assert ESC not in once.stdout
    assert once.stdout.splitlines()[0].split()[:3] == ["GPU", "NAME", "STATE"]
    assert all(line == line.rstrip() for line in once.stdout.splitlines())

    proc = subprocess.Popen([sys.executable, "-m", "gpuhistory.cli.main", "status", "--db",
                             str(db), "--host", HOST, "--watch", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    assert proc.stdout is not None
    seen, frames = [], 0
    while frames < 2:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        seen.append(line)
        frames += line.startswith("Every 0.1 s: gpuhistory status")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert ESC not in "".join(seen) + out


def test_processes_under_each_gpu(db: Path) -> None:
    """-p lists the running processes under their GPU — pid, name, MiB — largest first;
    an ended one is not listed now but is at a time it ran (--at, relative); --json
    carries them too."""
    out = run_piped(db, "-p").stdout.splitlines()
    gpu2 = next(i for i, line in enumerate(out) if re.match(r"2\s", line))
    assert re.search(r"└ 4242 python\s+.*38000 MiB", out[gpu2 + 1]), out
    assert "old-job" not in "\n".join(out)
    gpu0 = next(i for i, line in enumerate(out) if re.match(r"0\s", line))
    assert re.search(r"└ 13 nvtop\s+.*-", out[gpu0 + 1])
    # old-job ran from -10 to -8 min of the import: ask about -9 min of it, relative to now
    ago_s = 540 + (time.time_ns() // 1_000_000 - IMPORTED_AT_MS[0]) // 1000
    then = run_piped(db, "-p", "--at", f"-{ago_s}s").stdout
    assert "old-job" in then and "4242" not in then
    doc = json.loads(run_piped(db, "-p", "--json").stdout)
    by_gpu = {g["gpu_id"]: g["processes"] for g in doc["gpus"]}
    assert [p["pid"] for p in by_gpu[2]] == [4242] and by_gpu[1] == []


def test_a_user_column_only_when_the_log_has_users() -> None:
    """A USER column appears when the log names a process's user ("-" for one it does not),
    and not at all when it names none."""
    doc = {"gpu_id": 0, "name": "H100", "host": "h", "state": "NORMAL", "backend": "nvml",
           "metrics": {}, "sample_age_seconds": 531.084,
           "throttling": {"speed_multiplier": 1.0}}
    with_users = render_text(status_table([doc], {("h", 0): [
        {"pid": 1, "name": "train", "used_memory_mb": 10, "user": "alice"},
        {"pid": 2, "name": "infer", "used_memory_mb": 5}]})).splitlines()
    assert with_users[0].split()[:4] == ["GPU", "NAME", "USER", "STATE"]
    assert with_users[2].split()[:4] == ["└", "1", "train", "alice"]
    assert with_users[3].split()[:4] == ["└", "2", "infer", "-"]
    without = render_text(status_table([doc], {("h", 0): [
        {"pid": 2, "name": "infer", "used_memory_mb": 5}]})).splitlines()
    assert "USER" not in without[0] and without[0].split()[:3] == ["GPU", "NAME", "STATE"]
    assert "8 min 51 s" in without[1]  # the sample's age, for people


def test_watch_refuses_json_and_at(db: Path) -> None:
    """--watch redraws now as a table: with --json or --at it is a usage error (exit 2)."""
    for extra in (["--json"], ["--at", "-1h"]):
        result = CliRunner().invoke(cli, ["status", "--db", str(db), "--watch", *extra])
        assert result.exit_code == 2 and "--watch" in result.output
