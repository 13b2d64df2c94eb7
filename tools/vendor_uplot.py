"""Refresh the dashboard's copy of uPlot from npm (a maintainer's command: ``make vendor``).

The version is the one pinned in ``web/package-lock.json``. The script asks npm for that
release's tarball (``npm pack``), checks the tarball against the lock file's sha512
integrity, and copies the distributed files the dashboard serves (and the license) into
``web/vendor/uplot/``, with ``SOURCE.json`` recording where they came from: the package,
its version, the tarball's integrity and each file's sha512. ``tests/test_packaging.py``
checks the shipped files against that record and the record against the lock file, so the
shipped copy cannot drift from the pinned release. Only this script needs Node.js and npm.

To move to another release: ``npm install uplot@X.Y.Z --prefix web --package-lock-only``,
then ``make vendor``, then commit ``web/`` together.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"
PACKAGE = "uplot"
TARGET = WEB / "vendor" / "uplot"
# Where each shipped file is in the npm tarball.
FILES = {
    "uPlot.iife.min.js": "package/dist/uPlot.iife.min.js",
    "uPlot.min.css": "package/dist/uPlot.min.css",
    "LICENSE": "package/LICENSE",
}


def sri_sha512(data: bytes) -> str:
    """The Subresource Integrity form npm writes: ``sha512-<base64 digest>``."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def pinned() -> tuple[str, str]:
    """The version and tarball integrity of uPlot in web/package-lock.json."""
    lock = json.loads((WEB / "package-lock.json").read_text())
    entry = lock["packages"][f"node_modules/{PACKAGE}"]
    return entry["version"], entry["integrity"]


def fetch_tarball(version: str, folder: Path) -> Path:
    """``npm pack`` the release into ``folder`` (npm's cache and registry settings apply)."""
    out = subprocess.run(["npm", "pack", f"{PACKAGE}@{version}", "--json", "--silent"],
                         cwd=folder, check=True, capture_output=True, text=True).stdout
    return folder / json.loads(out)[0]["filename"]


def main() -> int:
    version, integrity = pinned()
    with tempfile.TemporaryDirectory() as tmp:
        tarball = fetch_tarball(version, Path(tmp))
        got = sri_sha512(tarball.read_bytes())
        if got != integrity:
            print(f"error: {tarball.name} has integrity {got}, "
                  f"web/package-lock.json pins {integrity}", file=sys.stderr)
            return 1
        TARGET.mkdir(parents=True, exist_ok=True)
        hashes = {}
        with tarfile.open(tarball) as archive:
            for name, member in FILES.items():
                extracted = archive.extractfile(member)
                if extracted is None:
                    print(f"error: {member} is not a file in {tarball.name}", file=sys.stderr)
                    return 1
                data = extracted.read()
                (TARGET / name).write_bytes(data)
                hashes[name] = sri_sha512(data)
    source = {"package": PACKAGE, "version": version, "integrity": integrity,
              "files": {name: {"from": member, "sha512": hashes[name]}
                        for name, member in FILES.items()}}
    (TARGET / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    print(f"{PACKAGE} {version}: {', '.join(FILES)} -> {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
