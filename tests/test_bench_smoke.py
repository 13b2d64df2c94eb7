"""The benchmark harness runs end to end (a smoke test: nothing here is timed or judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, check=False)


def test_help() -> None:
    result = _bench("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout and "--only" in result.stdout


def test_quick_run_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    result = _bench("--quick", "--only", "tick", "storage", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    header = result.stdout.splitlines()[0].split()
    assert header[:3] == ["benchmark", "figure", "value"]
    written = list(tmp_path.glob("bench-*.json"))
    assert len(written) == 1
    data = json.loads(written[0].read_text())
    assert data["machine"]["cpus"] and data["machine"]["python"]
    assert data["date"] and "--quick" in data["command"]
    assert data["quick"] is True and not data["skipped"]
    benchmarks = {f["benchmark"] for f in data["figures"]}
    assert benchmarks == {"tick", "storage"}
    for figure in data["figures"]:
        assert figure["name"] and figure["unit"] is not None
        assert isinstance(figure["value"], int | float)
