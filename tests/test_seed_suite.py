"""The original specification's test list, by its own names, against GPUManager in-process.

The seed named these tests for its in-memory manager; here each one proves the same
behaviour of the persistent one (the simulated backend replays the recorded 4-GPU trace,
the clock is a FakeClock, the database a real SQLite file).
"""

from __future__ import annotations

import pytest

from gpuhistory import GPUManager, get_gpu_manager
from gpuhistory.domain.metrics import GPUMetrics
from gpuhistory.manager import reset_gpu_manager
from tests.conftest import FLEET4

TOTAL = 81559
CAPACITY = TOTAL - 512


@pytest.fixture
def manager(tmp_path, clock):
    with GPUManager(db=tmp_path / "seed.db", backend="sim", trace=FLEET4, clock=clock) as m:
        yield m


def walk(manager: GPUManager, clock, seconds: float, step: float = 1.0) -> None:
    for _ in range(round(seconds / step)):
        clock.advance(step)
        manager.sampler.tick()


# -- TestGPUMemoryAllocation -------------------------------------------------------------
def test_allocation_initialization(manager) -> None:
    """A fresh GPU offers its memory minus the 512 MiB reserve."""
    assert manager.get_available_memory() == CAPACITY


def test_successful_allocation(manager) -> None:
    """allocate_memory returns True and the MiB stop being available."""
    assert manager.allocate_memory("llm_model", 2048) is True
    assert manager.get_available_memory() == CAPACITY - 2048


def test_multiple_allocations(manager) -> None:
    """Allocations add up."""
    assert all(manager.allocate_memory(f"a{i}", 1024) for i in range(3))
    assert manager.get_available_memory() == CAPACITY - 3072


def test_allocation_exceeds_limit(manager) -> None:
    """A request larger than what is left returns False and grants nothing."""
    assert manager.allocate_memory("too_big", CAPACITY + 1) is False
    assert manager.get_available_memory() == CAPACITY


def test_duplicate_allocation_id(manager) -> None:
    """The same id twice: the second is refused."""
    assert manager.allocate_memory("dup", 100) is True
    assert manager.allocate_memory("dup", 100) is False


def test_deallocation(manager) -> None:
    """deallocate_memory gives the MiB back."""
    manager.allocate_memory("x", 4096)
    assert manager.deallocate_memory("x") is True
    assert manager.get_available_memory() == CAPACITY


def test_deallocation_nonexistent(manager) -> None:
    """Deallocating an unknown id returns False."""
    assert manager.deallocate_memory("ghost") is False


def test_usage_stats(manager) -> None:
    """The status reports capacity, leased and available MiB and the active leases."""
    manager.allocate_memory("a", 1000)
    manager.allocate_memory("b", 500)
    stats = manager.get_gpu_status()["memory"]
    assert stats["leased_mb"] == 1500 and stats["active_leases"] == 2
    assert stats["available_mb"] == CAPACITY - 1500 and stats["capacity_mb"] == CAPACITY


# -- TestGPUManager ----------------------------------------------------------------------
def test_gpu_manager_initialization(manager) -> None:
    """The manager migrates its database and finds the trace's four GPUs."""
    assert manager.get_all_gpus_status()["count"] == 4


def test_gpu_availability_check(manager) -> None:
    """is_available: any GPU, and a given one; a missing index is not available."""
    assert manager.is_available() and manager.is_available(3)
    assert not manager.is_available(9)


def test_get_gpu_metrics(manager) -> None:
    """get_gpu_metrics returns the seed's GPUMetrics with a timestamp and backend sim."""
    metrics = manager.get_gpu_metrics(0)
    assert isinstance(metrics, GPUMetrics)
    assert metrics.backend == "sim" and metrics.memory_total_mb == TOTAL
    assert metrics.temperature_celsius == 31 and metrics.state == "OPTIMAL"


def test_gpu_state_determination(manager, clock) -> None:
    """GPU 1 goes OPTIMAL → NORMAL → THROTTLED → CRITICAL as the trace heats it."""
    seen = []
    for _ in range(30):
        walk(manager, clock, 5)
        seen.append(manager.get_gpu_metrics(1).state)
    order = [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]
    assert order[:4] == ["OPTIMAL", "NORMAL", "THROTTLED", "CRITICAL"]


def test_memory_allocation_integration(manager) -> None:
    """Allocations appear in the GPU status beside the device's real memory use."""
    manager.allocate_memory("job", 20_480, gpu_id=2)
    memory = manager.get_gpu_status(2)["memory"]
    assert memory["leased_mb"] == 20_480 and memory["device_used_mb"] == 480


def test_throttling_logic(manager, clock) -> None:
    """Multiplier 1.0 when OPTIMAL; 0.0 at GPU 1's critical peak; should_throttle follows."""
    assert manager.get_processing_speed_multiplier(1) == 1.0
    assert manager.should_throttle_processing(1) is False
    walk(manager, clock, 150, step=5)
    assert manager.get_processing_speed_multiplier(1) == 0.0
    assert manager.should_throttle_processing(1) is True


def test_gpu_status(manager) -> None:
    """get_gpu_status has state, metrics, throttling, memory and monitoring."""
    status = manager.get_gpu_status(0)
    assert {"state", "metrics", "throttling", "memory", "monitoring"} <= set(status)


def test_all_gpus_status(manager) -> None:
    """get_all_gpus_status lists every GPU."""
    assert [g["gpu_id"] for g in manager.get_all_gpus_status()["gpus"]] == [0, 1, 2, 3]


def test_temperature_trend(manager, clock) -> None:
    """While GPU 1 heats the trend is rising; an idle GPU is stable."""
    walk(manager, clock, 60)
    assert manager.get_temperature_trend(1, gpu_id=1)["trend"] == "rising"
    assert manager.get_temperature_trend(1, gpu_id=3)["trend"] == "stable"


def test_metrics_history(manager, clock) -> None:
    """History is persisted and bounded by history_size (200)."""
    walk(manager, clock, 250)
    assert len(manager.get_metrics_history(gpu_id=0)) == 200
    assert len(manager.get_metrics_history(limit=10)) == 10


def test_config_update(manager) -> None:
    """update_config validates and applies; a bad value raises and changes nothing."""
    assert manager.update_config({"temp_throttle": 80}).temp_throttle == 80
    with pytest.raises(ValueError):
        manager.update_config({"temp_optimal": 99})
    assert manager.config.temp_optimal == 65 and manager.config.temp_throttle == 80


def test_callback_registration(manager, clock) -> None:
    """A registered critical callback fires once, with the GPU's metrics."""
    seen = []
    manager.register_callback("critical", lambda e: seen.append(e.temperature_celsius))
    walk(manager, clock, 150, step=5)
    assert len(seen) == 1 and seen[0] >= 85


def test_monitoring_start_stop(manager) -> None:
    """start_monitoring/stop_monitoring run and stop the scheduled sampler."""
    assert manager.start_monitoring() is True and manager.sampler.running
    assert manager.start_monitoring() is False  # already running
    assert manager.stop_monitoring() is True and not manager.sampler.running


def test_global_instance(tmp_path) -> None:
    """get_gpu_manager returns one instance per process."""
    try:
        first = get_gpu_manager(db=tmp_path / "global.db", backend="sim")
        assert get_gpu_manager() is first
    finally:
        reset_gpu_manager()


# -- TestGPUManagerIntegration -----------------------------------------------------------
def test_full_monitoring_cycle(manager, clock) -> None:
    """Sampling through the whole trace logs GPU 1's overheat and its recovery."""
    kinds = []
    manager.register_callback("*", lambda e: kinds.append(e.kind))
    walk(manager, clock, 330, step=2)
    for kind in ("throttle", "critical", "overheat", "resume"):
        assert kind in kinds


def test_memory_allocation_lifecycle(manager) -> None:
    """allocate → visible → deallocate → gone, and the id is reusable."""
    assert manager.allocate_memory("cycle", 8192, ttl_seconds=60)
    assert manager.get_available_memory() == CAPACITY - 8192
    assert manager.deallocate_memory("cycle")
    assert manager.allocate_memory("cycle", 8192)


def test_state_transitions(manager, clock) -> None:
    """Every change of GPU 1's state is one state_change event with from and to."""
    changes = []
    manager.register_callback("state_change", lambda e: changes.append(
        (e.gpu_id, e.payload["from"], e.payload["to"])))
    walk(manager, clock, 150, step=5)
    gpu1 = [c[1:] for c in changes if c[0] == 1]
    assert gpu1[:4] == [(None, "OPTIMAL"), ("OPTIMAL", "NORMAL"), ("NORMAL", "THROTTLED"),
                        ("THROTTLED", "CRITICAL")]
