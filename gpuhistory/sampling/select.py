"""Choosing the backend: ``nvml``, ``sim``, or ``auto`` (DESIGN §4)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from types import ModuleType

from gpuhistory.clock import Clock
from gpuhistory.sampling.backend import Backend
from gpuhistory.sampling.nvml import DEFAULT_TIMEOUT_S, NvmlBackend, nvml_library_present
from gpuhistory.sampling.sim import SimBackend

log = logging.getLogger(__name__)

BACKENDS = ("auto", "nvml", "sim")

SIM_WARNING = (
    "NVML library not found (no NVIDIA driver on this machine): falling back to the SIMULATED "
    "backend, replaying {trace}. Every answer says \"backend\": \"sim\". "
    "Install the NVIDIA driver, or pass --backend sim to silence this warning."
)


def select_backend(
    kind: str,
    clock: Clock,
    trace: str | os.PathLike[str] | None = None,
    sim_gpus: int | None = None,
    nvml: ModuleType | None = None,
    nvml_timeout: Callable[[], float] | float = DEFAULT_TIMEOUT_S,
) -> Backend:
    """The backend for ``kind``. ``auto`` uses NVML unless its library is absent.

    ``nvml`` replaces the pynvml module (tests pass a fake one). ``nvml_timeout``: how long
    a read waits for NVML (seconds, or a getter: config key ``nvml_timeout_seconds``).

    When the library is present but failing, ``auto`` stays on NVML: the GPUs are reported
    UNAVAILABLE and init is retried, rather than quietly showing simulated data.
    """
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; one of {', '.join(BACKENDS)}")
    if kind == "sim":
        return SimBackend(clock, trace=trace, gpus=sim_gpus)
    timeout = nvml_timeout() if callable(nvml_timeout) else nvml_timeout
    if kind == "nvml" or nvml_library_present(nvml, timeout_s=timeout):
        return NvmlBackend(nvml=nvml, clock=clock, timeout_s=nvml_timeout)
    backend = SimBackend(clock, trace=trace, gpus=sim_gpus)
    log.warning(SIM_WARNING.format(trace=backend.trace))
    return backend
