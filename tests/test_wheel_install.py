"""The distribution as a user gets it: built (sdist, then the wheel from the sdist), checked
by twine, installed into a fresh virtual environment and run from a folder that has nothing
to do with the checkout, with no PYTHONPATH. Every command and the dashboard must work from
the installed files alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests

from gpuhistory import __version__, assets
from tests.conftest import REPO
from tests.test_serve import free_port

pytestmark = pytest.mark.slow

WHEEL_MUST_HOLD = [
    "gpuhistory/assets.py",
    "gpuhistory/migrations/env.py",
    "gpuhistory/migrations/script.py.mako",
    "gpuhistory/migrations/versions/0001_core_log.py",
    "gpuhistory/web/index.html",
    "gpuhistory/web/static/js/main.js",
    "gpuhistory/web/static/css/dashboard.css",
    "gpuhistory/web/vendor/uplot/uPlot.iife.min.js",
    "gpuhistory/web/vendor/uplot/uPlot.min.css",
    "gpuhistory/web/vendor/uplot/LICENSE",
    "gpuhistory/data/traces/h100_burn.csv",
    f"gpuhistory-{__version__}.dist-info/licenses/LICENSE",
]


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a user who has never seen the checkout: no PYTHONPATH, no
    GPUHISTORY_* settings, a home and data dir of their own; pip's own settings kept."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GPUHISTORY_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_the_installed_wheel_migrates_imports_and_serves_the_dashboard(tmp_path: Path) -> None:
    """sdist and wheel build and pass `twine check`; the wheel holds the migrations and the
    dashboard with its chart library. Installed in a new venv and run from an unrelated
    folder: `db upgrade`, `import` of the bundled trace, `status`, then `serve` (sim), whose
    API answers, whose `/` is the dashboard (200, not 503), and whose uPlot is the installed
    package's file."""
    home, elsewhere, dist = tmp_path / "home", tmp_path / "elsewhere", tmp_path / "dist"
    home.mkdir()
    elsewhere.mkdir()
    env = clean_env(home)
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], elsewhere, env)
    wheel = dist / f"gpuhistory-{__version__}-py3-none-any.whl"
    assert sorted(p.name for p in dist.iterdir()) == [wheel.name,
                                                      f"gpuhistory-{__version__}.tar.gz"]
    run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
        elsewhere, env)
    files = wheel_files(wheel)
    assert [name for name in WHEEL_MUST_HOLD if name not in files] == []
    assert not any("node_modules" in n or n.endswith("package.json") for n in files)

    # A new venv without its own pip, filled by this one's pip (--python), uncompiled: the
    # same files as `pip install` there, in a third of the time.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], elsewhere, env)
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "-q", "--no-compile", str(wheel)], elsewhere, env)
    gpuhistory = str(venv / "bin" / "gpuhistory")
    installed = Path(run([str(venv / "bin" / "python"), "-c",
                          "from gpuhistory import assets; print(assets.web_root())"],
                         elsewhere, env).strip())
    assert installed.is_relative_to(venv) and not installed.is_relative_to(REPO)

    db = str(elsewhere / "gh.db")
    assert "at revision" in run([gpuhistory, "db", "upgrade", "--db", db], elsewhere, env)
    trace = installed.parent / "data" / "traces" / "h100_burn.csv"
    run([gpuhistory, "import", str(trace), "--db", db, "--start", "2026-11-26T03:00:00Z",
         "--host-name", "wheelhost"], elsewhere, env)
    status = json.loads(run([gpuhistory, "status", "--db", db, "--host", "wheelhost",
                             "--json"], elsewhere, env))
    assert status["host"] == "wheelhost" and status["count"] >= 1

    port = free_port()
    serve = subprocess.Popen(
        [gpuhistory, "serve", "--db", db, "--backend", "sim", "--port", str(port),
         "--interval", "0.5"], cwd=elsewhere, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, serve)
        everything = requests.get(f"{url}/api/gpu/status/all", timeout=5)
        assert everything.status_code == 200 and everything.json()["count"] >= 1
        page = requests.get(f"{url}/", headers={"Accept": "text/html"}, timeout=5)
        assert page.status_code == 200 and "/ui/vendor/uPlot.iife.min.js" in page.text
        library = requests.get(f"{url}/ui/vendor/uPlot.iife.min.js", timeout=5)
        assert library.status_code == 200 and "javascript" in library.headers["Content-Type"]
        shipped = installed / "vendor" / "uplot" / "uPlot.iife.min.js"
        assert library.content == shipped.read_bytes() == assets.vendor_bytes(
            "uPlot.iife.min.js")
        assert requests.get(f"{url}/ui/js/main.js", timeout=5).status_code == 200
    finally:
        serve.send_signal(signal.SIGTERM)
        _, stderr = serve.communicate(timeout=30)
    assert serve.returncode == 0, stderr


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Poll /healthz until the server answers (bounded; not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read()}")
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise AssertionError("serve did not become ready")
