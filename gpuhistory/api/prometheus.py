"""GET /metrics: the Prometheus text exposition, built per scrape from the database.

The app process may not be the sampler, so nothing is kept in process-wide metric objects:
a custom collector reads the log on each scrape (one ``latest_samples`` statement, one
capacity query, one grouped query per counter) and ``generate_latest`` renders it from a
private registry. Names follow the Prometheus conventions: base units (bytes, seconds,
hertz, ratios 0 to 1), ``_total`` on counters only. See docs/prometheus.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from flask import Response
from flask_openapi3 import APIBlueprint, Tag
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from gpuhistory import __version__
from gpuhistory.api.common import ctx
from gpuhistory.context import ServiceContext
from gpuhistory.documents import throttle_doc
from gpuhistory.domain.events import EventKind
from gpuhistory.domain.reading import CLOCK_EVENT_REASONS, Reading
from gpuhistory.domain.states import GPUState
from gpuhistory.storage.queries import LatestSample, latest_samples
from gpuhistory.storage.schema import events, gpus, incidents, transitions

bp = APIBlueprint("prometheus", __name__, abp_tags=[Tag(name="prometheus")])

MIB = 1024 * 1024
MHZ = 1_000_000
GPU_LABELS = ("gpu", "uuid", "name", "host")
LEASE_OUTCOMES = {
    EventKind.LEASE_GRANTED.value: "granted",
    EventKind.LEASE_RENEWED.value: "renewed",
    EventKind.LEASE_RELEASED.value: "released",
    EventKind.LEASE_EXPIRED.value: "expired",
}


def _scale(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


# (name, help, value from a reading); a None value omits the sample.
READING_GAUGES: tuple[tuple[str, str, Any], ...] = (
    ("gpuhistory_gpu_temperature_celsius", "GPU core temperature.",
     lambda r: r.temperature_c),
    ("gpuhistory_gpu_memory_temperature_celsius", "GPU memory (HBM) temperature.",
     lambda r: r.memory_temperature_c),
    ("gpuhistory_gpu_memory_used_bytes", "Device memory in use.",
     lambda r: _scale(r.memory_used_mib, MIB)),
    ("gpuhistory_gpu_memory_total_bytes", "Device memory in total.",
     lambda r: _scale(r.memory_total_mib, MIB)),
    ("gpuhistory_gpu_utilization_ratio", "GPU utilization, 0 to 1.",
     lambda r: _scale(r.utilization_pct, 0.01)),
    ("gpuhistory_gpu_power_watts", "Power draw.", lambda r: r.power_w),
    ("gpuhistory_gpu_power_limit_watts", "Enforced power limit.", lambda r: r.power_limit_w),
    ("gpuhistory_gpu_sm_clock_hertz", "SM clock.", lambda r: _scale(r.sm_clock_mhz, MHZ)),
    ("gpuhistory_gpu_memory_clock_hertz", "Memory clock.",
     lambda r: _scale(r.mem_clock_mhz, MHZ)),
    ("gpuhistory_gpu_pstate", "Performance state (0 is P0, the fastest).",
     lambda r: r.pstate),
    ("gpuhistory_gpu_fan_ratio", "Fan speed, 0 to 1.", lambda r: _scale(r.fan_pct, 0.01)),
)

_TRANSITIONS = (
    sa.select(gpus.c.gpu_index, transitions.c.to_state, sa.func.count())
    .select_from(transitions.join(gpus, gpus.c.id == transitions.c.gpu_id))
    .where(gpus.c.host == sa.bindparam("host"))
    .group_by(gpus.c.gpu_index, transitions.c.to_state)
)
_INCIDENTS = (
    sa.select(gpus.c.gpu_index, sa.func.count())
    .select_from(incidents.join(gpus, gpus.c.id == incidents.c.gpu_id))
    .where(gpus.c.host == sa.bindparam("host"))
    .group_by(gpus.c.gpu_index)
)
_LEASE_EVENTS = (
    sa.select(events.c.kind, sa.func.count())
    .select_from(events.join(gpus, gpus.c.id == events.c.gpu_id))
    .where(events.c.kind.in_(list(LEASE_OUTCOMES)), gpus.c.host == sa.bindparam("host"))
    .group_by(events.c.kind)
)


def _labels(entry: LatestSample) -> list[str]:
    gpu = entry.gpu
    return [str(gpu.index), gpu.uuid, gpu.name or "", gpu.host]


class GpuHistoryCollector(Collector):
    """Every metric, read from the database when collected (one consistent connection)."""

    def __init__(self, context: ServiceContext) -> None:
        self.context = context

    def describe(self) -> list[Metric]:
        return []  # nothing to describe up front: collect() reads the database

    def collect(self) -> Iterator[Metric]:
        c = self.context
        now = c.clock.now_ms()
        host = {"host": c.host}
        with c.engine.connect() as conn:
            entries = latest_samples(conn, c.host)
            config = c.config()
            advice = {e.gpu.index: throttle_doc(conn, e, now, config) for e in entries}
            capacity = c.leases.capacities(conn, entries) if c.leases is not None else {}
            moved = conn.execute(_TRANSITIONS, host).all()
            overheated = conn.execute(_INCIDENTS, host).all()
            lease_events = conn.execute(_LEASE_EVENTS, host).all()
        yield from self._readings(entries)
        yield from self._states(entries, advice)
        if capacity:
            yield from self._leases(entries, capacity)
        yield from self._counters(entries, moved, overheated, lease_events)
        yield from self._service(entries, now)

    # -- per GPU -------------------------------------------------------------------------
    def _readings(self, entries: list[LatestSample]) -> Iterator[Metric]:
        with_reading = [(e, e.reading) for e in entries if e.reading is not None
                        and e.state is not GPUState.UNAVAILABLE]
        for name, doc, value_of in READING_GAUGES:
            family = GaugeMetricFamily(name, doc, labels=GPU_LABELS)
            for entry, reading in with_reading:
                value = value_of(reading)
                if value is not None:
                    family.add_metric(_labels(entry), float(value))
            yield family
        reasons = GaugeMetricFamily(
            "gpuhistory_gpu_clock_event_reason",
            "1 when this NVML clock-event (throttle) reason is active, else 0.",
            labels=(*GPU_LABELS, "reason"))
        for entry, reading in with_reading:
            _add_reasons(reasons, entry, reading)
        yield reasons
        last = GaugeMetricFamily("gpuhistory_gpu_last_sample_timestamp_seconds",
                                 "Unix time of the GPU's newest sample.", labels=GPU_LABELS)
        for entry in entries:
            if entry.ts_ms is not None:
                last.add_metric(_labels(entry), entry.ts_ms / 1000)
        yield last

    def _states(self, entries: list[LatestSample],
                advice: dict[int, dict[str, Any]]) -> Iterator[Metric]:
        state = GaugeMetricFamily("gpuhistory_gpu_state",
                                  "1 for the GPU's current state, 0 for the others.",
                                  labels=(*GPU_LABELS, "state"))
        multiplier = GaugeMetricFamily(
            "gpuhistory_gpu_throttle_multiplier",
            "Advised speed multiplier, 0 to 1 (cool-downs included).", labels=GPU_LABELS)
        available = GaugeMetricFamily("gpuhistory_gpu_available",
                                      "1 when the GPU answered its last tick, else 0.",
                                      labels=GPU_LABELS)
        for entry in entries:
            current = entry.state if entry.state is not None else GPUState.UNAVAILABLE
            labels = _labels(entry)
            for each in GPUState:
                state.add_metric([*labels, each.name], 1.0 if each is current else 0.0)
            multiplier.add_metric(labels, float(advice[entry.gpu.index]["speed_multiplier"]))
            available.add_metric(labels, 0.0 if current is GPUState.UNAVAILABLE else 1.0)
        yield from (state, multiplier, available)

    def _leases(self, entries: list[LatestSample], capacity: dict[int, Any]) -> Iterator[Metric]:
        families = {
            "leased": GaugeMetricFamily("gpuhistory_gpu_lease_leased_bytes",
                                        "Memory held by active leases.", labels=GPU_LABELS),
            "available": GaugeMetricFamily("gpuhistory_gpu_lease_available_bytes",
                                           "Memory that can still be leased.",
                                           labels=GPU_LABELS),
            "capacity": GaugeMetricFamily("gpuhistory_gpu_lease_capacity_bytes",
                                          "Leasable memory: the card's, less the reserve "
                                          "and any limit.", labels=GPU_LABELS),
            "active": GaugeMetricFamily("gpuhistory_gpu_lease_active_leases",
                                        "Number of active leases.", labels=GPU_LABELS),
        }
        for entry in entries:
            cap = capacity.get(entry.gpu.index)
            if cap is None:
                continue
            labels = _labels(entry)
            families["leased"].add_metric(labels, float(cap.leased_mb * MIB))
            families["available"].add_metric(labels, float(cap.available_mb * MIB))
            families["capacity"].add_metric(labels, float(cap.capacity_mb * MIB))
            families["active"].add_metric(labels, float(cap.active_leases))
        yield from families.values()

    # -- counters from the log -----------------------------------------------------------
    def _counters(self, entries: list[LatestSample], moved: Sequence[Any],
                  overheated: Sequence[Any], lease_events: Sequence[Any]) -> Iterator[Metric]:
        indices = sorted({e.gpu.index for e in entries}
                         | {row[0] for row in moved} | {row[0] for row in overheated})
        counts = {(i, s.name): 0 for i in indices for s in GPUState}
        for gpu_index, to_state, n in moved:
            counts[(gpu_index, GPUState(to_state).name)] = n
        family = CounterMetricFamily("gpuhistory_state_transitions",
                                     "State transitions recorded in the log, by new state.",
                                     labels=("gpu", "to_state"))
        for (gpu_index, to_state), n in sorted(counts.items()):
            family.add_metric([str(gpu_index), to_state], float(n))
        yield family
        per_gpu = {i: 0 for i in indices} | {gpu_index: n for gpu_index, n in overheated}
        family = CounterMetricFamily("gpuhistory_overheat_incidents",
                                     "Overheat incidents recorded in the log.",
                                     labels=("gpu",))
        for gpu_index, n in sorted(per_gpu.items()):
            family.add_metric([str(gpu_index)], float(n))
        yield family
        outcomes = dict.fromkeys(LEASE_OUTCOMES.values(), 0)
        for kind, n in lease_events:
            outcomes[LEASE_OUTCOMES[kind]] = n
        family = CounterMetricFamily("gpuhistory_lease_events",
                                     "Lease events recorded in the log, by outcome.",
                                     labels=("outcome",))
        for outcome, n in outcomes.items():
            family.add_metric([outcome], float(n))
        yield family

    # -- the service itself --------------------------------------------------------------
    def _service(self, entries: list[LatestSample], now: int) -> Iterator[Metric]:
        sampler = self.context.sampler
        if sampler is not None:
            backend = sampler.backend.name
        else:
            newest = max(entries, key=lambda e: e.ts_ms or -1, default=None)
            backend = newest.gpu.backend if newest is not None else "none"
        info = GaugeMetricFamily("gpuhistory_info", "gpuhistory's version and backend.",
                                 labels=("version", "backend"))
        info.add_metric([__version__, backend], 1.0)
        yield info
        tick = sampler.last_tick if sampler is not None else None
        if tick is not None:
            yield GaugeMetricFamily("gpuhistory_tick_duration_seconds",
                                    "How long the sampler's last tick took.",
                                    value=tick.seconds)
            yield GaugeMetricFamily("gpuhistory_last_tick_age_seconds",
                                    "Seconds since the sampler's last tick.",
                                    value=max(0.0, (now - tick.ts_ms) / 1000))


def _add_reasons(family: GaugeMetricFamily, entry: LatestSample, reading: Reading) -> None:
    if reading.clock_event_reasons is None:
        return
    labels = _labels(entry)
    for bit, reason in CLOCK_EVENT_REASONS.items():
        family.add_metric([*labels, reason],
                          1.0 if reading.clock_event_reasons & bit else 0.0)


def exposition(context: ServiceContext) -> bytes:
    """The text exposition of ``context``'s database, now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GpuHistoryCollector(context))
    return generate_latest(registry)


@bp.get("/metrics", responses={200: {"description": "Prometheus text exposition format",
                                     "content": {"text/plain": {"schema": {"type": "string"}}}},
                               503: {"description": "the database could not be read",
                                     "content": {"text/plain": {"schema": {"type": "string"}}}}})
def prometheus_metrics() -> Response:
    """Every GPU's latest reading, state, leases and the log's counters, for Prometheus."""
    try:
        body = exposition(ctx())
    except sa.exc.SQLAlchemyError as exc:
        return Response(f"# database unavailable: {type(exc).__name__}\n", status=503,
                        mimetype="text/plain")
    return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})
