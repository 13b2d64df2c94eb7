"""Memory figures as ``nvidia-smi`` shows them: NVML's v2 memory info (used without what the
driver reserves, the reservation apart), v1 where the driver or binding lacks v2, and the
reservation recorded, classified, leased and served as docs/backends.md documents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from gpuhistory.api.app import create_app
from gpuhistory.clock import FakeClock
from gpuhistory.config.layers import load_static
from gpuhistory.context import ServiceContext
from gpuhistory.domain.states import GPUState
from gpuhistory.formats.nvidia_smi_csv import read_nvidia_smi
from gpuhistory.formats.trace_csv import bundled_trace, read_trace
from gpuhistory.leases.manager import LeaseManager
from gpuhistory.sampling.nvml import NvmlBackend
from gpuhistory.sampling.pipeline import Pipeline
from gpuhistory.sampling.sampler import Sampler
from gpuhistory.storage.log import LogStore
from gpuhistory.storage.schema import gpus, samples
from tests.conftest import LiveServer
from tests.fake_pynvml import MIB, FakeDevice, FakeNvml
from tests.test_metrics_dcgm import by_gpu, scrape

# An idle H200 as nvidia-smi shows it: 0 MiB used, 616 MiB reserved, 143155 MiB free.
TOTAL, RESERVED = 143771, 616
MakeBackend = Callable[..., NvmlBackend]


def h200(index: int = 0, used_mib: int = 0, reserved_mib: int = RESERVED,
         total_mib: int = TOTAL) -> FakeDevice:
    return FakeDevice(uuid=f"GPU-fake-h200-{index:04d}", name="NVIDIA H200",
                      memory_total=total_mib * MIB, memory_used=used_mib * MIB,
                      memory_reserved=reserved_mib * MIB,
                      errors={"nvmlDeviceGetFanSpeed": FakeNvml.NVML_ERROR_NOT_SUPPORTED})


@pytest.fixture
def make_backend(clock: FakeClock) -> Iterator[MakeBackend]:
    made: list[NvmlBackend] = []

    def make(nvml: FakeNvml, **kwargs: object) -> NvmlBackend:
        backend = NvmlBackend(nvml=nvml, clock=clock, process_names=False,  # type: ignore[arg-type]
                              **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


# -- reading ---------------------------------------------------------------------------------
def test_v2_used_excludes_the_reservation_as_nvidia_smi_shows(make_backend) -> None:
    """An idle H200: used 0 MiB (v1 would say 616), reserved 616, free 143155, 0 %."""
    nvml = FakeNvml([h200()])
    (reading,) = make_backend(nvml).read()
    assert reading.available
    assert (reading.memory_used_mib, reading.memory_reserved_mib, reading.memory_total_mib) \
        == (0, RESERVED, TOTAL)
    assert reading.memory_free_mib == TOTAL - RESERVED
    assert reading.memory_percent == 0.0
    assert nvml.memory_versions == {2: 2}  # attach and read: v2 only


@pytest.mark.parametrize("refusal", [
    FakeNvml.NVML_ERROR_FUNCTION_NOT_FOUND, FakeNvml.NVML_ERROR_NOT_SUPPORTED,
    FakeNvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
], ids=["function_not_found", "not_supported", "version_mismatch"])
def test_a_driver_refusing_v2_is_read_through_v1_and_asked_once(make_backend,
                                                                 refusal: int) -> None:
    """v1's used includes the reservation, which is then unknown (None); v2 is asked once
    (when the GPU is attached), never again, and the GPU stays healthy."""
    nvml = FakeNvml([h200(used_mib=1000)])
    nvml.devices[0].memory_v2 = refusal
    backend = make_backend(nvml)
    readings = [backend.read()[0] for _ in range(3)]
    assert all(r.available for r in readings)
    assert {(r.memory_used_mib, r.memory_reserved_mib, r.memory_total_mib)
            for r in readings} == {(1000 + RESERVED, None, TOTAL)}
    assert readings[0].memory_free_mib == TOTAL - 1000 - RESERVED
    assert nvml.memory_versions == {2: 1, 1: 4}
    assert backend.health().ok and "GPU 0" not in backend.health().detail


def test_a_binding_without_v2_is_read_through_v1(make_backend) -> None:
    """A pynvml without ``nvmlMemory_v2`` (nor the ``version`` parameter): v1, no error."""
    nvml = FakeNvml([h200()], memory_v2_binding=False)
    (reading,) = make_backend(nvml).read()
    assert reading.available
    assert (reading.memory_used_mib, reading.memory_reserved_mib) == (RESERVED, None)
    assert nvml.memory_versions == {1: 2}


def test_a_failing_v2_call_fails_the_gpu_without_giving_up_v2(make_backend) -> None:
    """An error that is not a refusal of v2 (UNKNOWN) makes the GPU unavailable like any
    other failing call; once it answers again it is read through v2, not v1."""
    nvml = FakeNvml([h200(), h200(1)])
    nvml.devices[0].memory_v2 = FakeNvml.NVML_ERROR_UNKNOWN
    backend = make_backend(nvml)
    first, other = backend.read()
    assert not first.available and "Unknown Error" in (first.error or "")
    assert other.available and other.memory_reserved_mib == RESERVED
    nvml.devices[0].memory_v2 = None
    again = backend.read()[0]
    assert again.available
    assert (again.memory_used_mib, again.memory_reserved_mib) == (0, RESERVED)


def test_a_hang_in_memory_info_names_the_field(make_backend) -> None:
    """The hang guard still covers the memory call and names it."""
    nvml = FakeNvml([h200()])
    backend = make_backend(nvml, timeout_s=0.2)
    backend.read()
    release = nvml.hang(0, "nvmlDeviceGetMemoryInfo")
    try:
        (reading,) = backend.read()
        assert not reading.available and "reading memory" in (reading.error or "")
    finally:
        release.set()


# -- classification and leases use these figures ------------------------------------------------
def _sampler(engine: sa.Engine, clock: FakeClock, host: str, nvml: FakeNvml,
             environ: dict[str, str] | None = None) -> Sampler:
    store = LogStore(engine, host)
    static = load_static(environ=environ or {})
    backend = NvmlBackend(nvml=nvml, clock=clock, process_names=False)  # type: ignore[arg-type]
    return Sampler(backend, Pipeline(store, "nvml", static.config), store, clock, interval=3.0)


def _stored(engine: sa.Engine, host: str) -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(samples.c.state, samples.c.memory_used_mib, samples.c.memory_reserved_mib)
            .select_from(samples.join(gpus, gpus.c.id == samples.c.gpu_id))
            .where(gpus.c.host == host)).one()


@pytest.mark.postgres
def test_memory_state_is_classified_on_nvidia_smi_used(engine, clock) -> None:
    """69 % used plus a 2 % reservation: OPTIMAL (below memory_optimal 70) from v2's used;
    the same card read through v1 (used + reserved = 71 %) would be NORMAL. The samples row
    holds used and reserved apart (NULL reserved from v1)."""
    v2 = FakeNvml([h200(used_mib=690, reserved_mib=20, total_mib=1000)])
    v1 = FakeNvml([h200(used_mib=690, reserved_mib=20, total_mib=1000)])
    v1.devices[0].memory_v2 = FakeNvml.NVML_ERROR_FUNCTION_NOT_FOUND
    for host, nvml in (("v2host", v2), ("v1host", v1)):
        sampler = _sampler(engine, clock, host, nvml)
        try:
            sampler.tick()
        finally:
            sampler.backend.close()
    assert tuple(_stored(engine, "v2host")) == (int(GPUState.OPTIMAL), 690, 20)
    assert tuple(_stored(engine, "v1host")) == (int(GPUState.NORMAL), 710, None)


@pytest.mark.postgres
def test_reserved_memory_is_recorded_and_served(engine, clock) -> None:
    """One tick of an idle H200: the samples row, the status document (metrics and lease
    capacity), and /metrics in both namings carry nvidia-smi's used/reserved/free."""
    environ = {"GPUHISTORY_METRICS_DCGM": "1"}
    sampler = _sampler(engine, clock, "testhost", FakeNvml([h200()]), environ)
    static = load_static(environ=environ)
    try:
        sampler.tick()
        assert tuple(_stored(engine, "testhost"))[1:] == (0, RESERVED)
        leases = LeaseManager(engine, "testhost", clock, static.config)
        server = LiveServer(create_app(ServiceContext(
            engine=engine, host="testhost", clock=clock, config=static.config,
            sampler=sampler, leases=leases)))
        try:
            status = requests.get(f"{server.url}/api/gpu/status?gpu_id=0", timeout=10).json()
            history = requests.get(f"{server.url}/api/gpu/metrics/history?gpu_id=0",
                                   timeout=10).json()
            _, metrics = scrape(server.url)
        finally:
            server.close()
    finally:
        sampler.backend.close()
    m = status["metrics"]
    assert (m["memory_used_mb"], m["memory_reserved_mb"], m["memory_free_mb"],
            m["memory_total_mb"], m["memory_percent"]) == (0, RESERVED, TOTAL - RESERVED,
                                                           TOTAL, 0.0)
    # lease capacity: what processes can allocate (total - reserved) less the margin
    memory = status["memory"]
    assert (memory["device_used_mb"], memory["device_free_mb"], memory["capacity_mb"]) == (
        0, TOTAL - RESERVED, TOTAL - RESERVED - static.config().memory_reserve_mb)
    assert history["samples"][0]["memory_reserved_mb"] == RESERVED
    assert by_gpu(metrics, "gpuhistory_gpu_memory_used_bytes") == {0: 0}
    assert by_gpu(metrics, "gpuhistory_gpu_memory_reserved_bytes") == {0: RESERVED * MIB}
    assert by_gpu(metrics, "DCGM_FI_DEV_FB_USED") == {0: 0}
    assert by_gpu(metrics, "DCGM_FI_DEV_FB_RESERVED") == {0: RESERVED}
    assert by_gpu(metrics, "DCGM_FI_DEV_FB_FREE") == {0: TOTAL - RESERVED}


# -- recordings say what they have ---------------------------------------------------------------
def test_a_trace_has_no_reservation() -> None:
    """The trace CSV format has no reserved column: its readings leave it None."""
    rows = list(read_trace(bundled_trace()))[:8]
    assert rows and all(r.reading.memory_reserved_mib is None for r in rows)
    assert all(r.reading.memory_used_mib is not None for r in rows)


@pytest.mark.parametrize("with_reserved", [True, False], ids=["reserved", "without"])
def test_nvidia_smi_logs_carry_memory_reserved_when_queried(tmp_path: Path,
                                                            with_reserved: bool) -> None:
    """``memory.reserved`` in an nvidia-smi log is read; a log without it leaves None."""
    header = "timestamp, index, memory.used [MiB], memory.total [MiB]"
    row = f"2026/12/04 10:00:00.000, 0, 0 MiB, {TOTAL} MiB"
    if with_reserved:
        header += ", memory.reserved [MiB]"
        row += f", {RESERVED} MiB"
    path = tmp_path / "smi.csv"
    path.write_text(f"{header}\n{row}\n", encoding="utf-8")
    (read,) = read_nvidia_smi(path)
    assert (read.reading.memory_used_mib, read.reading.memory_total_mib) == (0, TOTAL)
    assert read.reading.memory_reserved_mib == (RESERVED if with_reserved else None)
