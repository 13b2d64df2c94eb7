"""GET /api/fleet/hosts over real HTTP on SQLite and PostgreSQL: simulated hosts, each with
its own sampler and claim on one database and one fake clock. Hosts are listed with their
worst effective state, sampler version and leases; a host whose sampler stopped is stale
(by its tick age and its claim's heartbeat, time injected); an imported host is recorded;
the answer costs the same few statements for 3 hosts or 125. And the state shown never
contradicts the throttle advice: status documents, the fleet rows and the CLI table show
the effective state, with the raw one beside it when they differ."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from gpuhistory import __version__
from gpuhistory.api.freshness import stale_after
from gpuhistory.cli.output import render_text, state_cell, status_table
from gpuhistory.clock import FakeClock
from gpuhistory.domain.states import SPEED_MULTIPLIER, GPUState
from gpuhistory.importer import import_file
from gpuhistory.sampling.claim import STALE_AFTER_MS
from tests.conftest import FLEET4, LiveServer, build_parts
from tests.sim_fleet import SimFleet

pytestmark = pytest.mark.postgres

GPUS = 8


class Fleet:
    """Three simulated hosts and one API (answering as node-001) over real HTTP."""

    def __init__(self, engine: sa.Engine, clock: FakeClock, hosts: int = 3) -> None:
        self.engine, self.clock = engine, clock
        parts = build_parts(engine, clock, "api", host_name="node-001")
        self.config = parts.config
        self.sim = SimFleet(engine, clock, self.config, hosts=hosts, gpus=GPUS)
        self.sim.tick(1, times=3)
        self.server = LiveServer(parts.app)
        self.url = self.server.url

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", params=params, timeout=30)

    def hosts(self, **params: Any) -> dict[str, Any]:
        answer = self.get("/api/fleet/hosts", **params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def by_name(self, **params: Any) -> dict[str, dict[str, Any]]:
        return {h["host"]: h for h in self.hosts(**params)["hosts"]}


@pytest.fixture
def fleet(engine: sa.Engine, clock: FakeClock) -> Iterator[Fleet]:
    f = Fleet(engine, clock)
    yield f
    f.server.close()


def test_hosts_listed_with_worst_effective_state_sampler_version_and_leases(fleet) -> None:
    """Each host: 8 GPUs, the worst effective state of its GPUs (as status/all says them),
    its sampler's process and version, and leases used/capacity in MiB — a lease granted on
    one host counts on that host only."""
    fleet.sim.tick(1, times=70)  # node-001 CRITICAL, node-003 THROTTLED at worst
    grant = requests.post(f"{fleet.url}/api/gpu/memory/allocate", json={
        "allocation_id": "train-1", "memory_mb": 20480, "gpu_id": 3, "host": "node-002",
        "ttl_seconds": 600}, timeout=10)
    assert grant.status_code == 201, grant.text
    requests.post(f"{fleet.url}/api/gpu/memory/allocate", json={
        "allocation_id": "train-2", "memory_mb": 1024, "gpu_id": 5, "host": "node-002"},
        timeout=10).raise_for_status()
    status = fleet.get("/api/gpu/status/all", host="*").json()["gpus"]
    answer = fleet.hosts()
    assert [h["host"] for h in answer["hosts"]] == ["node-001", "node-002", "node-003"]
    assert (answer["count"], answer["gpu_count"], answer["stale_count"]) == (3, 3 * GPUS, 0)
    for host in answer["hosts"]:
        docs = [d for d in status if d["host"] == host["host"]]
        worst = max((d["effective_state"] for d in docs), key=lambda s: GPUState[s])
        assert (host["gpu_count"], host["available_gpus"]) == (GPUS, GPUS)
        assert host["worst_state"] == worst
        assert sum(host["states"].values()) == GPUS
        assert host["sampler"]["version"] == __version__
        assert host["sampler"]["process"] == "sampler"
        assert (host["recorded"], host["stale"], host["stale_reason"]) == (False, False, None)
        assert host["last_tick_age_seconds"] == 0
        capacity = sum(d["memory"]["capacity_mb"] for d in docs)
        assert capacity > 0 and host["leases"]["capacity_mb"] == capacity
    hosts = {h["host"]: h for h in answer["hosts"]}
    assert hosts["node-002"]["leases"] == {"active": 2, "used_mb": 21504,
                                           "capacity_mb": hosts["node-002"]["leases"]
                                           ["capacity_mb"]}
    assert hosts["node-001"]["leases"]["used_mb"] == hosts["node-003"]["leases"]["used_mb"] == 0
    # The states differ between hosts (they replay the trace from different points), so the
    # worst state is each host's own, not one answer for all.
    assert len({h["worst_state"] for h in answer["hosts"]}) > 1
    # One host, with its GPUs as compact rows that agree with the status documents.
    one = fleet.hosts(host="node-002", gpus="true")
    assert [h["host"] for h in one["hosts"]] == ["node-002"]
    rows = {g["gpu_id"]: g for g in one["hosts"][0]["gpus"]}
    for doc in (d for d in status if d["host"] == "node-002"):
        row = rows[doc["gpu_id"]]
        assert (row["state"], row["effective_state"], row["temperature_celsius"]) == (
            doc["state"], doc["effective_state"], doc["metrics"]["temperature_celsius"])
    assert (rows[3]["leased_mb"], rows[5]["leased_mb"], rows[0]["leased_mb"]) == (20480, 1024, 0)
    assert all(r["state_age_seconds"] is not None for r in rows.values())
    assert "gpus" not in fleet.hosts()["hosts"][0]  # only when asked


def test_a_host_whose_sampler_stopped_is_stale_by_tick_age_and_claim_heartbeat(fleet) -> None:
    """node-002's sampler dies holding its claim, node-003's stops and gives it back. Within
    stale_after(interval) neither is stale; past it node-002 is sampler_stale and node-003
    no_sampler; once node-002's heartbeat is older than the claim's 30 s it is sampler_gone.
    node-001, still sampling, is never stale."""
    interval = fleet.config().monitor_interval
    fleet.sim.stop(["node-002"])
    fleet.sim.stop(["node-003"], release=True)
    fleet.sim.tick(interval, times=2)  # 2 intervals: not yet stale (3 are)
    hosts = fleet.by_name()
    assert [hosts[n]["stale"] for n in ("node-001", "node-002", "node-003")] == [False] * 3
    assert hosts["node-003"]["sampler"] is None
    fleet.sim.tick(interval, times=2)  # 4 intervals: stale
    hosts = fleet.by_name()
    assert hosts["node-002"]["last_tick_age_seconds"] == 4 * interval > stale_after(interval)
    assert (hosts["node-002"]["stale"], hosts["node-002"]["stale_reason"]) == (True,
                                                                            "sampler_stale")
    assert hosts["node-002"]["sampler"]["heartbeat_age_seconds"] == 4 * interval
    assert (hosts["node-003"]["stale"], hosts["node-003"]["stale_reason"]) == (True,
                                                                            "no_sampler")
    assert (hosts["node-001"]["stale"], hosts["node-001"]["last_tick_age_seconds"]) == (False, 0)
    fleet.sim.tick(interval, times=round(STALE_AFTER_MS / 1000 / interval))  # heartbeat > 30 s
    hosts = fleet.by_name()
    assert hosts["node-002"]["stale_reason"] == "sampler_gone"
    assert fleet.hosts()["stale_count"] == 2
    assert not hosts["node-001"]["stale"]


def test_an_imported_host_is_listed_as_recorded_never_stale(fleet) -> None:
    """A host known only from an imported trace: recorded, not stale, no sampler, nothing
    to lease; it sorts among the live hosts by name."""
    import_file(fleet.engine, FLEET4, start_ms=fleet.clock.now_ms() - 3_600_000,
                host="lab-recording", clock=fleet.clock)
    hosts = fleet.by_name()
    assert list(hosts) == ["lab-recording", "node-001", "node-002", "node-003"]
    recorded = hosts["lab-recording"]
    assert (recorded["recorded"], recorded["stale"], recorded["sampler"]) == (True, False, None)
    assert recorded["gpu_count"] == 4 and recorded["last_tick_age_seconds"] > 3000
    assert recorded["leases"] == {"active": 0, "used_mb": 0, "capacity_mb": 0}
    assert not any(hosts[n]["recorded"] for n in ("node-001", "node-002", "node-003"))


def test_the_query_is_validated(fleet) -> None:
    """A host name with '*' or a control character, or too long: 422 validation_failed; an
    unknown parameter or a gpus that is not a boolean: 400 invalid_argument — the API's one
    error shape, naming the field. An unknown host: 200, no hosts."""
    for params, status, code in (
            ({"host": "node*"}, 422, "validation_failed"),
            ({"host": "a\x01b"}, 422, "validation_failed"),
            ({"host": "x" * 256}, 422, "validation_failed"),
            ({"hostname": "node-001"}, 400, "invalid_argument"),
            ({"gpus": "maybe"}, 400, "invalid_argument")):
        answer = fleet.get("/api/fleet/hosts", **params)
        assert answer.status_code == status, (params, answer.text)
        assert answer.json()["error"]["code"] == code, (params, answer.text)
        assert next(iter(params)) in answer.text
    empty = fleet.hosts(host="node-999")
    assert (empty["count"], empty["hosts"]) == (0, [])


def _statements(fleet: Fleet, **params: Any) -> int:
    count = 0

    def counted(*_args: Any) -> None:
        nonlocal count
        count += 1

    sa.event.listen(fleet.engine, "before_cursor_execute", counted)
    try:
        fleet.hosts(**params)
    finally:
        sa.event.remove(fleet.engine, "before_cursor_execute", counted)
    return count


def test_statements_per_answer_do_not_grow_with_the_fleet(fleet) -> None:
    """3 hosts, then 125 hosts x 8 GPUs (1,000 GPUs): the same few statements per answer,
    with or without the GPUs' rows (once the status projection has followed the log:
    that read, once per interval, is bounded too — tests/test_status_projection.py)."""
    fleet.hosts()
    small = (_statements(fleet), _statements(fleet, gpus="true"))
    fleet.sim.add(122)
    fleet.sim.tick(1)
    assert fleet.hosts()["gpu_count"] == 1000
    big = (_statements(fleet), _statements(fleet, gpus="true"))
    assert big == small and max(big) <= 8, (big, small)


def test_the_state_shown_is_the_one_the_advice_follows(fleet) -> None:
    """Tick by tick through the trace: every status document's effective_state is its
    advice's, whose multiplier it implies; the fleet rows say the same; the CLI's STATE cell
    names the effective state, with the raw state beside it when they differ — and that
    case (a cooldown after a hot state) does happen in the run."""
    held = 0
    for _ in range(90):
        fleet.sim.tick(2)
        docs = fleet.get("/api/gpu/status/all", host="*").json()["gpus"]
        rows = {(h["host"], g["gpu_id"]): g
                for h in fleet.hosts(gpus="true")["hosts"] for g in h["gpus"]}
        table = render_text(status_table(docs)).splitlines()[1:]
        for doc, line in zip(docs, table, strict=True):
            t = doc["throttling"]
            effective, raw = doc["effective_state"], doc["state"]
            assert effective == t["effective_state"]
            assert t["speed_multiplier"] == SPEED_MULTIPLIER[GPUState[effective]]
            row = rows[doc["host"], doc["gpu_id"]]
            assert (row["effective_state"], row["state"]) == (effective, raw)
            text, shown = state_cell(doc)
            assert shown == effective and text.split()[0] == effective
            if effective != raw:
                held += 1
                assert text == f"{effective} (raw {raw})" and f"  {text}  " in line
            else:
                assert "(raw " not in line and f"  {effective}  " in line
    assert held > 0, "no GPU was ever held in a cooldown: the case was not exercised"
