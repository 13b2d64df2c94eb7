"""Choosing the backend: auto falls back to the simulator only when NVML's library is absent."""

from __future__ import annotations

import logging

import pytest

from gpuhistory.sampling.nvml import NvmlBackend
from gpuhistory.sampling.select import select_backend
from gpuhistory.sampling.sim import SimBackend
from tests.fake_pynvml import scenario


def test_auto_without_a_driver_falls_back_to_sim_loudly(clock, caplog) -> None:
    """No NVIDIA driver: auto replays the bundled trace and warns that it is simulated."""
    with caplog.at_level(logging.WARNING):
        backend = select_backend("auto", clock, nvml=scenario("no_driver"))
    assert isinstance(backend, SimBackend) and backend.name == "sim"
    assert "SIMULATED" in caplog.text


def test_auto_with_a_failing_driver_stays_on_nvml(clock) -> None:
    """Driver present but init failing: auto stays on NVML (GPUs UNAVAILABLE), never sim."""
    backend = select_backend("auto", clock, nvml=scenario("driver_not_loaded"))
    assert isinstance(backend, NvmlBackend)
    assert backend.read() == []
    assert not backend.health().ok


def test_auto_with_gpus_uses_nvml(clock) -> None:
    """A working driver: auto is NVML and reads the GPUs."""
    backend = select_backend("auto", clock, nvml=scenario("four_h100"))
    assert isinstance(backend, NvmlBackend) and len(backend.read()) == 4


def test_nvml_without_a_driver_reports_unavailable_and_retries(clock) -> None:
    """--backend nvml with no library: no fallback; unhealthy, and init is retried later."""
    fake = scenario("no_driver")
    backend = select_backend("nvml", clock, nvml=fake)
    assert isinstance(backend, NvmlBackend) and backend.read() == []
    assert "not found" in (backend.health().detail or "").lower()
    tries = fake.calls["nvmlInit"]
    clock.advance(120)
    backend.read()
    assert fake.calls["nvmlInit"] == tries + 1


def test_unknown_backend_is_refused(clock) -> None:
    """A typo in --backend is an error naming the choices."""
    with pytest.raises(ValueError, match="auto, nvml, sim"):
        select_backend("cuda", clock)
