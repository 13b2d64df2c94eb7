"""The compute processes under each GPU for ``status -p``, read from the log's
``gpu_processes`` table (gpuhistory/sampling/hardware.py records them)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from gpuhistory.storage import processes


def running_processes(conn: sa.Connection, gpus: Iterable[tuple[int, str, int]],
                      at_ms: int | None = None) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """``(host, gpu index)`` → the processes running on it now (or at ``at_ms``), the
    largest first: pid, name, used_memory_mb, user, uid, and the Slurm job, container, pod
    and systemd unit where known. ``gpus``: (gpus.id, host, index) of each GPU asked
    about."""
    rows = {row_id: (host, index) for row_id, host, index in gpus}
    found = processes.running_processes(conn, rows, at_ms)
    return {rows[row_id]: docs for row_id, docs in found.items()}


def from_status(docs: Iterable[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """The same, from the API's status documents (each carries its GPU's processes)."""
    return {(d.get("host", ""), d["gpu_id"]): d.get("processes") or [] for d in docs}
