"""Who runs a GPU process and where, read from a fake /proc tree (and once from the real one).

Each scenario is a cgroup file as the kernel writes it under one setup (cgroup v1 or v2;
Slurm, Kubernetes with either cgroup driver, Docker, Podman, systemd units), plus the
entries that cannot be read: a denied file, a process that is gone.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import psutil
import pytest

from gpuhistory.sampling.procinfo import (
    Owner,
    ProcReader,
    cgroup_paths,
    placement,
    slurm_from_environ,
)
from tests.fake_proc import FakeProc

CID = "3f4a" * 16  # a 64-hex-digit container id
POD = "0f1d2c3b-4a5e-6f70-8192-a3b4c5d6e7f8"
POD_ = POD.replace("-", "_")

# (scenario, cgroup file, expected: job, step, container, pod, unit)
SCENARIOS = [
    ("slurm_v1", ["12:memory:/slurm/uid_1000/job_4711/step_0/task_0",
                  "11:devices:/slurm/uid_1000/job_4711/step_0",
                  "1:name=systemd:/system.slice/slurmd.service"],
     ("4711", "0", None, None, "slurmd.service")),
    ("slurm_v1_node_named", ["4:cpuset:/slurm_node17/uid_1000/job_12/step_extern"],
     ("12", "extern", None, None, None)),
    ("slurm_v1_job_cgroup_without_step", ["4:memory:/slurm/uid_1000/job_99"],
     ("99", None, None, None, None)),
    ("slurm_v2", ["0::/system.slice/slurmstepd.scope/job_4711/step_batch/user/task_0"],
     ("4711", "batch", None, None, "slurmstepd.scope")),
    ("slurm_v2_node_named", ["0::/system.slice/node17_slurmstepd.scope/job_5/step_3/user/task_1"],
     ("5", "3", None, None, "node17_slurmstepd.scope")),
    ("kubernetes_cgroupfs_v1", [f"11:memory:/kubepods/burstable/pod{POD}/{CID}",
                                f"1:name=systemd:/kubepods/burstable/pod{POD}/{CID}"],
     (None, None, CID, POD, None)),
    ("kubernetes_cgroupfs_v2_guaranteed", [f"0::/kubepods/pod{POD}/{CID}"],
     (None, None, CID, POD, None)),
    ("kubernetes_systemd_v2_containerd",
     [f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
      f"cri-containerd-{CID}.scope"],
     (None, None, CID, POD, None)),
    ("kubernetes_systemd_v1_crio_guaranteed",
     [f"9:memory:/kubepods.slice/kubepods-pod{POD_}.slice/crio-{CID}.scope"],
     (None, None, CID, POD, None)),
    ("kubernetes_static_pod_hash_uid",
     [f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{'ab' * 16}"
      f".slice/cri-containerd-{CID}.scope"],
     (None, None, CID, "ab" * 16, None)),
    ("docker_cgroupfs_v1", [f"12:memory:/docker/{CID}", f"1:name=systemd:/docker/{CID}"],
     (None, None, CID, None, None)),
    ("docker_systemd_v2", [f"0::/system.slice/docker-{CID}.scope"],
     (None, None, CID, None, None)),
    ("docker_in_docker_is_the_inner", [f"0::/docker/{'1' * 64}/docker/{CID}"],
     (None, None, CID, None, None)),
    ("podman_rootful_v2", [f"0::/machine.slice/libpod-{CID}.scope/container"],
     (None, None, CID, None, None)),
    ("podman_rootless_v2",
     [f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/"
      "container"],
     (None, None, CID, None, "user@1000.service")),
    ("systemd_system_service_v2", ["0::/system.slice/trainer.service"],
     (None, None, None, None, "trainer.service")),
    ("systemd_user_unit_v2",
     ["0::/user.slice/user-1000.slice/user@1000.service/app.slice/jupyter-lab.service"],
     (None, None, None, None, "jupyter-lab.service")),
    ("systemd_templated_unit_v1", ["1:name=systemd:/system.slice/system-train.slice/"
                                   "train@3.service", "3:memory:/"],
     (None, None, None, None, "train@3.service")),
    ("login_session_v2", ["0::/user.slice/user-1000.slice/session-4.scope"],
     (None, None, None, None, "session-4.scope")),
    ("root_cgroup_says_nothing", ["0::/"], (None, None, None, None, None)),
    ("pod_lookalike_outside_kubernetes", [f"0::/system.slice/pod{POD}.slice"],
     (None, None, None, None, None)),
    ("slurm_lookalike_without_slurm", ["0::/home/job_4711/step_0"],
     (None, None, None, None, None)),
]


@pytest.mark.parametrize(("scenario", "cgroup", "expected"), SCENARIOS,
                         ids=[s[0] for s in SCENARIOS])
def test_cgroup_scenarios_name_job_container_pod_and_unit(tmp_path: Path, scenario: str,
                                                          cgroup: list[str],
                                                          expected: tuple) -> None:
    """Each setup's cgroup file gives exactly its job, step, container, pod and unit."""
    proc = FakeProc(tmp_path / "proc")
    proc.add(4242, name="python", uid=1000, cgroup=cgroup)
    name, owner = proc.reader().process(4242)
    assert name == "python"
    assert owner is not None
    assert (owner.uid, owner.user_name) == (1000, "alice")
    assert (owner.slurm_job_id, owner.slurm_step, owner.container_id, owner.pod_uid,
            owner.systemd_unit) == expected


def test_slurm_job_from_the_environment_when_the_cgroup_names_none(tmp_path: Path) -> None:
    """Without a Slurm cgroup (proctrack/pgid), SLURM_JOB_ID and SLURM_STEP_ID say the job;
    Slurm's reserved step ids are named as its cgroups name them."""
    proc = FakeProc(tmp_path / "proc")
    proc.add(10, cgroup="0::/user.slice/user-1000.slice/session-2.scope",
             environ={"SLURM_JOB_ID": "4711", "SLURM_STEP_ID": "4294967291"})
    proc.add(11, environ={"SLURM_JOBID": "77", "SLURM_STEP_ID": "2"})
    reader = proc.reader()
    owner = reader.owner(10)
    assert owner is not None
    assert (owner.slurm_job_id, owner.slurm_step, owner.systemd_unit) == (
        "4711", "batch", "session-2.scope")
    other = reader.owner(11)
    assert other is not None and (other.slurm_job_id, other.slurm_step) == ("77", "2")


def test_the_cgroup_wins_over_the_environment(tmp_path: Path) -> None:
    """A process launched with a job's environment outside the job's cgroup keeps what the
    cgroup says: the environment is the user's to set, the cgroup is not."""
    proc = FakeProc(tmp_path / "proc")
    proc.add(10, cgroup=["4:memory:/slurm/uid_1000/job_4711/step_1"],
             environ={"SLURM_JOB_ID": "9999", "SLURM_STEP_ID": "0"})
    owner = proc.reader().owner(10)
    assert owner is not None and (owner.slurm_job_id, owner.slurm_step) == ("4711", "1")


@pytest.mark.parametrize("environ", [
    {"SLURM_JOB_ID": "abc"}, {"SLURM_JOB_ID": ""}, {"SLURM_JOB_ID": "1" * 33},
    {"SLURM_STEP_ID": "3"},
], ids=["not_a_number", "empty", "too_long", "step_without_job"])
def test_a_malformed_slurm_environment_names_no_job(environ: dict[str, str]) -> None:
    """Whatever the environment holds that is not a job id is not taken for one."""
    data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in environ.items())
    assert slurm_from_environ(data) == (None, None)


def test_unreadable_environ_keeps_the_user_and_the_name(tmp_path: Path) -> None:
    """Another user's environ is denied to a non-root reader: no job from it, no error;
    name, uid and user come from the files that could be read."""
    proc = FakeProc(tmp_path / "proc")
    proc.add(10, name="train", uid=1001, cgroup="0::/user.slice/user-1001.slice/session-9.scope",
             environ={"SLURM_JOB_ID": "4711"}, deny=["environ"])
    name, owner = proc.reader().process(10)
    assert name == "train"
    assert owner == Owner(uid=1001, user_name="bob", systemd_unit="session-9.scope")


def test_denied_status_and_cgroup_keep_pid_and_name(tmp_path: Path) -> None:
    """Nothing readable but the name: the name is kept, the owner is None (not a guess)."""
    proc = FakeProc(tmp_path / "proc")
    proc.add(10, name="secret", cgroup=f"0::/docker/{CID}",
             deny=["status", "cgroup", "environ"])
    assert proc.reader().process(10) == ("secret", None)


def test_denied_status_keeps_the_placement(tmp_path: Path) -> None:
    """The uid unreadable, the cgroup readable: where it runs is still known."""
    proc = FakeProc(tmp_path / "proc")
    proc.add(10, cgroup=f"0::/system.slice/docker-{CID}.scope", deny=["status"])
    assert proc.reader().owner(10) == Owner(container_id=CID)


def test_a_vanished_process_has_neither_name_nor_owner(tmp_path: Path) -> None:
    """A pid that exited before it was read (or never existed): (None, None), no error."""
    proc = FakeProc(tmp_path / "proc")
    proc.add(10)
    proc.remove(10)
    assert proc.reader().process(10) == (None, None)
    assert proc.reader().process(987654) == (None, None)


def test_a_process_vanishing_between_its_files(tmp_path: Path) -> None:
    """comm read, then the process gone: the name is kept, the rest is None."""
    proc = FakeProc(tmp_path / "proc")
    proc.add(10, name="short")
    reader = proc.reader()
    assert reader.name(10) == "short"
    proc.remove(10)
    assert reader.owner(10) is None


def test_user_name_falls_back_to_the_uid(tmp_path: Path) -> None:
    """A uid without a password-database entry (a container's user): its number as text."""
    proc = FakeProc(tmp_path / "proc")
    proc.add(10, uid=4242)
    owner = proc.reader().owner(10)
    assert owner is not None and (owner.uid, owner.user_name) == (4242, "4242")


def test_a_long_name_comes_from_the_command_line(tmp_path: Path) -> None:
    """The kernel keeps 15 characters of a name; the program named in cmdline completes it
    (as psutil does), but only when it starts with them."""
    proc = FakeProc(tmp_path / "proc")
    proc.add(10, name="python3.12-train-worker",
             cmdline=["/opt/bin/python3.12-train-worker", "--rank", "0"])
    proc.add(11, name="pt_main_thread_x", cmdline=["/usr/bin/python3", "train.py"])
    reader = proc.reader()
    assert reader.name(10) == "python3.12-train-worker"
    assert reader.name(11) == "pt_main_thread_"


def test_cgroup_lines_unified_first_and_garbage_ignored() -> None:
    """The v2 line comes first; lines that are not ``id:controllers:/path`` are skipped."""
    text = "5:memory:/slurm/uid_1/job_2\n0::/system.slice/a.service\nnonsense\n7:cpu:relative\n"
    assert cgroup_paths(text) == ["/system.slice/a.service", "/slurm/uid_1/job_2"]
    where = placement(cgroup_paths(text))
    assert (where.slurm_job_id, where.systemd_unit) == ("2", "a.service")


def test_the_real_proc_names_this_test_process() -> None:
    """On the real /proc, this process: psutil's name, our real uid and its user name."""
    name, owner = ProcReader().process(os.getpid())
    me = psutil.Process()
    assert name == me.name()
    assert owner is not None and owner.uid == os.getuid()
    assert owner.user_name == pwd.getpwuid(os.getuid()).pw_name
