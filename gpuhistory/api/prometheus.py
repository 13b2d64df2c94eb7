"""GET /metrics: the Prometheus text exposition, built per scrape from the database.

The app process may not be the sampler, so nothing is kept in process-wide metric objects:
a custom collector takes the GPUs' latest entries and lease totals from the status
projection (gpuhistory/projection.py) and reads the rest from the log on each scrape (one
grouped query per counter, a key seek per GPU for its newest throttle counters) and
``generate_latest`` renders it from a private registry. Names follow the Prometheus
conventions: base units (bytes, seconds, hertz, ratios 0 to 1), ``_total`` on
counters only. See docs/prometheus.md.

Values are served as current only while they are (gpuhistory/api/freshness.py): when
monitoring is stopped or the sampler has not ticked for several intervals, the readings,
states and advice are left out, ``gpuhistory_gpu_available`` is 0 and
``gpuhistory_sampler_stale`` says why. The error and energy counters and the per-process
memory come from the in-process sampler's newest hardware facts (the log keeps none of
them); with ``metrics_dcgm`` the dcgm-exporter families follow (prometheus_dcgm.py).
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
from gpuhistory.api.freshness import REASONS, Freshness, judge
from gpuhistory.api.prometheus_dcgm import DcgmGpu, dcgm_families, retype
from gpuhistory.context import ServiceContext
from gpuhistory.documents import throttle_doc
from gpuhistory.domain.events import EventKind
from gpuhistory.domain.reading import CLOCK_EVENT_REASONS, Reading
from gpuhistory.domain.states import GPUState
from gpuhistory.leases.capacity import capacity_of
from gpuhistory.sampling.hardware import COUNTER_NAMES, HardwareFacts, ProcessInfo
from gpuhistory.sampling.procinfo import Owner
from gpuhistory.storage.queries import LatestSample
from gpuhistory.storage.schema import events, gpus, incidents, throttle_counters, transitions

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
    ("gpuhistory_gpu_memory_used_bytes", "Device memory in use (as nvidia-smi shows it: "
     "without what the driver reserves).", lambda r: _scale(r.memory_used_mib, MIB)),
    ("gpuhistory_gpu_memory_reserved_bytes", "Device memory the driver reserves.",
     lambda r: _scale(r.memory_reserved_mib, MIB)),
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
_XIDS = (
    sa.select(gpus.c.gpu_index, sa.func.count(), sa.func.max(events.c.id))
    .select_from(events.join(gpus, gpus.c.id == events.c.gpu_id))
    .where(events.c.kind == EventKind.XID.value, gpus.c.host == sa.bindparam("host"))
    .group_by(gpus.c.gpu_index)
)
_EVENT_PAYLOADS = sa.select(events.c.id, events.c.payload).where(
    events.c.id.in_(sa.bindparam("ids", expanding=True)))
_t = throttle_counters.c
_NEWEST_COUNTERS = (  # SEARCH throttle_counters USING PRIMARY KEY (gpu_id=?), read backwards
    sa.select(*(_t[name] for name in COUNTER_NAMES))
    .where(_t.gpu_id == sa.bindparam("gpu")).order_by(_t.ts_ms.desc()).limit(1)
)
# throttle_counters column → the reason label of gpuhistory_gpu_clock_event_seconds_total.
COUNTER_REASONS = {"power_cap_ns": "SwPowerCap", "sw_thermal_ns": "SwThermalSlowdown",
                   "hw_thermal_ns": "HwThermalSlowdown",
                   "power_brake_ns": "HwPowerBrakeSlowdown"}
# ECC series: (type label, counter label, reliability key); remapped rows: (kind, key).
ECC = (("corrected", "volatile", "ecc_volatile_corrected"),
       ("uncorrected", "volatile", "ecc_volatile_uncorrected"),
       ("corrected", "aggregate", "ecc_aggregate_corrected"),
       ("uncorrected", "aggregate", "ecc_aggregate_uncorrected"))
REMAPPED = (("correctable", "remapped_rows_correctable"),
            ("uncorrectable", "remapped_rows_uncorrectable"),
            ("pending", "remapped_rows_pending"))
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
        c.projection.refresh(now)  # the GPUs' entries and lease totals: from memory
        entries = c.projection.entries(c.host, now)
        config = c.config()
        usage = c.projection.lease_usage(now)
        capacity = ({e.gpu.index: capacity_of(e, config, *usage.get(e.gpu.id, (0, 0)))
                     for e in entries} if c.leases is not None else {})
        with c.engine.connect() as conn:
            newest = max((e.ts_ms for e in entries if e.ts_ms is not None), default=None)
            freshness = judge(c, conn, newest)
            current = [] if freshness.stale else entries
            advice = {e.gpu.index: throttle_doc(None, e, now, config) for e in current}
            moved = conn.execute(_TRANSITIONS, host).all()
            overheated = conn.execute(_INCIDENTS, host).all()
            lease_events = conn.execute(_LEASE_EVENTS, host).all()
            xids = conn.execute(_XIDS, host).all()
            last_xid = _last_xid_codes(conn, xids)
            throttle_ns = {e.gpu.index: _newest_counters(conn, e.gpu.id) for e in entries}
        facts = self._facts(freshness)
        yield from self._readings(current)
        yield from self._accounting(entries, freshness)
        yield from self._states(entries, current, advice, now)
        if capacity:
            yield from self._leases(entries, capacity)
        if c.leases is not None:
            yield from self._lease_commits()
        yield from self._counters(entries, moved, overheated, lease_events)
        yield from self._hardware(entries, xids, throttle_ns, facts)
        yield from self._service(entries, now, freshness)
        if config.metrics_dcgm:
            yield from dcgm_families([
                DcgmGpu(e, e.reading, facts.get(e.gpu.index), throttle_ns[e.gpu.index],
                        last_xid.get(e.gpu.index, 0))
                for e in current
                if e.reading is not None and e.state is not GPUState.UNAVAILABLE])

    def _facts(self, freshness: Freshness) -> dict[int, HardwareFacts]:
        """The in-process sampler's newest hardware facts, while they are current."""
        sampler = self.context.sampler
        if sampler is None or freshness.stale:
            return {}
        return dict(sampler.hardware_facts)

    def _accounting(self, entries: list[LatestSample],
                    freshness: Freshness) -> Iterator[Metric]:
        """Leases against their processes, from the in-process sampler's newest check
        (sampling/lease_watch.py), while the samples are current."""
        sampler = self.context.sampler
        accounts = {} if sampler is None or freshness.stale else sampler.lease_watch.accounts
        exceeding = GaugeMetricFamily(
            "gpuhistory_gpu_lease_exceeding_leases",
            "Active leases whose processes use more memory than they reserved.",
            labels=GPU_LABELS)
        unleased = GaugeMetricFamily(
            "gpuhistory_gpu_unleased_memory_bytes",
            "Memory used by compute processes that no active lease covers.", labels=GPU_LABELS)
        for entry in entries:
            newest = accounts.get(entry.gpu.index)
            if newest is None:
                continue
            found = newest[1]
            exceeding.add_metric(_labels(entry), float(len(found.exceeding)))
            unleased.add_metric(_labels(entry), float(found.unleased_mib * MIB))
        yield from (exceeding, unleased)

    # -- per GPU -------------------------------------------------------------------------
    def _readings(self, entries: list[LatestSample]) -> Iterator[Metric]:
        """The readings of the GPUs whose newest sample is current and available."""
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

    def _states(self, entries: list[LatestSample], current: list[LatestSample],
                advice: dict[int, dict[str, Any]], now: int) -> Iterator[Metric]:
        state = GaugeMetricFamily("gpuhistory_gpu_state",
                                  "1 for the GPU's current state, 0 for the others.",
                                  labels=(*GPU_LABELS, "state"))
        multiplier = GaugeMetricFamily(
            "gpuhistory_gpu_throttle_multiplier",
            "Advised speed multiplier, 0 to 1 (cool-downs included).", labels=GPU_LABELS)
        available = GaugeMetricFamily(
            "gpuhistory_gpu_available",
            "1 when the GPU answered its last tick and that tick is current, else 0.",
            labels=GPU_LABELS)
        last = GaugeMetricFamily("gpuhistory_gpu_last_sample_timestamp_seconds",
                                 "Unix time of the GPU's newest sample.", labels=GPU_LABELS)
        age = GaugeMetricFamily("gpuhistory_gpu_sample_age_seconds",
                                "Seconds since the GPU's newest sample.", labels=GPU_LABELS)
        fresh = {e.gpu.index for e in current}
        for entry in entries:
            now_state = entry.state if entry.state is not None else GPUState.UNAVAILABLE
            labels = _labels(entry)
            if entry.gpu.index in fresh:
                for each in GPUState:
                    state.add_metric([*labels, each.name], 1.0 if each is now_state else 0.0)
                multiplier.add_metric(labels,
                                      float(advice[entry.gpu.index]["speed_multiplier"]))
            up = entry.gpu.index in fresh and now_state is not GPUState.UNAVAILABLE
            available.add_metric(labels, 1.0 if up else 0.0)
            if entry.ts_ms is not None:
                last.add_metric(labels, entry.ts_ms / 1000)
                age.add_metric(labels, max(0.0, (now - entry.ts_ms) / 1000))
        yield from (state, multiplier, available, last, age)

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

    def _lease_commits(self) -> Iterator[Metric]:
        """This process's lease transactions (group commit, gpuhistory/leases/group_commit.py):
        commits, the operations they held, and batches that failed as a whole."""
        leases = self.context.leases
        if leases is None:
            return
        committer = leases.commits
        for name, doc, value in (
                ("gpuhistory_lease_commits", "Lease transactions committed by this process "
                 "(each one durable commit, holding one or more operations).",
                 committer.commits),
                ("gpuhistory_lease_operations", "Lease operations (grant, renew, release, "
                 "reap) answered by this process's commits, done or refused.",
                 committer.operations),
                ("gpuhistory_lease_failed_commits", "Lease transactions of this process that "
                 "failed as a whole (every operation in them answered with the error).",
                 committer.failed_commits)):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(value))
            yield family

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

    # -- what the hardware said ----------------------------------------------------------
    def _hardware(self, entries: list[LatestSample], xids: Sequence[Any],
                  throttle_ns: dict[int, dict[str, int | None]],
                  facts: dict[int, HardwareFacts]) -> Iterator[Metric]:
        per_gpu = {e.gpu.index: 0 for e in entries} | {index: n for index, n, _ in xids}
        family = CounterMetricFamily("gpuhistory_gpu_xid_errors",
                                     "Critical XID errors recorded in the log.",
                                     labels=("gpu",))
        for gpu_index, n in sorted(per_gpu.items()):
            family.add_metric([str(gpu_index)], float(n))
        yield family
        family = CounterMetricFamily(
            "gpuhistory_gpu_clock_event_seconds",
            "Time the hardware spent slowed down for this reason (NVML's cumulative counter).",
            labels=(*GPU_LABELS, "reason"))
        for entry in entries:
            counters = throttle_ns.get(entry.gpu.index, {})
            for column, reason in COUNTER_REASONS.items():
                value = counters.get(column)
                if value is not None:
                    family.add_metric([*_labels(entry), reason], value / 1e9)
        yield family
        yield from self._reliability(entries, facts)
        yield from self._processes(entries, facts)

    def _reliability(self, entries: list[LatestSample],
                     facts: dict[int, HardwareFacts]) -> Iterator[Metric]:
        known = [(e, facts[e.gpu.index].reliability) for e in entries
                 if e.gpu.index in facts and facts[e.gpu.index].reliability]
        ecc = CounterMetricFamily("gpuhistory_gpu_ecc_errors",
                                  "ECC memory errors: volatile since the driver loaded, "
                                  "aggregate over the card's life.",
                                  labels=(*GPU_LABELS, "type", "counter"))
        rows = GaugeMetricFamily("gpuhistory_gpu_remapped_rows",
                                 "Memory rows remapped (or pending a remap), by error kind.",
                                 labels=(*GPU_LABELS, "kind"))
        failure = GaugeMetricFamily("gpuhistory_gpu_row_remap_failure",
                                    "1 when a row remapping has failed.", labels=GPU_LABELS)
        replays = CounterMetricFamily("gpuhistory_gpu_pcie_replays",
                                      "PCIe replays (retransmissions).", labels=GPU_LABELS)
        energy = CounterMetricFamily("gpuhistory_gpu_energy_joules",
                                     "Energy used since the driver loaded (read once a "
                                     "minute).", labels=GPU_LABELS)
        for entry, values in known:
            assert values is not None
            labels = _labels(entry)
            for kind, counter, key in ECC:
                if values.get(key) is not None:
                    ecc.add_metric([*labels, kind, counter], float(values[key] or 0))
            for kind, key in REMAPPED:
                if values.get(key) is not None:
                    rows.add_metric([*labels, kind], float(values[key] or 0))
            if values.get("remap_failure") is not None:
                failure.add_metric(labels, float(values["remap_failure"] or 0))
            if values.get("pcie_replays") is not None:
                replays.add_metric(labels, float(values["pcie_replays"] or 0))
            if values.get("energy_mj") is not None:
                energy.add_metric(labels, (values["energy_mj"] or 0) / 1000)
        yield from (ecc, rows, failure, replays, energy)

    def _processes(self, entries: list[LatestSample],
                   facts: dict[int, HardwareFacts]) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "gpuhistory_process_memory_bytes",
            "GPU memory held by a running compute process, with who runs it and where "
            "(Slurm job, container, Kubernetes pod UID, systemd unit; empty: unknown). "
            "Only live processes: a series ends with its process.",
            labels=("gpu", "uuid", "host", "pid", "name", "user", "job", "container", "pod",
                    "unit"))
        for entry in entries:
            fact = facts.get(entry.gpu.index)
            if fact is None or not fact.processes:
                continue
            gpu = entry.gpu
            held: dict[int, int] = {}
            labels: dict[int, list[str]] = {}
            for p in fact.processes:  # one pid twice (MIG instances): its memory summed
                if p.used_memory_mib is None:
                    continue
                held[p.pid] = held.get(p.pid, 0) + p.used_memory_mib
                labels[p.pid] = _process_labels(p)
            for pid, mib in sorted(held.items()):
                family.add_metric([str(gpu.index), gpu.uuid, gpu.host, str(pid), *labels[pid]],
                                  float(mib * MIB))
        yield family

    # -- the service itself --------------------------------------------------------------
    def _service(self, entries: list[LatestSample], now: int,
                 freshness: Freshness) -> Iterator[Metric]:
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
        stale = GaugeMetricFamily(
            "gpuhistory_sampler_stale",
            "1 when this host's samples are not current, by why: monitoring_stopped (it was "
            "stopped) or sampler_stale (no tick for several intervals).", labels=("reason",))
        for reason in REASONS:
            stale.add_metric([reason], 1.0 if freshness.reason == reason else 0.0)
        yield stale
        tick = sampler.last_tick if sampler is not None else None
        if tick is not None:
            yield GaugeMetricFamily("gpuhistory_tick_duration_seconds",
                                    "How long the sampler's last tick took.",
                                    value=tick.seconds)
            yield GaugeMetricFamily("gpuhistory_last_tick_age_seconds",
                                    "Seconds since the sampler's last tick.",
                                    value=max(0.0, (now - tick.ts_ms) / 1000))


def _process_labels(p: ProcessInfo) -> list[str]:
    """name, user, job, container, pod, unit of a process ("" where unknown)."""
    o = p.owner or Owner()
    return [p.name or "", p.user or "", o.slurm_job_id or "", o.container_id or "",
            o.pod_uid or "", o.systemd_unit or ""]


def _add_reasons(family: GaugeMetricFamily, entry: LatestSample, reading: Reading) -> None:
    if reading.clock_event_reasons is None:
        return
    labels = _labels(entry)
    for bit, reason in CLOCK_EVENT_REASONS.items():
        family.add_metric([*labels, reason],
                          1.0 if reading.clock_event_reasons & bit else 0.0)


def _last_xid_codes(conn: sa.Connection, xids: Sequence[Any]) -> dict[int, int]:
    """The code of each GPU's newest XID event (rows of ``_XIDS``)."""
    if not xids:
        return {}
    payloads = dict(conn.execute(_EVENT_PAYLOADS, {"ids": [row[2] for row in xids]}).all())
    out = {}
    for gpu_index, _, newest in xids:
        code = (payloads.get(newest) or {}).get("code")
        if isinstance(code, int):
            out[gpu_index] = code
    return out


def _newest_counters(conn: sa.Connection, gpu_id: int) -> dict[str, int | None]:
    row = conn.execute(_NEWEST_COUNTERS, {"gpu": gpu_id}).first()
    return {} if row is None else dict(zip(COUNTER_NAMES, row, strict=True))


def exposition(context: ServiceContext) -> bytes:
    """The text exposition of ``context``'s database, now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GpuHistoryCollector(context))
    return retype(generate_latest(registry))


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
