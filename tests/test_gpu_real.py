"""The NVML backend against the real pynvml and a real driver (marker ``gpu``).

Skipped as a whole, with the NVML error as the reason, where the driver is absent or NVML
cannot be initialised. Values are checked for plausibility only: fields a card does not
support (the fan on an H100) may be None.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator

import pynvml
import pytest

from gpuhistory.sampling.hardware import COUNTER_NAMES
from gpuhistory.sampling.nvml import NvmlBackend, nvml_library_present


def _nvml_unusable() -> str | None:
    """Why the real NVML cannot be used here, or None when it can."""
    if not nvml_library_present():
        return ("no NVIDIA driver: nvmlInit failed with NVML_ERROR_LIBRARY_NOT_FOUND "
                "(libnvidia-ml.so.1 not found)")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"NVML unusable: nvmlInit failed with NVML error {exc.value} ({exc})"
    pynvml.nvmlShutdown()
    return None


_REASON = _nvml_unusable()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def backend() -> Iterator[NvmlBackend]:
    nvml = NvmlBackend()
    yield nvml
    nvml.close()


def test_enumerates_real_gpus(backend: NvmlBackend) -> None:
    """At least one GPU, each with a GPU- UUID, a name, memory and sane thresholds."""
    identities = backend.identities()
    assert identities, "NVML initialised but reported no GPU"
    for identity in identities:
        assert identity.uuid.startswith("GPU-")
        assert identity.name
        assert identity.memory_total_mib is not None and identity.memory_total_mib > 0
        if identity.slowdown_temp_c is not None and identity.shutdown_temp_c is not None:
            assert 0 < identity.slowdown_temp_c <= identity.shutdown_temp_c < 150
    print({i.index: (i.uuid, i.name, i.memory_total_mib, i.power_limit_w,
                     i.slowdown_temp_c, i.shutdown_temp_c) for i in identities})


def test_a_read_returns_plausible_values(backend: NvmlBackend) -> None:
    """Temperature, memory, power, clocks and P-state are within physical bounds."""
    readings = backend.read()
    assert len(readings) == len(backend.identities())
    for r in readings:
        assert r.available, r.error
        assert r.temperature_c is not None and 0 <= r.temperature_c <= 120
        assert r.memory_used_mib is not None and r.memory_total_mib is not None
        assert 0 <= r.memory_used_mib <= r.memory_total_mib
        assert r.power_w is not None and r.power_w > 0
        assert r.sm_clock_mhz is not None and r.sm_clock_mhz > 0
        assert r.pstate is not None and 0 <= r.pstate <= 15
        assert r.memory_temperature_c is None or 0 <= r.memory_temperature_c <= 120
        assert r.utilization_pct is None or 0 <= r.utilization_pct <= 100
        assert r.fan_pct is None or r.fan_pct >= 0
        print(r)


def test_reading_twice_gives_the_same_gpus(backend: NvmlBackend) -> None:
    """Cached handles keep working: a second read reports the same GPUs."""
    first, second = backend.read(), backend.read()
    assert [r.uuid for r in first] == [r.uuid for r in second]
    assert all(r.available for r in second)


def test_health_is_ok(backend: NvmlBackend) -> None:
    """With a working driver the backend reports itself healthy."""
    health = backend.health()
    assert health.ok, health.detail


def test_200_reads_complete(backend: NvmlBackend) -> None:
    """200 reads in a row succeed; the mean cost per read per GPU is printed, not asserted."""
    gpus = len(backend.read())
    started = time.perf_counter()
    for _ in range(200):
        readings = backend.read()
        assert all(r.available for r in readings)
    elapsed = time.perf_counter() - started
    print(f"NVML read: {elapsed / 200 / gpus * 1e6:.0f} µs per read per GPU "
          f"({gpus} GPU(s), 200 reads)")


def test_read_hardware_on_real_nvml(backend: NvmlBackend) -> None:
    """Processes (maybe none), throttle counters (ints or None) and XIDs, typed as promised."""
    facts = backend.read_hardware()
    assert [f.index for f in facts] == [r.index for r in backend.read()]
    for f in facts:
        assert f.processes is None or isinstance(f.processes, list)
        for p in f.processes or []:
            assert isinstance(p.pid, int) and p.pid > 0
            assert p.name is None or isinstance(p.name, str)
            assert p.used_memory_mib is None or (isinstance(p.used_memory_mib, int)
                                                 and p.used_memory_mib >= 0)
        if f.counters is not None:
            assert set(f.counters) == set(COUNTER_NAMES)
            assert all(v is None or (isinstance(v, int) and v >= 0)
                       for v in f.counters.values())
        assert all(isinstance(x.code, int) for x in f.xids)
        print(f)
    again = backend.read_hardware()
    for before, after in zip(facts, again, strict=True):  # cumulative: never backwards
        for name in COUNTER_NAMES:
            a = (before.counters or {}).get(name)
            b = (after.counters or {}).get(name)
            assert a is None or b is None or b >= a
    print(backend.health().detail)


def test_xid_event_set_created_or_reported_unsupported() -> None:
    """An event set for critical XIDs can be created and registered, and a 0 ms wait
    answers TIMEOUT (nothing pending) — or registration says NOT_SUPPORTED."""
    pynvml.nvmlInit()
    try:
        event_set = pynvml.nvmlEventSetCreate()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            supported = pynvml.nvmlDeviceGetSupportedEventTypes(handle)
            print(f"supported event types: 0x{supported:x}")
            try:
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError,
                                                event_set)
            except pynvml.NVMLError as exc:
                assert exc.value == pynvml.NVML_ERROR_NOT_SUPPORTED, exc
                print("XID event sets: not supported")
                return
            with pytest.raises(pynvml.NVMLError) as waited:
                while True:  # drain anything already pending
                    data = pynvml.nvmlEventSetWait_v2(event_set, 0)
                    print(f"pending event: type 0x{data.eventType:x} data {data.eventData}")
            assert waited.value.value == pynvml.NVML_ERROR_TIMEOUT
            print("XID event sets: supported")
        finally:
            pynvml.nvmlEventSetFree(event_set)
    finally:
        pynvml.nvmlShutdown()


def test_hardware_read_cost(backend: NvmlBackend) -> None:
    """The cost of read_hardware next to read(), printed, not asserted."""
    backend.read_hardware()
    gpus = len(backend.read())
    costs = {}
    for name, call in (("read", backend.read), ("read_hardware", backend.read_hardware)):
        started = time.perf_counter()
        for _ in range(200):
            call()
        costs[name] = (time.perf_counter() - started) / 200 / gpus * 1e6
    print(f"per GPU: read() {costs['read']:.0f} µs, read_hardware() "
          f"{costs['read_hardware']:.0f} µs ({gpus} GPU(s), 200 calls each)")


def test_error_energy_and_identity_fields_on_real_nvml(backend: NvmlBackend) -> None:
    """ECC, row remapping, PCIe replays and energy read (each an int, or None where the card
    does not support it — never an error); the PCI bus id and driver version label it."""
    import re

    from gpuhistory.sampling.hardware import RELIABILITY_NAMES

    fresh = NvmlBackend()  # its first hardware read asks for every slow counter
    try:
        facts = fresh.read_hardware()
    finally:
        fresh.close()
    assert facts
    for f in facts:
        assert f.reliability is not None, f"GPU {f.index}: no error or energy counter at all"
        assert set(f.reliability) == set(RELIABILITY_NAMES)
        assert all(v is None or (isinstance(v, int) and v >= 0)
                   for v in f.reliability.values()), f.reliability
        assert f.pci_bus_id is not None and re.fullmatch(
            r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]", f.pci_bus_id), f.pci_bus_id
        assert f.driver_version and re.fullmatch(r"\d+\.\d+(\.\d+)?", f.driver_version)
        if "H100" in (backend.identities()[f.index].name or "") or \
                "H200" in (backend.identities()[f.index].name or ""):
            assert f.reliability["energy_mj"] is not None and f.reliability["energy_mj"] > 0
            assert f.reliability["ecc_aggregate_uncorrected"] is not None  # ECC on by default
            assert f.reliability["remapped_rows_correctable"] is not None
            assert f.reliability["pcie_replays"] is not None
        print(f.index, f.pci_bus_id, f.driver_version, f.reliability)


def test_metrics_lines_on_real_hardware(engine, clock) -> None:
    """A real sampler tick on real NVML, then /metrics over real HTTP with metrics_dcgm on:
    the new families are there (printed, to be quoted), DCGM names carry pci_bus_id and
    DCGM_FI_DRIVER_VERSION, and a running compute process (if any) has its memory."""
    import requests

    from gpuhistory.api.app import create_app
    from gpuhistory.config.layers import load_static
    from gpuhistory.context import ServiceContext
    from gpuhistory.sampling.pipeline import Pipeline
    from gpuhistory.sampling.sampler import Sampler
    from gpuhistory.storage.log import LogStore
    from tests.conftest import LiveServer

    real = NvmlBackend()
    store = LogStore(engine, "gpu-box")
    static = load_static(environ={"GPUHISTORY_METRICS_DCGM": "1"})
    sampler = Sampler(real, Pipeline(store, "nvml", static.config), store, clock, interval=3.0)
    try:
        sampler.tick()
        server = LiveServer(create_app(ServiceContext(engine=engine, host="gpu-box",
                                                      clock=clock, config=static.config,
                                                      sampler=sampler)))
        try:
            body = requests.get(f"{server.url}/metrics", timeout=30).text
        finally:
            server.close()
    finally:
        real.close()
    wanted = ("DCGM_FI_DEV_GPU_TEMP{", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{",
              "DCGM_FI_DEV_POWER_VIOLATION{", "DCGM_FI_DEV_XID_ERRORS{",
              "gpuhistory_gpu_energy_joules_total{", "gpuhistory_gpu_ecc_errors_total{",
              "gpuhistory_gpu_pcie_replays_total{", "gpuhistory_gpu_remapped_rows{",
              "gpuhistory_gpu_xid_errors_total{", "gpuhistory_process_memory_bytes{")
    lines = [line for line in body.splitlines() if line.startswith(wanted)]
    print("\n".join(lines))
    assert any(line.startswith("DCGM_FI_DEV_GPU_TEMP{") and "pci_bus_id=" in line
               and "DCGM_FI_DRIVER_VERSION=" in line for line in lines), body[:2000]
    assert any(line.startswith("gpuhistory_gpu_energy_joules_total{") for line in lines)
    assert any(line.startswith("gpuhistory_gpu_xid_errors_total{") for line in lines)


def _nvidia_smi_memory() -> dict[int, tuple[int, int, int]]:
    """(used, reserved, total) MiB per GPU index as ``nvidia-smi`` shows them; skips the
    test, with the reason, where nvidia-smi is missing or does not know memory.reserved."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        pytest.skip("nvidia-smi is not on PATH: nothing to compare the memory figures with")
    done = subprocess.run(
        [smi, "--query-gpu=index,memory.used,memory.reserved,memory.total",
         "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=60,
        check=False)
    if done.returncode != 0:
        pytest.skip(f"nvidia-smi --query-gpu=...memory.reserved failed ({done.returncode}): "
                    f"{(done.stderr or done.stdout).strip()[:200]}")
    out: dict[int, tuple[int, int, int]] = {}
    for line in done.stdout.strip().splitlines():
        index, used, reserved, total = (cell.strip() for cell in line.split(","))
        if not reserved.isdigit():
            pytest.skip(f"nvidia-smi reports memory.reserved as {reserved!r} here")
        out[int(index)] = (int(used), int(reserved), int(total))
    return out


def test_memory_figures_match_nvidia_smi_at_idle() -> None:
    """Used, reserved and total of every GPU within 1 MiB of ``nvidia-smi --query-gpu=
    memory.used,memory.reserved,memory.total`` (read before and after ours: the GPUs must
    be idle, their memory unchanged in between)."""
    before = _nvidia_smi_memory()
    real = NvmlBackend(process_names=False)
    try:
        ours = {r.index: (r.memory_used_mib, r.memory_reserved_mib, r.memory_total_mib)
                for r in real.read()}
    finally:
        real.close()
    after = _nvidia_smi_memory()
    print({"nvidia-smi (used, reserved, total MiB)": before, "gpuhistory": ours})
    if before != after:
        pytest.skip(f"GPU memory changed while comparing (not idle): {before} then {after}")
    assert set(ours) == set(before)
    for index, (used, reserved, total) in before.items():
        mine = ours[index]
        assert None not in mine, f"GPU {index}: no v2 memory info from NVML: {mine}"
        assert abs(mine[0] - used) <= 1, (index, "used", mine, before[index])
        assert abs(mine[1] - reserved) <= 1, (index, "reserved", mine, before[index])
        assert abs(mine[2] - total) <= 1, (index, "total", mine, before[index])


def _end(child: subprocess.Popen[str], kill: bool = True) -> None:
    """End a CUDA child (killed, or let go by closing its stdin) and close its pipes."""
    if kill:
        child.kill()
    elif child.stdin is not None:
        child.stdin.close()
    child.wait(30)
    for pipe in (child.stdin, child.stdout):
        if pipe is not None:
            pipe.close()


CUDA_USER = ("import sys, torch\n"
             "x = torch.zeros(64 << 20, dtype=torch.uint8, device='cuda')\n"
             "torch.cuda.synchronize()\n"
             "print('ready', flush=True)\n"
             "sys.stdin.read()\n")


def test_a_cuda_process_shows_with_its_user_in_status_cli_and_metrics(engine, clock) -> None:
    """A tiny PyTorch process holding 64 MiB on GPU 0 is listed by real NVML with the uid
    and user real /proc gives (and its cgroup placement, printed); through a real sampler
    tick it is in status/all, in ``status -p`` and in /metrics with its user. Skips when
    torch is missing or this runs in a child PID namespace (NVML's pids are the host's)."""
    import importlib.util
    import os
    import pwd
    import subprocess
    import sys

    import requests
    from click.testing import CliRunner

    from gpuhistory.api.app import create_app
    from gpuhistory.cli.main import cli
    from gpuhistory.context import ServiceContext
    from gpuhistory.domain.config import DEFAULT_CONFIG
    from gpuhistory.sampling.pipeline import Pipeline
    from gpuhistory.sampling.procinfo import ProcReader, pid_namespace_is_nested
    from gpuhistory.sampling.sampler import Sampler
    from gpuhistory.storage.log import LogStore
    from tests.conftest import LiveServer

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: pip install torch, to start a CUDA user")
    if pid_namespace_is_nested():
        pytest.skip("in a child PID namespace NVML reports host pids: no /proc lookup here")
    child = subprocess.Popen([sys.executable, "-c", CUDA_USER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    real = NvmlBackend()
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        found = None
        while found is None and time.monotonic() < deadline:
            found = next((p for f in real.read_hardware() for p in f.processes or []
                          if p.pid == child.pid), None)
            time.sleep(0.2)
        assert found is not None, f"NVML does not list the CUDA process {child.pid}"
        me = pwd.getpwuid(os.getuid()).pw_name
        print(found)
        assert found.owner is not None
        assert (found.owner.uid, found.user) == (os.getuid(), me)
        assert found.owner == ProcReader().owner(child.pid)  # cgroup placement as /proc says
        store = LogStore(engine, "gpu-box")
        sampler = Sampler(real, Pipeline(store, "nvml", lambda: DEFAULT_CONFIG), store, clock,
                          interval=3.0)
        sampler.tick()
        server = LiveServer(create_app(ServiceContext(engine=engine, host="gpu-box",
                                                      clock=clock, sampler=sampler)))
        try:
            status = requests.get(f"{server.url}/api/gpu/status/all", timeout=30).json()
            listed = [p for g in status["gpus"] for p in g["processes"]
                      if p["pid"] == child.pid]
            print(listed)
            assert [(p["user"], p["uid"]) for p in listed] == [(me, os.getuid())]
            table = CliRunner().invoke(cli, ["status", "--url", server.url, "-p"]).output
            print(table)
            assert any(f"└ {child.pid} " in line and me in line for line in table.splitlines())
            body = requests.get(f"{server.url}/metrics", timeout=30).text
            lines = [line for line in body.splitlines()
                     if line.startswith("gpuhistory_process_memory_bytes{")]
            print("\n".join(lines))
            assert any(f'pid="{child.pid}"' in line and f'user="{me}"' in line
                       for line in lines)
        finally:
            server.close()
    finally:
        real.close()
        _end(child)


LEASED_CUDA_USER = (
    "import sys, torch\n"
    "from gpuhistory.client import Client\n"
    "with Client(sys.argv[1]).lease(memory_mb=1024, gpu_id='any', ttl_seconds=3600,\n"
    "                               owner='gpu-test') as lease:\n"
    "    x = torch.zeros(3 << 30, dtype=torch.uint8, device=f'cuda:{lease.gpu_id}')\n"
    "    torch.cuda.synchronize()\n"
    "    print('ready', lease.gpu_id, flush=True)\n"
    "    sys.stdin.read()\n")


def test_a_leased_pytorch_process_is_held_to_account_and_memory_matches_under_load(
        engine, clock) -> None:
    """A PyTorch process takes a 1 GiB lease placed by the service (``gpu_id="any"``,
    covering its own pid) and then holds 3 GiB on that GPU. Under that load our used,
    reserved and total match ``nvidia-smi`` within 1 MiB; one real sampler tick records
    ``lease_exceeded`` naming the process, and status, ``status -p`` and /metrics show the
    process with its user and the lease as exceeded. Skips without torch or in a child PID
    namespace."""
    import importlib.util
    import os
    import pwd
    import sys

    import requests
    from click.testing import CliRunner

    from gpuhistory.api.app import create_app
    from gpuhistory.cli.main import cli
    from gpuhistory.context import ServiceContext
    from gpuhistory.domain.config import DEFAULT_CONFIG
    from gpuhistory.leases.manager import LeaseManager
    from gpuhistory.sampling.pipeline import Pipeline
    from gpuhistory.sampling.procinfo import pid_namespace_is_nested
    from gpuhistory.sampling.sampler import Sampler
    from gpuhistory.storage.log import LogStore
    from tests.conftest import LiveServer

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: pip install torch, to start a CUDA user")
    if pid_namespace_is_nested():
        pytest.skip("in a child PID namespace NVML reports host pids: no /proc lookup here")
    real = NvmlBackend()
    store = LogStore(engine, "gpu-box")
    sampler = Sampler(real, Pipeline(store, "nvml", lambda: DEFAULT_CONFIG), store, clock,
                      interval=3.0)
    sampler.tick()  # the GPUs are in the log: the lease can be placed
    leases = LeaseManager(engine, "gpu-box", clock, lambda: DEFAULT_CONFIG)
    server = LiveServer(create_app(ServiceContext(engine=engine, host="gpu-box", clock=clock,
                                                  sampler=sampler, leases=leases)))
    child = subprocess.Popen([sys.executable, "-c", LEASED_CUDA_USER, server.url],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        assert ready[:1] == ["ready"], ready
        gpu = int(ready[1])
        before = _nvidia_smi_memory()
        ours = {r.index: (r.memory_used_mib, r.memory_reserved_mib, r.memory_total_mib)
                for r in real.read()}
        after = _nvidia_smi_memory()
        print({"under load: nvidia-smi (used, reserved, total MiB)": before,
               "gpuhistory": ours})
        assert before == after, "GPU memory moved while comparing"
        assert before[gpu][0] >= 3 * 1024, before  # the load is there
        for index, figures in before.items():
            assert all(abs(a - b) <= 1 for a, b in zip(ours[index], figures, strict=True)), (
                index, ours[index], figures)
        clock.advance(3)
        sampler.tick()
        me = pwd.getpwuid(os.getuid()).pw_name
        with engine.connect() as conn:
            import sqlalchemy as sa

            from gpuhistory.storage.schema import events
            payloads = [row.payload for row in conn.execute(
                sa.select(events.c.payload).where(events.c.kind == "lease_exceeded"))]
        print(payloads)
        assert any(child.pid in (p.get("pids") or []) for p in payloads), payloads
        status = requests.get(f"{server.url}/api/gpu/status?gpu_id={gpu}", timeout=30).json()
        print(status.get("lease_accounting"), status["processes"])
        assert [(p["user"], p["uid"]) for p in status["processes"]
                if p["pid"] == child.pid] == [(me, os.getuid())]
        assert any(lease["exceeded"] for lease in status["lease_accounting"]["leases"])
        table = CliRunner().invoke(cli, ["status", "--url", server.url, "-p"]).output
        print(table)
        assert any(f"└ {child.pid} " in line and me in line for line in table.splitlines())
        body = requests.get(f"{server.url}/metrics", timeout=30).text
        lines = [line for line in body.splitlines() if line.startswith(
            ("gpuhistory_process_memory_bytes{", "gpuhistory_gpu_lease_exceeding_leases{"))]
        print("\n".join(lines))
        assert any(f'pid="{child.pid}"' in line and f'user="{me}"' in line for line in lines)
        assert any(line.startswith("gpuhistory_gpu_lease_exceeding_leases{")
                   and f'gpu="{gpu}"' in line and line.endswith(" 1.0") for line in lines)
    finally:
        _end(child, kill=False)  # stdin closed: the lease is released as the block ends
        server.close()
        real.close()


def test_a_cuda_process_in_a_container_cgroup_is_attributed_from_real_proc() -> None:
    """A PyTorch process moved into a cgroup named as Docker names a container's
    (``/system.slice/docker-<64 hex>.scope``, made here in the real cgroup v2 tree): real
    NVML lists it, and its owner read from the real ``/proc/<pid>/cgroup`` names the
    container id (the scope is the container's, not reported as a systemd unit). Skips
    where no cgroup can be made (no cgroup v2, not root, a read-only tree) or torch is
    missing."""
    import importlib.util
    import os
    import sys
    from pathlib import Path

    from gpuhistory.sampling.procinfo import pid_namespace_is_nested

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: pip install torch, to start a CUDA user")
    if pid_namespace_is_nested():
        pytest.skip("in a child PID namespace NVML reports host pids: no /proc lookup here")
    root = Path("/sys/fs/cgroup")
    if not (root / "cgroup.procs").exists():
        pytest.skip("no cgroup v2 tree at /sys/fs/cgroup")
    container = "5ca1ab1e" * 8
    group = root / "system.slice" / f"docker-{container}.scope"
    try:
        group.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup here ({exc})")
    child = subprocess.Popen([sys.executable, "-c", CUDA_USER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    real = NvmlBackend()
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        try:
            (group / "cgroup.procs").write_text(f"{child.pid}\n")
        except OSError as exc:
            pytest.skip(f"cannot move a process into a cgroup here ({exc})")
        print(Path(f"/proc/{child.pid}/cgroup").read_text().strip(), os.getuid())
        deadline = time.monotonic() + 30
        found = None
        while found is None and time.monotonic() < deadline:
            found = next((p for f in real.read_hardware() for p in f.processes or []
                          if p.pid == child.pid), None)
            time.sleep(0.2)
        assert found is not None, f"NVML does not list the CUDA process {child.pid}"
        print(found)
        assert found.owner is not None
        assert found.owner.container_id == container
        assert found.owner.systemd_unit is None  # the scope is the container's, not a unit
    finally:
        real.close()
        _end(child)
        with contextlib.suppress(OSError):  # the child gone, the cgroup is empty
            group.rmdir()
