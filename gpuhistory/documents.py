"""The JSON documents every interface returns (API, CLI ``--json``, Python).

Field names follow DESIGN §5. The status documents are built from entries (the status
projection's, or the log's for a past time) by one builder, :func:`status_docs`; the
functions that must read take an open connection, so an answer is one consistent read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from gpuhistory.analytics import bulk
from gpuhistory.clock import iso_utc
from gpuhistory.domain.config import Config
from gpuhistory.domain.metrics import GPUMetrics
from gpuhistory.domain.states import GPUState
from gpuhistory.domain.throttle import advise
from gpuhistory.leases.capacity import capacity_of
from gpuhistory.storage.queries import LatestSample, cooldown_starts
from gpuhistory.storage.sample_source import raw_samples


def metrics_doc(entry: LatestSample) -> dict[str, Any] | None:
    if entry.reading is None or entry.state is None:
        return None
    return GPUMetrics.from_reading(entry.reading, entry.state, entry.ts_ms,
                                   entry.gpu.backend).to_dict()


def throttle_doc(conn: sa.Connection | None, entry: LatestSample, at_ms: int,
                 config: Config) -> dict[str, Any]:
    """The throttle advice at ``at_ms`` from the entry's cooldown starts; asked about a time
    before the entry's sample, those in force then (read on ``conn``; without one, the
    entry's own)."""
    state = entry.state if entry.state is not None else GPUState.UNAVAILABLE
    if at_ms >= (entry.ts_ms or 0) or conn is None:
        left_hot, left_critical = entry.left_hot_ms, entry.left_critical_ms
    else:  # asked about a time before the entry's sample
        left_hot, left_critical = cooldown_starts(conn, entry.gpu.id, at_ms)
    return advise(state, at_ms, config, left_hot, left_critical).to_dict()


def status_doc(entry: LatestSample, now_ms: int, config: Config,
               conn: sa.Connection | None = None) -> dict[str, Any]:
    """One GPU's status: identity, state, latest metrics, throttle advice, card thresholds."""
    gpu = entry.gpu
    state = entry.state if entry.state is not None else GPUState.UNAVAILABLE
    throttling = throttle_doc(conn, entry, now_ms, config)
    return {
        "gpu_id": gpu.index,
        "uuid": gpu.uuid,
        "name": gpu.name,
        "host": gpu.host,
        "backend": gpu.backend,
        "available": state is not GPUState.UNAVAILABLE,
        "state": state.name,
        "effective_state": throttling["effective_state"],  # what the advice follows
        "timestamp": iso_utc(entry.ts_ms),
        "sample_age_seconds": (None if entry.ts_ms is None
                               else round((now_ms - entry.ts_ms) / 1000, 3)),
        "metrics": metrics_doc(entry),
        "throttling": throttling,
        "thresholds": {
            "slowdown_temp_celsius": gpu.slowdown_temp_c,
            "shutdown_temp_celsius": gpu.shutdown_temp_c,
        },
    }


@dataclass(frozen=True, slots=True)
class Monitoring:
    """The sampler of the answering process: whether it runs, its interval, the host it
    samples, and its lease accounting by GPU index (None where it has none)."""

    running: bool
    interval_s: float
    host: str
    accounting: Callable[[int], dict[str, Any] | None] = lambda index: None


def status_docs(entries: Sequence[LatestSample], now_ms: int, config: Config, *,
                processes: Mapping[int, list[dict[str, Any]]] | None = None,
                usage: Mapping[int, tuple[int, int]] | None = None,
                monitoring: Monitoring | None = None,
                conn: sa.Connection | None = None) -> list[dict[str, Any]]:
    """The status documents of ``entries`` — every interface's (API, CLI, Python) one
    builder. Each part is added when given: ``processes`` (gpus.id → the processes running
    on it) as ``processes``; ``usage`` (gpus.id → MiB leased, active leases) as the lease
    capacity ``memory``; ``monitoring`` on the GPUs of the host it samples."""
    docs = []
    for entry in entries:
        doc = status_doc(entry, now_ms, config, conn)
        gpu_id = entry.gpu.id
        if processes is not None:
            doc["processes"] = processes.get(gpu_id, [])
        if usage is not None:
            doc["memory"] = capacity_of(entry, config, *usage.get(gpu_id, (0, 0))).to_dict()
        if monitoring is not None and entry.gpu.host == monitoring.host:
            doc["monitoring"] = {"monitoring": monitoring.running,
                                 "interval_seconds": monitoring.interval_s}
            accounting = monitoring.accounting(entry.gpu.index)
            if accounting is not None:  # leases against the processes last read
                doc["lease_accounting"] = accounting
        docs.append(doc)
    return docs


def history_doc(conn: sa.Connection, entry: LatestSample, since_ms: int | None,
                until_ms: int | None, limit: int, samples_json: bool = False) -> dict[str, Any]:
    """The newest ``limit`` raw samples of a GPU in [since, until], oldest first
    (``samples_json``: the samples stay JSON text, an ``orjson.Fragment``)."""
    # SEARCH samples USING PRIMARY KEY (gpu_id=? AND ts_ms>? AND ts_ms<?), read backwards.
    # on PostgreSQL with the kept rows of dropped partitions (storage/sample_source.py)
    query = bulk.sample_statement(entry.gpu.id, since_ms, until_ms, newest_first=True,
                                  source=raw_samples(conn))
    rows = list(conn.execute(query.limit(limit)).all())
    rows.reverse()
    text = bulk.metrics_json(entry.gpu, rows)
    return {"gpu_id": entry.gpu.index, "uuid": entry.gpu.uuid, "host": entry.gpu.host,
            "since": iso_utc(since_ms), "until": iso_utc(until_ms), "count": len(rows),
            "samples": orjson.Fragment(text) if samples_json else orjson.loads(text)}
