"""The NVML backend against the real pynvml and a real driver (marker ``gpu``).

Skipped as a whole, with the NVML error as the reason, where the driver is absent or NVML
cannot be initialised. Values are checked for plausibility only: fields a card does not
support (the fan on an H100) may be None.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pynvml
import pytest

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
