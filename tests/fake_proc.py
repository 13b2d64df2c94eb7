"""A fake ``/proc`` tree under a test's tmp_path, read by the real ProcReader.

``FakeProc.add`` writes a process's ``comm``, ``cmdline``, ``status``, ``cgroup`` and
``environ`` as the kernel lays them out; ``deny`` marks files this reader may not read
(tests run as root, who may read anything: the reader refuses them as the kernel refuses
another user's ``environ``); ``remove`` is a process that exited.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

from gpuhistory.sampling.procinfo import ProcReader

USERS = {0: "root", 1000: "alice", 1001: "bob"}


class DenyingReader(ProcReader):
    """A ProcReader for which the files ``FakeProc`` denied raise PermissionError."""

    def __init__(self, root: Path, denied: set[Path], users: Mapping[int, str]) -> None:
        super().__init__(root, user_name=users.get)
        self.denied = denied

    def open_file(self, path: Path) -> BinaryIO:
        if path in self.denied:
            raise PermissionError(13, "Permission denied", str(path))
        return super().open_file(path)


class FakeProc:
    """A /proc tree: processes by pid, each a directory of the files ProcReader reads."""

    def __init__(self, root: Path, users: Mapping[int, str] = USERS) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.users = dict(users)
        self.denied: set[Path] = set()

    def add(self, pid: int, name: str = "python", uid: int = 1000,
            cgroup: str | Iterable[str] = "0::/user.slice/user-1000.slice/session-1.scope",
            environ: Mapping[str, str] | None = None, cmdline: list[str] | None = None,
            deny: Iterable[str] = ()) -> None:
        """A process: ``cgroup`` is the file's text or its lines; ``deny`` names files
        (``status``, ``cgroup``, ``environ``, ...) this reader is refused."""
        d = self.root / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "comm").write_text(name[:15] + "\n")
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline or [name]) + b"\0")
        (d / "status").write_text(
            f"Name:\t{name[:15]}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\n"
            f"Pid:\t{pid}\nPPid:\t1\nTracerPid:\t0\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
            f"Gid:\t{uid}\t{uid}\t{uid}\t{uid}\nNSpid:\t{pid}\n")
        text = cgroup if isinstance(cgroup, str) else "\n".join(cgroup)
        (d / "cgroup").write_text(text.rstrip("\n") + "\n")
        env = {"PATH": "/usr/bin", "HOME": f"/home/{self.users.get(uid, uid)}",
               **(environ or {})}
        (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0"
                                             for k, v in env.items()))
        for name_ in deny:
            self.denied.add(d / name_)

    def remove(self, pid: int) -> None:
        """The process exited: its directory is gone."""
        shutil.rmtree(self.root / str(pid), ignore_errors=True)

    def reader(self) -> DenyingReader:
        return DenyingReader(self.root, self.denied, self.users)
