"""The fleet's hosts at a glance: each host's GPUs, worst state, freshness, sampler and
leases — the document of ``GET /api/fleet/hosts``, built from a fixed number of statements.

A host is **stale** when its values must not be read as the GPUs' state now:

- ``sampler_gone``: its sampler claim's heartbeat is older than the claim's own
  ``stale_after_ms`` (the process died or hangs without giving the claim back);
- ``monitoring_stopped``: the claim is held but no tick for longer than
  ``stale_after(interval)`` and the newest start/stop an operator asked for is a stop;
- ``sampler_stale``: the claim is held but no tick for longer than ``stale_after(interval)``;
- ``no_sampler``: no claim (the sampler stopped and gave it back) and no tick for longer
  than ``stale_after(interval)`` — or no tick at all.

A host whose every GPU is known only from imported recordings and that no sampler claims is
**recorded**: shown, never judged stale. The state shown is the *effective* state, the one
the throttle advice follows (a GPU that left CRITICAL stays CRITICAL through its pause);
``state`` beside it is the raw state of the newest sample.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa

from gpuhistory.api.freshness import stale_after
from gpuhistory.clock import iso_utc
from gpuhistory.documents import throttle_doc
from gpuhistory.domain.config import Config
from gpuhistory.domain.events import EventKind
from gpuhistory.domain.slots import RECORDED_BACKENDS
from gpuhistory.domain.states import GPUState
from gpuhistory.leases.model import lease_capacity_mb
from gpuhistory.projection import StatusProjection
from gpuhistory.sampling.control import last_request
from gpuhistory.storage.claims import ClaimRow
from gpuhistory.storage.fleet_reads import claims_by_host, lease_usage, state_since
from gpuhistory.storage.queries import LatestSample, latest_samples

SAMPLER_GONE = "sampler_gone"
SAMPLER_STALE = "sampler_stale"
MONITORING_STOPPED = "monitoring_stopped"
NO_SAMPLER = "no_sampler"
STALE_REASONS = (SAMPLER_GONE, MONITORING_STOPPED, SAMPLER_STALE, NO_SAMPLER)


def _age_s(now_ms: int, ts_ms: int | None) -> float | None:
    return None if ts_ms is None else round(max(0, now_ms - ts_ms) / 1000, 3)


def _capacity_mb(entry: LatestSample, config: Config) -> int:
    """What the card can lease (the lease manager's rule): none for a recorded card."""
    if entry.gpu.backend in RECORDED_BACKENDS:
        return 0
    total = entry.gpu.memory_total_mib
    if total is None and entry.reading is not None:
        total = entry.reading.memory_total_mib
    return lease_capacity_mb(total, config.memory_limit_mb, config.memory_reserve_mb)


def gpu_row(conn: sa.Connection, entry: LatestSample, now_ms: int, config: Config,
            since_ms: int | None, usage: tuple[int, int]) -> dict[str, Any]:
    """One GPU, compact: identity, raw and effective state, the readings the fleet table
    sorts by, how long it has been in its state, and its leases."""
    advice = throttle_doc(conn, entry, now_ms, config)  # no statement: the entry has all
    r = entry.reading
    total = None if r is None else r.memory_total_mib
    used = None if r is None else r.memory_used_mib
    return {
        "gpu_id": entry.gpu.index, "uuid": entry.gpu.uuid, "name": entry.gpu.name,
        "state": advice["state"], "effective_state": advice["effective_state"],
        "speed_multiplier": advice["speed_multiplier"],
        "cooldown_remaining_seconds": advice["cooldown_remaining_seconds"],
        "temperature_celsius": None if r is None else r.temperature_c,
        "memory_used_mb": used, "memory_total_mb": total,
        "memory_percent": (None if used is None or not total
                           else round(100 * used / total, 1)),
        "power_watts": None if r is None else r.power_w,
        "power_limit_watts": None if r is None else r.power_limit_w,
        "timestamp": iso_utc(entry.ts_ms), "sample_age_seconds": _age_s(now_ms, entry.ts_ms),
        "state_since": iso_utc(since_ms), "state_age_seconds": _age_s(now_ms, since_ms),
        "leased_mb": usage[0], "capacity_mb": _capacity_mb(entry, config),
    }


def _stale_reason(claim: ClaimRow | None, tick_age_s: float | None, limit_s: float,
                  now_ms: int, stop_requested: bool) -> str | None:
    if claim is not None and now_ms - claim.heartbeat_ms > claim.stale_after_ms:
        return SAMPLER_GONE
    late = tick_age_s is not None and tick_age_s > limit_s
    if claim is not None:
        if not late:
            return None
        return MONITORING_STOPPED if stop_requested else SAMPLER_STALE
    return NO_SAMPLER if late or tick_age_s is None else None


def _sampler_doc(claim: ClaimRow | None, now_ms: int) -> dict[str, Any] | None:
    if claim is None:
        return None
    return {"process": claim.process, "node": claim.node, "pid": claim.pid,
            "version": claim.version, "acquired_at": iso_utc(claim.acquired_ms),
            "heartbeat_at": iso_utc(claim.heartbeat_ms),
            "heartbeat_age_seconds": _age_s(now_ms, claim.heartbeat_ms),
            "stale_after_seconds": claim.stale_after_ms / 1000}


def _worst(states: list[str]) -> str | None:
    return max(states, key=lambda s: GPUState[s]) if states else None


def host_doc(host: str, rows: list[dict[str, Any]], entries: list[LatestSample],
             claim: ClaimRow | None, now_ms: int, interval_s: float,
             stop_requested: bool, active_leases: int) -> dict[str, Any]:
    """One host's summary from its GPUs' compact rows."""
    newest = max((e.ts_ms for e in entries if e.ts_ms is not None), default=None)
    recorded = claim is None and all(e.gpu.backend in RECORDED_BACKENDS for e in entries)
    tick_age = _age_s(now_ms, newest)
    reason = None if recorded else _stale_reason(claim, tick_age, stale_after(interval_s),
                                                 now_ms, stop_requested)
    effective = [r["effective_state"] for r in rows]
    return {
        "host": host, "recorded": recorded, "gpu_count": len(rows),
        "available_gpus": sum(r["state"] != GPUState.UNAVAILABLE.name for r in rows),
        "worst_state": _worst(effective), "worst_raw_state": _worst([r["state"] for r in rows]),
        "states": {s.name: n for s in GPUState if (n := Counter(effective)[s.name])},
        "last_tick": iso_utc(newest), "last_tick_age_seconds": tick_age,
        "stale": reason is not None, "stale_reason": reason,
        "sampler": _sampler_doc(claim, now_ms),
        "leases": {"active": active_leases, "used_mb": sum(r["leased_mb"] for r in rows),
                   "capacity_mb": sum(r["capacity_mb"] for r in rows)},
    }


def fleet_hosts(conn: sa.Connection, host: str | None, now_ms: int, config: Config,
                with_gpus: bool = False, projection: StatusProjection | None = None,
                ) -> dict[str, Any]:
    """Every host in the database (``host`` None), or one, ordered by name; with
    ``with_gpus``, each host's GPUs as compact rows. Five statements, whatever the fleet;
    three with a status ``projection`` (the GPUs' entries and lease totals come from it, so
    this answer and ``status/all`` agree)."""
    if projection is not None:
        entries = projection.entries(host, now_ms)
        usage = projection.lease_usage(now_ms)
    else:
        entries = latest_samples(conn, host, now_ms=now_ms)
        usage = lease_usage(conn, host, now_ms)
    claims = claims_by_host(conn, host)
    since = state_since(conn, host)
    request = last_request(conn)
    stop_requested = request is not None and request[0] == str(EventKind.MONITORING_STOPPED)
    by_host: dict[str, list[LatestSample]] = {}
    for entry in entries:
        by_host.setdefault(entry.gpu.host, []).append(entry)
    interval = config.monitor_interval
    hosts = []
    for name in sorted(set(by_host) | set(claims)):  # a claimed host may have no GPU yet
        group = by_host.get(name, [])
        rows = [gpu_row(conn, e, now_ms, config, since.get(e.gpu.id),
                        usage.get(e.gpu.id, (0, 0))) for e in group]
        doc = host_doc(name, rows, group, claims.get(name), now_ms, interval, stop_requested,
                       sum(usage.get(e.gpu.id, (0, 0))[1] for e in group))
        if with_gpus:
            doc["gpus"] = rows
        hosts.append(doc)
    return {"timestamp": iso_utc(now_ms), "interval_seconds": interval,
            "stale_after_seconds": stale_after(interval), "count": len(hosts),
            "gpu_count": sum(h["gpu_count"] for h in hosts),
            "stale_count": sum(h["stale"] for h in hosts), "hosts": hosts}
