"""The seed's eight usage examples (examples/*.py) run as scripts: exit 0, and say the
thing each one is there to show. Each runs against its own database via ``--db``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

EXAMPLES = {
    "01_basic_status.py": ["GPU available: True", "state OPTIMAL",
                           "advice: speed x1.0", "then stopped"],
    "02_memory_allocation.py": ["allocate llm_model 2048 MiB: True",
                                "allocate llm_model again: False",
                                "deallocate llm_model: True",
                                "deallocate llm_model again: False"],
    "03_temperature_monitoring.py": ["GPU 1: 79 C THROTTLED", "trend rising",
                                     "trend falling"],
    "04_throttling.py": ["state CRITICAL  -> speed x0.0", "critical pause: 60 s left",
                         "state THROTTLED -> speed x0.5, batch 32/64"],
    "05_callbacks.py": ["CRITICAL: GPU 1 at 86°C", "throttle: GPU 1 at 75°C",
                        "overheat: GPU 1", "resume: GPU 1 is OPTIMAL again"],
    "06_multi_gpu.py": ["4 GPUs on", "GPU 1: CRITICAL", "best GPU for a new job: 3",
                        "leased 16384 MiB on GPU 3: True"],
    "07_metrics_history.py": ["last 12 samples of GPU 0:", "all 41 samples",
                              "after a restart: 41 samples"],
    "08_configuration.py": ["GPU 1 at 84 C: THROTTLED", "updated: temp_throttle 80",
                            "GPU 1 at 84 C: CRITICAL",
                            "rejected {'temp_throttle': 60}: ",
                            "rejected {'temp_throtle': 80}: unknown configuration key",
                            "after a restart: temp_throttle 80"],
}


def test_every_example_is_listed() -> None:
    """Each script in examples/ is exercised here, and the README names each one."""
    scripts = sorted(p.name for p in (REPO / "examples").glob("*.py"))
    assert scripts == sorted(EXAMPLES)
    readme = (REPO / "examples" / "README.md").read_text()
    assert all(name in readme for name in scripts)


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs_and_shows_its_point(script: str, tmp_path: Path) -> None:
    """The example exits 0 within seconds and prints its key lines."""
    done = subprocess.run(
        [sys.executable, "-W", "error", str(REPO / "examples" / script),
         "--db", str(tmp_path / "example.db")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("GPUHISTORY_")},
             "PYTHONIOENCODING": "utf-8"},
    )
    assert done.returncode == 0, done.stderr
    for line in EXAMPLES[script]:
        assert line in done.stdout, f"{script}: {line!r} not in:\n{done.stdout}"
    assert (tmp_path / "example.db").exists()

