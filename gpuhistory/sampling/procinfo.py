"""Who runs a process and where, read from ``/proc``: its name, its user, and the Slurm job,
Kubernetes pod, container or systemd unit that holds it.

Read from ``/proc/<pid>/comm`` and ``cmdline`` (the name, as psutil gives it),
``/proc/<pid>/status`` (the real uid; the name from the password database, else the uid
as text), ``/proc/<pid>/cgroup`` (cgroup v1 and v2 paths: where the process runs) and, for
the Slurm job only when the cgroup does not name one, ``/proc/<pid>/environ``
(``SLURM_JOB_ID``, ``SLURM_STEP_ID``; readable for one's own processes or as root). Every
file is read on its own: one that is missing or denied leaves its fields None, never an
error and never a guess. The root is injectable, so tests read a fake tree.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

PROC_ROOT = "/proc"
MAX_NAME = 255  # gpu_processes.name
MAX_USER = 64  # gpu_processes.user_name
MAX_ID = 64  # container_id, pod_uid
MAX_JOB = 32  # slurm_job_id, slurm_step
MAX_UNIT = 255  # systemd_unit
MAX_FILE_BYTES = 1 << 20  # a larger environ or cgroup file is read this far only
MAX_UID = 2**31 - 1  # gpu_processes.uid is a signed 32-bit integer: a larger uid is unknown
COMM_LENGTH = 15  # the kernel truncates a task's name to 15 characters

# The attribution columns of gpu_processes, in Owner's field order.
OWNER_COLUMNS: tuple[str, ...] = ("uid", "user_name", "slurm_job_id", "slurm_step",
                                  "container_id", "pod_uid", "systemd_unit")

# Slurm: v1 ``/slurm/uid_1000/job_4711/step_0`` (``/slurm_<node>/`` with several slurmd),
# v2 ``/system.slice/slurmstepd.scope/job_4711/step_batch/user/task_0``.
_SLURM = re.compile(r"/(?:slurm(?:_[^/]+)?|[^/]*slurmstepd\.scope)/(?:uid_\d+/)?"
                    r"job_(\d{1,32})(?:/step_([A-Za-z0-9_]{1,32}))?(?:/|$)")
# Kubernetes pods: cgroupfs ``pod<uid>``, systemd ``kubepods-burstable-pod<uid>.slice``
# with the uid's dashes as underscores; static pods have a 32-hex-digit uid.
_POD = re.compile(r"^(?:kubepods(?:-[a-z]+)?-)?pod([0-9a-f][0-9a-f_-]{31,35})(?:\.slice)?$")
# A container: a bare 64-hex-digit cgroup (``/docker/<id>``, a pod's ``<id>``) or a
# runtime's scope (``docker-<id>.scope``, ``libpod-<id>.scope``, ``cri-containerd-<id>``,
# ``crio-<id>.scope``).
_CONTAINER = re.compile(r"^(?:(?:docker|libpod|cri-containerd|crio|containerd)-)?"
                        r"([0-9a-f]{64})(?:\.scope)?$")
_UNIT = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.(?:service|scope)$")
# Slurm's reserved step ids (slurm.h) as ``SLURM_STEP_ID`` gives them, by name.
_SLURM_STEPS = {"4294967290": "interactive", "4294967291": "batch", "4294967292": "extern"}
_DIGITS = re.compile(r"^\d{1,32}$")
_STEP = re.compile(r"^[A-Za-z0-9_]{1,32}$")


@dataclass(frozen=True, slots=True)
class Owner:
    """Who runs a process and where; each field None where it could not be read."""

    uid: int | None = None
    user_name: str | None = None
    slurm_job_id: str | None = None
    slurm_step: str | None = None
    container_id: str | None = None
    pod_uid: str | None = None
    systemd_unit: str | None = None

    def columns(self) -> dict[str, Any]:
        """The gpu_processes columns (``OWNER_COLUMNS``) with this owner's values."""
        return asdict(self)

    @classmethod
    def from_columns(cls, row: Any) -> Owner | None:
        """The owner a row (mapping or named row) records; None when it records nothing."""
        get = row.get if isinstance(row, dict) else lambda name: getattr(row, name, None)
        owner = cls(**{name: get(name) for name in OWNER_COLUMNS})
        return owner if owner != NOBODY else None


NOBODY = Owner()


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a cgroup path says a process runs."""

    slurm_job_id: str | None = None
    slurm_step: str | None = None
    container_id: str | None = None
    pod_uid: str | None = None
    systemd_unit: str | None = None


def cgroup_paths(text: str) -> list[str]:
    """The paths of a ``/proc/<pid>/cgroup`` file, the unified (v2, ``0::``) one first.

    Each line is ``hierarchy-id:controllers:path``; v1 has a line per hierarchy, v2 one.
    """
    unified: list[str] = []
    legacy: list[str] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        (unified if parts[0] == "0" and parts[1] == "" else legacy).append(parts[2])
    return unified + legacy


def placement(paths: list[str]) -> Placement:
    """What the cgroup paths say: each field from the first path that names it; within a
    path the innermost container and unit (a container inside a container is the inner)."""
    found: dict[str, str] = {}
    for path in paths:
        slurm = _SLURM.search(path)
        if slurm is not None and "slurm_job_id" not in found:
            found["slurm_job_id"] = slurm.group(1)
            if slurm.group(2) is not None:
                found["slurm_step"] = slurm.group(2)
        container = pod = unit = None
        kube = "kubepods" in path
        for part in path.split("/"):
            if kube and (match := _POD.match(part)) is not None:
                pod = match.group(1).replace("_", "-")
            elif (match := _CONTAINER.match(part)) is not None:
                container = match.group(1)
            elif _UNIT.match(part) is not None and len(part) <= MAX_UNIT:
                unit = part
        for key, value in (("container_id", container), ("pod_uid", pod),
                           ("systemd_unit", unit)):
            if value is not None:
                found.setdefault(key, value)
    return Placement(**found)


def slurm_from_environ(data: bytes) -> tuple[str | None, str | None]:
    """``SLURM_JOB_ID`` (or the older ``SLURM_JOBID``) and ``SLURM_STEP_ID`` of a
    ``/proc/<pid>/environ`` (NUL-separated); None for what is absent or malformed. The
    reserved step ids are named (batch, extern, interactive) as the cgroup paths name them."""
    env: dict[str, str] = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key in (b"SLURM_JOB_ID", b"SLURM_JOBID", b"SLURM_STEP_ID"):
            env.setdefault(key.decode("ascii"), value.decode("ascii", errors="replace"))
    job = env.get("SLURM_JOB_ID", env.get("SLURM_JOBID"))
    if job is None or not _DIGITS.match(job):
        return None, None
    step = env.get("SLURM_STEP_ID")
    step = _SLURM_STEPS.get(step, step) if step is not None else None
    return job, step if step is not None and _STEP.match(step) else None


def passwd_name(uid: int) -> str | None:
    """The user name of a uid from the password database, or None when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


class ProcReader:
    """Reads one process's name and owner from a ``/proc`` tree (``root``)."""

    def __init__(self, root: str | os.PathLike[str] = PROC_ROOT,
                 user_name: Callable[[int], str | None] = passwd_name) -> None:
        self.root = Path(root)
        self.user_name = user_name

    def open_file(self, path: Path) -> BinaryIO:
        """One file of the tree, opened for reading."""
        return open(path, "rb")

    def _read(self, pid: int, name: str) -> bytes | None:
        try:
            with self.open_file(self.root / str(pid) / name) as f:
                return f.read(MAX_FILE_BYTES)
        except (OSError, ValueError):  # gone, denied, or not a process
            return None

    def name(self, pid: int) -> str | None:
        """The process's name as psutil gives it: ``comm``, or, where the kernel truncated
        that to 15 characters, the program of ``cmdline`` that it begins; None when gone or
        unreadable."""
        comm = self._read(pid, "comm")
        if comm is None:
            return None
        name = comm.decode(errors="replace").rstrip("\n")
        if len(name) >= COMM_LENGTH:
            cmdline = self._read(pid, "cmdline")
            if cmdline:
                program = os.path.basename(
                    cmdline.split(b"\0", 1)[0].decode(errors="replace"))
                if program.startswith(name):
                    name = program
        return name[:MAX_NAME] or None

    def uid(self, pid: int) -> int | None:
        """The real uid from ``status``; None when unreadable."""
        status = self._read(pid, "status")
        for line in (status or b"").splitlines():
            if line.startswith(b"Uid:"):
                fields = line.split()
                return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
        return None

    def owner(self, pid: int) -> Owner | None:
        """Who runs the process and where; None when nothing at all could be read. A uid
        beyond ``MAX_UID`` is not stored (its user name is)."""
        uid = self.uid(pid)
        user = None
        if uid is not None:
            user = (self.user_name(uid) or str(uid))[:MAX_USER]
            uid = uid if uid <= MAX_UID else None
        cgroup = self._read(pid, "cgroup")
        where = placement(cgroup_paths(cgroup.decode(errors="replace"))) if cgroup \
            else Placement()
        job, step = where.slurm_job_id, where.slurm_step
        if job is None:
            environ = self._read(pid, "environ")
            if environ:
                job, step = slurm_from_environ(environ)
        owner = Owner(uid=uid, user_name=user, slurm_job_id=job, slurm_step=step,
                      container_id=where.container_id, pod_uid=where.pod_uid,
                      systemd_unit=where.systemd_unit)
        return owner if owner != NOBODY else None

    def process(self, pid: int) -> tuple[str | None, Owner | None]:
        """The name and the owner of a process (each None when unreadable)."""
        return self.name(pid), self.owner(pid)


def pid_namespace_is_nested(root: str | os.PathLike[str] = PROC_ROOT) -> bool:
    """True inside a child PID namespace (most containers): NVML reports the host's PIDs,
    which name other processes here or none, so processes cannot be looked up."""
    try:
        with open(Path(root) / "self" / "status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return len(line.split()) > 2
    except OSError:
        pass
    return False

