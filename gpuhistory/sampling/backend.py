"""The small interface every source of readings implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gpuhistory.domain.reading import GpuIdentity, Reading
from gpuhistory.sampling.hardware import HardwareFacts


@dataclass(frozen=True, slots=True)
class BackendHealth:
    ok: bool
    detail: str | None = None


class Backend(Protocol):
    """A source of one Reading per GPU per tick.

    ``read`` never raises for a per-GPU problem: that GPU's Reading is unavailable and
    the others are read as usual. When the source as a whole is failing (NVML init),
    ``read`` returns unavailable readings for the GPUs it knew, or none if it never knew any.
    """

    name: str  # "nvml" or "sim": stored with each GPU and shown in every answer

    def read(self) -> list[Reading]: ...

    def identities(self) -> list[GpuIdentity]:
        """The GPUs known now, with their slow-moving facts (name, memory, thresholds)."""
        ...

    def health(self) -> BackendHealth: ...

    def close(self) -> None: ...


@runtime_checkable
class HardwareSource(Protocol):
    """The optional part of a backend: what runs on each GPU and what its hardware did.

    ``read_hardware`` returns one HardwareFacts per GPU it could ask: the compute processes
    (None where the list cannot be read), the cumulative throttle-time counters (None where
    unsupported) and the XID errors that arrived since the last call. The sampler calls it
    every ``hardware_every`` ticks; an exception from it is logged and reported, and never
    fails the tick. A backend may also offer ``read_with_hardware()`` returning
    ``(readings, facts, error)``: both in one go (the NVML backend: one hand-off to its
    worker thread instead of two), which the sampler then prefers.
    """

    def read_hardware(self) -> list[HardwareFacts]: ...


class BackendUnavailable(RuntimeError):
    """The source cannot be used at all (the NVML library is absent, a trace is unreadable)."""
