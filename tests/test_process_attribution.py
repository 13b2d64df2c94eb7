"""Who runs each GPU process, in the log: the fake pynvml's (and the simulator's) process
lists, attributed from a fake /proc tree, through the sampler into gpu_processes and the
process events — written when a process starts, and again only when its owner becomes known.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gpuhistory.clock import FakeClock
from gpuhistory.sampling.nvml import NvmlBackend
from gpuhistory.sampling.procinfo import OWNER_COLUMNS
from gpuhistory.sampling.sim import SIM_PID_BASE, SimBackend
from tests.conftest import FLEET4
from tests.fake_proc import FakeProc
from tests.fake_pynvml import MIB, FakeNvml, scenario
from tests.test_hardware import events, make_sampler, rows

pytestmark = pytest.mark.postgres

CID = "3f4a" * 16
POD = "0f1d2c3b-4a5e-6f70-8192-a3b4c5d6e7f8"
OWNER_SQL = ", ".join(OWNER_COLUMNS)


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    """Three processes: alice's Slurm job (cgroup v2), bob's Docker container (v1), and a
    Kubernetes pod's container (systemd driver) run by uid 1002, which has no name."""
    fake = FakeProc(tmp_path / "proc")
    fake.add(100, name="python", uid=1000,
             cgroup="0::/system.slice/slurmstepd.scope/job_4711/step_0/user/task_0")
    fake.add(101, name="infer", uid=1001,
             cgroup=[f"12:memory:/docker/{CID}", f"1:name=systemd:/docker/{CID}"])
    fake.add(102, name="server", uid=1002,
             cgroup="0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
                    f"{POD.replace('-', '_')}.slice/cri-containerd-{CID}.scope")
    return fake


def backend(nvml: FakeNvml, clock: FakeClock, proc: FakeProc | None,
            names: bool = True) -> NvmlBackend:
    return NvmlBackend(nvml=nvml, clock=clock, process_names=names,  # type: ignore[arg-type]
                       proc=proc.reader() if proc is not None else None)


def owners(engine: sa.Engine) -> list[tuple[Any, ...]]:
    return rows(engine, f"SELECT pid, name, {OWNER_SQL} FROM gpu_processes ORDER BY id")


def count_process_updates(engine: sa.Engine) -> list[int]:
    """A list whose length counts the UPDATEs of gpu_processes from now on."""
    seen: list[int] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("UPDATE GPU_PROCESSES"):
            seen.append(1)

    return seen


def test_owner_recorded_with_the_row_and_in_the_events(engine, clock, proc) -> None:
    """Each process's row holds its uid, user, job, step, container, pod and unit as /proc
    says; process_started names what is known, and so does process_exited."""
    nvml = scenario("four_h100")
    nvml.devices[0].processes = [(100, 20_000 * MIB), (101, 1000 * MIB)]
    nvml.devices[1].processes = [(102, 512 * MIB)]
    sampler = make_sampler(engine, clock, backend(nvml, clock, proc))
    sampler.tick()
    assert owners(engine) == [
        (100, "python", 1000, "alice", "4711", "0", None, None, "slurmstepd.scope"),
        (101, "infer", 1001, "bob", None, None, CID, None, None),
        (102, "server", 1002, "1002", None, None, CID, POD, None)]
    started = {p["pid"]: p for _, p in events(engine, "process_started")}
    assert started[100] == {"pid": 100, "name": "python", "used_memory_mib": 20_000,
                            "uid": 1000, "user": "alice", "slurm_job_id": "4711",
                            "slurm_step": "0", "systemd_unit": "slurmstepd.scope"}
    assert started[101]["container_id"] == CID and "slurm_job_id" not in started[101]
    nvml.devices[0].processes = [(101, 1000 * MIB)]
    clock.advance(1)
    sampler.tick()
    (_, exited), = events(engine, "process_exited")
    assert (exited["pid"], exited["user"], exited["slurm_job_id"]) == (100, "alice", "4711")


def test_the_owner_is_not_written_per_tick(engine, clock, proc) -> None:
    """Thirty ticks of the same processes write no UPDATE (the owner is looked up once per
    pid), and a cgroup that changes under a running process does not rewrite its row."""
    nvml = scenario("one_h100")
    nvml.devices[0].processes = [(100, 20_000 * MIB)]
    sampler = make_sampler(engine, clock, backend(nvml, clock, proc))
    sampler.tick()
    updates = count_process_updates(engine)
    proc.add(100, name="python", uid=1000, cgroup="0::/system.slice/other.service")
    for _ in range(30):
        clock.advance(1)
        sampler.tick()
    assert updates == []
    assert owners(engine)[0][4:6] == ("4711", "0")


def test_an_owner_learned_after_a_restart_is_written_once(engine, clock, proc) -> None:
    """A process recorded without an owner (before attribution, or without /proc access)
    gets it once when a sampler that can read /proc takes over; no new process_started."""
    nvml = scenario("one_h100")
    nvml.devices[0].processes = [(100, 20_000 * MIB)]
    first = make_sampler(engine, clock, backend(nvml, clock, None, names=False))
    first.tick()
    assert owners(engine) == [(100, None, *[None] * len(OWNER_COLUMNS))]
    clock.advance(5)
    second = make_sampler(engine, clock, backend(nvml, clock, proc))
    updates = count_process_updates(engine)
    for _ in range(5):
        second.tick()
        clock.advance(1)
    assert len(updates) == 1
    assert owners(engine) == [
        (100, "python", 1000, "alice", "4711", "0", None, None, "slurmstepd.scope")]
    assert len(events(engine, "process_started")) == 1


def test_a_restart_keeps_the_owner_it_cannot_read(engine, clock, proc) -> None:
    """A sampler that may not read /proc (a child PID namespace) after a restart keeps the
    owner the log holds: it never erases what was known."""
    nvml = scenario("one_h100")
    nvml.devices[0].processes = [(101, MIB)]
    make_sampler(engine, clock, backend(nvml, clock, proc)).tick()
    clock.advance(61)  # past the last_seen refresh: the row is rewritten, owner and all
    blind = make_sampler(engine, clock, backend(nvml, clock, None, names=False))
    assert blind.pipeline.hardware.running[1][101].owner is not None  # restored from the log
    blind.tick()
    assert owners(engine) == [(101, "infer", 1001, "bob", None, None, CID, None, None)]


def test_a_pid_reused_by_another_user_is_a_new_process(engine, clock, proc) -> None:
    """The same pid and name, another uid between two reads: the first process exited and
    a new one started (each row keeps its own user)."""
    nvml = scenario("one_h100")
    nvml.devices[0].processes = [(100, MIB)]
    nv = backend(nvml, clock, proc)
    sampler = make_sampler(engine, clock, nv)
    sampler.tick()
    nvml.devices[0].processes = []
    nv.read_hardware()  # it ended between two ticks
    proc.remove(100)
    proc.add(100, name="python", uid=1001, cgroup="0::/user.slice/user-1001.slice/session-3.scope")
    nvml.devices[0].processes = [(100, MIB)]
    clock.advance(1)
    sampler.tick()
    assert rows(engine, "SELECT user_name, ended_ms IS NULL FROM gpu_processes ORDER BY id") \
        == [("alice", 0), ("bob", 1)]


def test_unreadable_entries_keep_pid_and_name_in_the_log(engine, clock, tmp_path) -> None:
    """Another user's process whose status and cgroup are denied, and a pid gone before it
    was read: rows with what could be read (the name; nothing for the gone one), no error."""
    fake = FakeProc(tmp_path / "proc")
    fake.add(200, name="secret", uid=1001, deny=["status", "cgroup", "environ"])
    nvml = scenario("one_h100")
    nvml.devices[0].processes = [(200, MIB), (201, MIB)]
    sampler = make_sampler(engine, clock, backend(nvml, clock, fake))
    sampler.tick()
    assert sampler.hardware_error is None
    assert owners(engine) == [(200, "secret", *[None] * len(OWNER_COLUMNS)),
                              (201, None, *[None] * len(OWNER_COLUMNS))]


def test_simulated_processes_take_their_owner_from_the_fake_tree(engine, clock,
                                                                tmp_path) -> None:
    """The simulator's processes (pid 4200 + GPU) are attributed from the /proc tree it is
    given; without one they have no owner (their pids are made up)."""
    fake = FakeProc(tmp_path / "proc")
    fake.add(SIM_PID_BASE, uid=1000, cgroup="4:memory:/slurm/uid_1000/job_31/step_batch")
    fake.add(SIM_PID_BASE + 1, uid=1001, cgroup=f"0::/system.slice/docker-{CID}.scope")
    sampler = make_sampler(engine, clock, SimBackend(clock, trace=FLEET4,
                                                     proc=fake.reader()), interval=3.0)
    for _ in range(10):  # 30 s: GPUs 0 and 1 are busy from 20 s
        sampler.tick()
        clock.advance(3)
    assert rows(engine, "SELECT pid, user_name, slurm_job_id, slurm_step, container_id "
                        "FROM gpu_processes ORDER BY pid") == [
        (SIM_PID_BASE, "alice", "31", "batch", None),
        (SIM_PID_BASE + 1, "bob", None, None, CID)]
    plain = SimBackend(clock, trace=FLEET4)
    assert all(p.owner is None for f in plain.read_hardware() for p in f.processes or [])


def test_the_migration_keeps_recorded_processes(tmp_path: Path) -> None:
    """Processes recorded before revision 0009 survive it (with no owner), and going back
    below it keeps them too, without the new columns."""
    from alembic.script import ScriptDirectory

    from gpuhistory.storage.engine import _alembic_config, downgrade, make_engine, upgrade

    below = ScriptDirectory.from_config(_alembic_config()).get_revision("0009").down_revision
    assert isinstance(below, str)
    engine = make_engine(tmp_path / "m.db")
    upgrade(engine, below)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO gpus (host, gpu_index, uuid, first_seen_ms, "
                             "last_seen_ms, backend) VALUES ('h', 0, 'GPU-x', 0, 0, 'nvml')"))
        conn.execute(sa.text("INSERT INTO gpu_processes (gpu_id, pid, name, used_memory_mib, "
                             "first_seen_ms, last_seen_ms) VALUES (1, 7, 'train', 5, 0, 0)"))
    upgrade(engine)
    assert owners(engine) == [(7, "train", *[None] * len(OWNER_COLUMNS))]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE gpu_processes SET user_name = 'alice'"))
    downgrade(engine, below)
    assert rows(engine, "SELECT pid, name FROM gpu_processes") == [(7, "train")]
    engine.dispose()
