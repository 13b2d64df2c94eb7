"""Many hosts, one PostgreSQL database: three `gpuhistory sampler` processes with their own
host names and traces and one `gpuhistory api`, as real subprocesses over real HTTP. The
fleet view shows every host's GPUs, the host filter isolates them, and leases are per host
and GPU."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner

from gpuhistory import __version__
from gpuhistory.cli.main import cli
from tests.conftest import FLEET4, H100_BURN
from tests.test_roles import poll, stop
from tests.test_serve import free_port, gpuhistory, wait_ready

pytestmark = pytest.mark.slow

# host → (trace, simulated GPUs): a and c replay the same trace, so their GPUs share UUIDs
# (GPU-sim-fleet4_derived-N) and only the host tells them apart; b has two GPUs of another.
HOSTS = {"node-a": (FLEET4, 4), "node-b": (H100_BURN, 2), "node-c": (FLEET4, 3)}
CAPACITY = 81559 - 512  # the traced H100's MiB less memory_reserve_mb


def test_three_samplers_one_api_one_database(fresh_postgres_url: str) -> None:
    url = fresh_postgres_url
    # No `db upgrade` first: four processes migrate one fresh database at once.
    samplers = {host: subprocess.Popen(
        gpuhistory("sampler", "--db", url, "--host-name", host, "--backend", "sim",
                   "--trace", str(trace), "--sim-gpus", str(count), "--interval", "0.2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for host, (trace, count) in HOSTS.items()}
    port = free_port()
    api = subprocess.Popen(
        gpuhistory("api", "--db", url, "--host-name", "node-a", "--port", str(port),
                   "--threads", "4"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    procs = [*samplers.values(), api]

    def get(path: str, **params: Any) -> requests.Response:
        return requests.get(f"{base}{path}", params=params, timeout=10)

    def post(path: str, **body: Any) -> requests.Response:
        return requests.post(f"{base}{path}", json=body, timeout=10)

    try:
        wait_ready(base, api, timeout=60)

        def every_gpu_sampled() -> dict[str, Any] | None:
            for host, proc in samplers.items():
                assert proc.poll() is None, f"{host}: {proc.stderr.read()}"
            fleet = get("/api/gpu/status/all", host="*").json()
            sampled = [g for g in fleet["gpus"] if g["timestamp"] is not None]
            return fleet if len(sampled) == sum(n for _, n in HOSTS.values()) else None

        fleet = poll(every_gpu_sampled, timeout=60, what="every host's GPUs to be sampled")

        # The fleet view: every host's GPUs, ordered by host then index, each naming its host.
        assert fleet["host"] == "*" and fleet["hosts"] == sorted(HOSTS)
        assert [(g["host"], g["gpu_id"]) for g in fleet["gpus"]] == [
            (host, i) for host, (_, n) in sorted(HOSTS.items()) for i in range(n)]
        uuids = {(g["host"], g["gpu_id"]): g["uuid"] for g in fleet["gpus"]}
        assert uuids["node-a", 0] == uuids["node-c", 0] == "GPU-sim-fleet4_derived-0"
        assert uuids["node-b", 0] == "GPU-sim-h100_burn-0"
        assert all(g["backend"] == "sim" and g["memory"]["capacity_mb"] == CAPACITY
                   for g in fleet["gpus"])

        # The fleet's hosts: each sampler process holds its host's claim, with its version.
        hosts = get("/api/fleet/hosts").json()
        assert [h["host"] for h in hosts["hosts"]] == sorted(HOSTS)
        for h in hosts["hosts"]:
            assert h["gpu_count"] == HOSTS[h["host"]][1] and not h["recorded"]
            assert (h["sampler"]["process"], h["sampler"]["version"]) == ("sampler",
                                                                          __version__)

        # The host filter isolates: by default the API's own host, else the one named.
        own = get("/api/gpu/status/all").json()
        assert own["host"] == "node-a" and own["count"] == 4
        only_b = get("/api/gpu/status/all", host="node-b").json()
        assert (only_b["hosts"], only_b["count"]) == (["node-b"], 2)
        assert {g["host"] for g in only_b["gpus"]} == {"node-b"}
        assert get("/api/gpu/status/all", host="node-z").json()["count"] == 0
        c2 = get("/api/gpu/status", host="node-c", gpu_id=2).json()
        assert (c2["host"], c2["gpu_id"], c2["uuid"]) == ("node-c", 2,
                                                          "GPU-sim-fleet4_derived-2")
        missing = get("/api/gpu/status", host="node-b", gpu_id=3)
        assert missing.status_code == 404
        assert missing.json()["error"]["details"] == {"gpu_id": 3, "host": "node-b"}
        assert get("/api/gpu/status", host="*").status_code == 422  # one GPU, one host
        b_metrics = get("/api/gpu/metrics", host="node-b", gpu_id=0).json()
        assert b_metrics["uuid"] == "GPU-sim-h100_burn-0"
        trend = get("/api/gpu/temperature/trend", host="node-c", gpu_id=1).json()
        assert trend["samples"] >= 1
        history = get("/api/gpu/metrics/history", host="node-b", gpu_id=1).json()
        assert history["count"] >= 1

        # Leases are per host and GPU: filling node-a's GPU 0 leaves node-b's GPU 0 alone,
        # and an allocation id is unique per host only.
        full = post("/api/gpu/memory/allocate", allocation_id="job-1", memory_mb=CAPACITY,
                    gpu_id=0, host="node-a", ttl_seconds=600, owner="fleet-test")
        assert full.status_code == 201, full.text
        assert full.json()["host"] == "node-a"
        a0 = get("/api/gpu/memory/available", host="node-a", gpu_id=0).json()
        b0 = get("/api/gpu/memory/available", host="node-b", gpu_id=0).json()
        assert (a0["available_mb"], a0["active_leases"]) == (0, 1)
        assert (b0["available_mb"], b0["active_leases"]) == (CAPACITY, 0)
        refused = post("/api/gpu/memory/allocate", allocation_id="job-2", memory_mb=1,
                       gpu_id=0)  # node-a by default: full
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "over_capacity"
        on_b = post("/api/gpu/memory/allocate", allocation_id="job-1", memory_mb=1024,
                    gpu_id=0, host="node-b", ttl_seconds=600)
        assert on_b.status_code == 201, on_b.text
        fleet = get("/api/gpu/status/all", host="*").json()
        leased = {(g["host"], g["gpu_id"]): g["memory"]["leased_mb"] for g in fleet["gpus"]}
        assert leased == {**{key: 0 for key in uuids}, ("node-a", 0): CAPACITY,
                          ("node-b", 0): 1024}
        listed = get("/api/gpu/memory/leases", host="*").json()["leases"]
        assert sorted((x["host"], x["allocation_id"]) for x in listed) == [
            ("node-a", "job-1"), ("node-b", "job-1")]
        assert [x["host"] for x in get("/api/gpu/memory/leases").json()["leases"]] == ["node-a"]
        released = post("/api/gpu/memory/deallocate", allocation_id="job-1", host="node-b",
                        lease_token=on_b.json()["lease_token"])
        assert released.status_code == 200 and released.json()["status"] == "released"
        assert get("/api/gpu/memory/available", host="node-a",
                   gpu_id=0).json()["available_mb"] == 0  # node-a's lease of that id stays

        # The CLI reads the same fleet from the database and through the API, and leases
        # on a named host.
        runner = CliRunner()
        from_db = runner.invoke(cli, ["status", "--db", url, "--host", "*", "--json"])
        assert from_db.exit_code == 0, from_db.output
        assert sorted({g["host"] for g in json.loads(from_db.output)["gpus"]}) == sorted(HOSTS)
        table = runner.invoke(cli, ["status", "--db", url, "--host", "*"]).output
        assert table.startswith("HOST") and table.count("node-c") == 3
        from_api = runner.invoke(cli, ["status", "--url", base, "--host", "node-b"])
        assert from_api.exit_code == 0, from_api.output
        assert "h100_burn" in from_api.output and "fleet4" not in from_api.output
        acquired = runner.invoke(cli, ["lease", "acquire", "--url", base, "--host", "node-c",
                                       "--gpu-id", "2", "--memory-mb", "512", "--json"])
        assert acquired.exit_code == 0, acquired.output
        assert json.loads(acquired.output)["host"] == "node-c"
        every = runner.invoke(cli, ["lease", "list", "--url", base, "--host", "*", "--json"])
        assert sorted(x["host"] for x in json.loads(every.output)["leases"]) == [
            "node-a", "node-b", "node-c"]
        only_c = runner.invoke(cli, ["lease", "list", "--url", base, "--host", "node-c",
                                     "--json"])
        assert [x["gpu_id"] for x in json.loads(only_c.output)["leases"]] == [2]
        none_on_z = runner.invoke(cli, ["incidents", "--url", base, "--host", "node-z",
                                        "--json"])
        assert none_on_z.exit_code == 0 and json.loads(none_on_z.output)["count"] == 0
    finally:
        stderrs = [stop(proc) for proc in reversed(procs)]
    for proc, stderr in zip(reversed(procs), stderrs, strict=True):
        assert proc.returncode == 0, stderr

    # In the database: one gpus row per (host, UUID), and each process started and stopped.
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            per_host = dict(conn.execute(sa.text(
                "SELECT host, count(*) FROM gpus GROUP BY host")).all())
            roles = conn.execute(sa.text(
                "SELECT payload FROM events WHERE kind = 'service_stopped'")).scalars().all()
    finally:
        engine.dispose()
    assert per_host == {host: n for host, (_, n) in HOSTS.items()}
    assert sorted(r["role"] for r in roles) == ["api", "sampler", "sampler", "sampler"]
