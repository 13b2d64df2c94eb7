"""The package as it ships: what pyproject.toml maps into the distribution, the pinned copy of
the chart library, the metadata, and the systemd units. (The built wheel, installed and run
outside the checkout, is tests/test_wheel_install.py.)"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest

import gpuhistory
from gpuhistory import assets
from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
UNITS = REPO / "deploy" / "systemd"
UNIT_BINARY = "/usr/local/bin/gpuhistory"


def sri_sha512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def vendor_drift(web: Path) -> list[str]:
    """How the shipped uPlot in ``web`` departs from the release web/package-lock.json pins:
    SOURCE.json (written by tools/vendor_uplot.py after checking npm's tarball against the
    lock's sha512) must name that release, and every shipped file must hash as recorded."""
    lock = json.loads((web / "package-lock.json").read_text())["packages"]["node_modules/uplot"]
    folder = web / "vendor" / "uplot"
    source = json.loads((folder / "SOURCE.json").read_text())
    problems = [f"SOURCE.json {key} {source[key]!r} != lock {lock[key]!r}"
                for key in ("version", "integrity") if source[key] != lock[key]]
    for name, entry in source["files"].items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sri_sha512(path.read_bytes()) != entry["sha512"]:
            problems.append(f"{name} differs from uplot {source['version']}'s {entry['from']}")
    return problems


def test_the_shipped_chart_library_is_the_release_the_lock_file_pins() -> None:
    """web/vendor/uplot/ holds exactly uPlot as pinned by web/package-lock.json (version and
    tarball integrity), the files the page loads and the license among them."""
    assert vendor_drift(REPO / "web") == []
    package = json.loads((REPO / "web" / "package.json").read_text())
    source = json.loads((REPO / "web" / "vendor" / "uplot" / "SOURCE.json").read_text())
    assert package["dependencies"]["uplot"] == source["version"]
    shipped = {f"vendor/uplot/{name}" for name in source["files"]}
    assert set(assets.VENDOR.values()) | {assets.VENDOR_LICENSE} <= shipped
    assert assets.vendor_bytes("uPlot.iife.min.js").startswith(
        f"/*! https://github.com/leeoniya/uPlot (v{source['version']}) */".encode())


def test_the_drift_check_notices_an_edited_file_and_a_bumped_lock(tmp_path: Path) -> None:
    """The check above can fail: one byte changed in the JS, or a lock file naming another
    release than the copy, is reported."""
    web = tmp_path / "web"
    shutil.copytree(REPO / "web" / "vendor", web / "vendor")
    shutil.copy(REPO / "web" / "package-lock.json", web)
    assert vendor_drift(web) == []
    js = web / "vendor" / "uplot" / "uPlot.iife.min.js"
    js.write_bytes(js.read_bytes().replace(b"uPlot", b"uPlat", 1))
    assert vendor_drift(web) == ["uPlot.iife.min.js differs from uplot 1.6.32's "
                                 "package/dist/uPlot.iife.min.js"]
    lock = json.loads((web / "package-lock.json").read_text())
    lock["packages"]["node_modules/uplot"]["version"] = "1.6.33"
    (web / "package-lock.json").write_text(json.dumps(lock))
    assert any(p.startswith("SOURCE.json version") for p in vendor_drift(web))


def test_every_folder_of_the_package_is_in_the_distribution() -> None:
    """pyproject.toml lists its packages by hand (for the package-dir mapping of migrations/
    and web/): every folder of gpuhistory/, migrations/ and web/ that holds files must be in
    the list, or the wheel would silently lack it."""
    tool = PYPROJECT["tool"]["setuptools"]
    assert tool["package-dir"] == {"gpuhistory.migrations": "migrations", "gpuhistory.web": "web"}
    roots = {"gpuhistory": REPO / "gpuhistory"} | {
        name: REPO / folder for name, folder in tool["package-dir"].items()}
    folders = {}
    for name, root in roots.items():
        folders[name] = root
        for folder in root.rglob("*"):
            if folder.is_dir() and not {"__pycache__", "node_modules"} & set(folder.parts):
                folders[".".join([name, *folder.relative_to(root).parts])] = folder
    holding_files = {name for name, folder in folders.items()
                     if any(p.is_file() and p.suffix != ".pyc" for p in folder.iterdir())}
    assert holding_files - set(tool["packages"]) == set()
    assert set(tool["packages"]) - set(folders) == set()


def test_the_package_finds_its_files_through_importlib_resources() -> None:
    """gpuhistory.assets answers from the installed packages gpuhistory.web and
    gpuhistory.migrations, and refuses a path that leaves the dashboard's folder."""
    assert assets.web_root() == Path(str(resources.files("gpuhistory.web")))
    assert (assets.web_root() / "index.html").is_file()
    assert (assets.migrations_dir() / "env.py").is_file()
    assert (assets.migrations_dir() / "versions" / "0001_core_log.py").is_file()
    assert assets.dashboard_file("static/js/main.js").is_file()
    for escape in ("../pyproject.toml", "/etc/passwd", "static/../../alembic.ini"):
        with pytest.raises(ValueError):
            assets.dashboard_file(escape)
    with pytest.raises(KeyError):
        assets.vendor_file("package.json")


def test_alembic_by_hand_from_the_checkout_still_works(tmp_path: Path) -> None:
    """alembic.ini at the top of the repository still drives the migrations directly."""
    db = tmp_path / "by-hand.db"
    env = {"GPUHISTORY_DB": f"sqlite:///{db}", "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    head = subprocess.run([sys.executable, "-m", "alembic", "current"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "(head)" in head.stdout, head.stdout + head.stderr


def test_metadata_version_changelog_and_license() -> None:
    """One version (gpuhistory.__version__), named by the changelog's newest entry; MIT, as
    the LICENSE file says; no invented project URLs; classifiers present."""
    project = PYPROJECT["project"]
    assert project["dynamic"] == ["version"] and "version" not in project
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "gpuhistory.__version__"}
    entries = re.findall(r"^## (\S+)", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert entries and entries[0] == gpuhistory.__version__
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
    assert "urls" not in project
    assert any(c.startswith("Topic :: System :: Monitoring") for c in project["classifiers"])
    assert {"build", "twine"} <= {re.split(r"[<>=\[]", r)[0]
                                  for r in project["optional-dependencies"]["test"]}


def test_make_serve_installs_the_runtime_and_make_test_the_test_extra() -> None:
    """Neither set-up rule runs npm (it is the maintainer's `make vendor`); serve's venv gets
    the runtime dependencies only."""
    makefile = (REPO / "Makefile").read_text()
    rules = {m.group(1): m.group(2) for m in re.finditer(
        r"^(\S+):[^\n]*\n((?:\t[^\n]*\n)*)", makefile, re.M)}
    assert re.search(r"^serve: \$\(RUNTIME\)$", makefile, re.M)
    assert re.search(r"^test: \$\(STAMP\)$", makefile, re.M)
    assert "pip install -q -e .\n" in rules["$(RUNTIME)"]
    assert "pip install -q -e '.[test]'" in rules["$(STAMP)"]
    setup = rules["$(RUNTIME)"] + rules["$(STAMP)"]
    assert "npm" not in setup and "node" not in setup
    assert "npm" not in "".join(rules[t] for t in ("serve", "test"))
    assert "tools/vendor_uplot.py" in rules["vendor"]


def _unit(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in path.read_text().splitlines()
            if "=" in line and not line.startswith("#")]


HARDENING = {"DynamicUser": "yes", "StateDirectory": "gpuhistory", "ProtectSystem": "strict",
             "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
             "CapabilityBoundingSet": "", "RestrictSUIDSGID": "yes",
             "EnvironmentFile": "-/etc/gpuhistory/gpuhistory.env"}


@pytest.mark.parametrize(("unit", "command", "gpus"), [
    ("gpuhistory.service", "serve", True), ("gpuhistory-sampler.service", "sampler", True),
    ("gpuhistory-api.service", "api", False)])
def test_systemd_units_run_their_role_hardened(unit: str, command: str, gpus: bool) -> None:
    """Each unit runs its role as a dynamic user sharing /var/lib/gpuhistory, with the
    system read-only; only the roles that sample may open the NVIDIA devices."""
    settings = _unit(UNITS / unit)
    values = dict(settings)
    assert values["ExecStart"] == f"{UNIT_BINARY} {command}"
    assert {key: values.get(key) for key in HARDENING} == HARDENING
    assert values["User"] == "gpuhistory"  # one name: the pair shares one dynamic UID
    assert ("Environment", "GPUHISTORY_DB=/var/lib/gpuhistory/gpuhistory.db") in settings
    allowed = [value for key, value in settings if key == "DeviceAllow"]
    if gpus:
        assert values["PrivateDevices"] == "no" and values["DevicePolicy"] == "closed"
        assert "char-nvidia-frontend rw" in allowed
    else:
        assert values["PrivateDevices"] == "yes" and allowed == []


def _verify(units: list[Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units)],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (apt-get install systemd)")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the three units without a word (it names every
    unknown key or bad value, and a missing ExecStart binary: each copy here runs a real
    executable in place of /usr/local/bin/gpuhistory). A misspelt key is caught."""
    executable = shutil.which("gpuhistory") or str(Path(sys.executable).parent / "gpuhistory")
    copies = []
    for unit in sorted(UNITS.glob("*.service")):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(UNIT_BINARY, executable))
        copies.append(copy)
    assert [c.name for c in copies] == ["gpuhistory-api.service", "gpuhistory-sampler.service",
                                        "gpuhistory.service"]
    checked = _verify(copies, tmp_path)
    ours = [line for line in (checked.stdout + checked.stderr).splitlines()
            if "gpuhistory" in line]
    assert checked.returncode == 0 and ours == [], checked.stdout + checked.stderr
    broken = tmp_path / "broken" / "gpuhistory.service"
    broken.parent.mkdir()
    broken.write_text(copies[-1].read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    complaint = _verify([broken], tmp_path)
    assert "NoNewPrivilege" in complaint.stdout + complaint.stderr


def test_the_environment_file_example_names_only_real_settings() -> None:
    """Every variable in gpuhistory.env.example (set or commented out) is one the CLI reads."""
    from gpuhistory.cli.main import cli

    text = (UNITS / "gpuhistory.env.example").read_text()
    named = set(re.findall(r"^#?(GPUHISTORY_[A-Z_]+)=", text, re.M))
    known = {"GPUHISTORY_TOKEN"}
    for command in cli.commands.values():
        known |= {p.envvar for p in command.params if isinstance(p.envvar, str)}
    assert named and named <= known, named - known
