"""The small interface every source of readings implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gpuhistory.domain.reading import GpuIdentity, Reading


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


class BackendUnavailable(RuntimeError):
    """The source cannot be used at all (the NVML library is absent, a trace is unreadable)."""
