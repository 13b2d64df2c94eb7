"""Who is on each GPU, end to end: the fake pynvml's process lists, attributed from a fake
/proc tree, through the sampler into the log and out through status and status/all, the
processes search (GET /api/gpu/processes), /metrics, the CLI (``status -p``) and the
post-mortem of an overheat (the simulator, replaying the fleet trace)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from gpuhistory.analytics.incidents import IncidentDetector
from gpuhistory.cli.main import cli
from gpuhistory.clock import FakeClock, iso_utc
from gpuhistory.sampling.nvml import NvmlBackend
from gpuhistory.sampling.sim import SIM_PID_BASE
from tests.fake_proc import FakeProc
from tests.fake_pynvml import MIB, FakeNvml, scenario
from tests.test_hardware import make_sampler
from tests.test_metrics_endpoint import scrape_url

pytestmark = pytest.mark.postgres

CID = "3f4a" * 16
POD = "0f1d2c3b-4a5e-6f70-8192-a3b4c5d6e7f8"
SLURM = "0::/system.slice/slurmstepd.scope/job_4711/step_{step}/user/task_0"


class Cluster:
    """Four fake H100s sampled into the test's database, served over real HTTP.

    Alice's Slurm job 4711 runs step 0 on GPU 2 (it ends), then step 1 on GPUs 0 and 1;
    bob's Docker container runs on GPU 0; a pod's container on GPU 3.
    """

    def __init__(self, engine, clock: FakeClock, live_api, root: Path) -> None:
        self.clock = clock
        self.proc = FakeProc(root)
        self.proc.add(90, name="python", uid=1000, cgroup=SLURM.format(step=0))
        for pid in (100, 101):
            self.proc.add(pid, name="python", uid=1000, cgroup=SLURM.format(step=1))
        self.proc.add(102, name="infer", uid=1001, cgroup=f"0::/system.slice/docker-{CID}.scope")
        self.proc.add(103, name="server", uid=1001,
                      cgroup=f"0::/kubepods/burstable/pod{POD}/{'9' * 64}")
        self.nvml: FakeNvml = scenario("four_h100")
        self.backend = NvmlBackend(nvml=self.nvml, clock=clock,  # type: ignore[arg-type]
                                   process_names=True, proc=self.proc.reader())
        self.sampler = make_sampler(engine, clock, self.backend)
        self.set(2, [(90, 30_000)])
        self.t0 = clock.now_ms()
        self.tick()
        self.set(2, [])
        self.tick()
        self.step1 = clock.now_ms()
        self.set(0, [(100, 40_000), (102, 2_000)])
        self.set(1, [(101, 41_000)])
        self.set(3, [(103, 512)])
        self.tick()
        self.tick()
        self.url = live_api(self.sampler).url

    def set(self, index: int, processes: list[tuple[int, int]]) -> None:
        self.nvml.devices[index].processes = [(pid, mib * MIB) for pid, mib in processes]

    def tick(self) -> None:
        self.sampler.tick()
        self.clock.advance(1)

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", params=params, timeout=10)


@pytest.fixture
def cluster(engine, clock, live_api, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(engine, clock, live_api, tmp_path / "proc")
    yield c
    c.backend.close()


def _who(p: dict[str, Any]) -> tuple[Any, ...]:
    return (p["pid"], p["user"], p["slurm_job_id"], p["container_id"], p["used_memory_mb"])


def test_status_lists_who_is_on_each_gpu(cluster: Cluster) -> None:
    """status and status/all carry each GPU's running processes, largest first, with user,
    uid, job, step, container, pod and unit; with ``at``, those running then."""
    one = cluster.get("/api/gpu/status", gpu_id=0).json()
    assert [_who(p) for p in one["processes"]] == [
        (100, "alice", "4711", None, 40_000), (102, "bob", None, CID, 2_000)]
    first = one["processes"][0]
    assert (first["uid"], first["slurm_step"], first["name"], first["running"]) == (
        1000, "1", "python", True)
    every = cluster.get("/api/gpu/status/all").json()
    by_gpu = {g["gpu_id"]: g["processes"] for g in every["gpus"]}
    assert [_who(p) for p in by_gpu[1]] == [(101, "alice", "4711", None, 41_000)]
    assert by_gpu[2] == []
    (pod,) = by_gpu[3]
    assert (pod["pod_uid"], pod["container_id"], pod["user"]) == (POD, "9" * 64, "bob")
    then = cluster.get("/api/gpu/status", gpu_id=2, at=iso_utc(cluster.t0)).json()
    assert [(p["pid"], p["slurm_step"], p["running"]) for p in then["processes"]] == [
        (90, "0", False)]


def test_which_gpus_did_job_4711_use(cluster: Cluster) -> None:
    """job=4711: GPU 2 (ended), then GPUs 0 and 1 (running), when each was first and last
    seen and the most memory one of its processes held — and only the job's processes."""
    body = cluster.get("/api/gpu/processes", job="4711").json()
    assert body["count"] == 3 and body["truncated"] is False
    assert [(p["gpu_id"], p["pid"], p["slurm_step"]) for p in body["processes"]] == [
        (2, 90, "0"), (0, 100, "1"), (1, 101, "1")]
    use = {g["gpu_id"]: g for g in body["gpus"]}
    assert set(use) == {0, 1, 2}
    assert (use[2]["first_seen_at"], use[2]["ended_at"], use[2]["running"]) == (
        iso_utc(cluster.t0), iso_utc(cluster.t0 + 1000), False)
    assert (use[0]["first_seen_at"], use[0]["ended_at"], use[0]["running"]) == (
        iso_utc(cluster.step1), None, True)
    assert (use[0]["peak_process_memory_mb"], use[1]["peak_process_memory_mb"]) == (
        40_000, 41_000)
    assert use[0]["uuid"] == "GPU-fake-h100-0000" and use[0]["processes"] == 1


def test_search_by_user_uid_container_gpu_and_time(cluster: Cluster) -> None:
    """user by name or uid, a container by its first 12 digits (any case), one GPU, a time
    window, and a limit that says it cut the list."""
    def pids(**params: Any) -> list[int]:
        response = cluster.get("/api/gpu/processes", **params)
        assert response.status_code == 200, response.text
        return [p["pid"] for p in response.json()["processes"]]

    assert pids(user="bob") == [102, 103]
    assert pids(user="1001") == [102, 103]
    assert pids(user="alice", gpu_id=0) == [100]
    assert pids(container=CID[:12].upper()) == [102]
    assert pids(user="carol") == []
    assert pids(until=iso_utc(cluster.t0 + 500)) == [90]  # before step 1 started
    assert pids(since=iso_utc(cluster.step1)) == [100, 102, 101, 103]  # 90 had ended
    assert pids(uuid="GPU-fake-h100-0002") == [90]
    cut = cluster.get("/api/gpu/processes", limit=2).json()
    assert (cut["count"], cut["truncated"], [p["pid"] for p in cut["processes"]]) == (
        2, True, [90, 100])


@pytest.mark.parametrize(("params", "status", "field"), [
    ({"job": "abc"}, 422, "job"),
    ({"job": "4711.0"}, 422, "job"),
    ({"container": "xyz!"}, 422, "container"),
    ({"container": "3f4"}, 422, "container"),
    ({"user": "al ice"}, 422, "user"),
    ({"user": "a" * 65}, 422, "user"),
    ({"since": "yesterday"}, 400, "since"),
    ({"limit": "0"}, 422, "limit"),
    ({"limit": "10001"}, 422, "limit"),
    ({"pid": "4"}, 400, "pid"),
    ({"gpu_id": "-1"}, 422, "gpu_id"),
], ids=["job_letters", "job_with_step", "container_not_hex", "container_too_short",
        "user_with_space", "user_too_long", "since_unparsable", "limit_zero", "limit_too_big",
        "unknown_parameter", "gpu_negative"])
def test_bad_search_input_is_a_clear_4xx(cluster: Cluster, params: dict[str, str],
                                         status: int, field: str) -> None:
    """Each bad input in the one error shape, naming the field: 400 for what cannot be
    parsed or is not a parameter, 422 for a value outside what is allowed."""
    response = cluster.get("/api/gpu/processes", **params)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == ("invalid_argument" if status == 400 else "validation_failed")
    assert field in json.dumps(error["details"])


def test_the_python_client_asks_which_gpus_a_job_used(cluster: Cluster) -> None:
    """``Client.processes(job=4711)``: the same answer as the endpoint; a bad job id is an
    ApiError with the API's code."""
    from gpuhistory.client import ApiError, Client

    client = Client(cluster.url)
    answer = client.processes(job=4711)
    assert [g["gpu_id"] for g in answer["gpus"]] == [0, 1, 2]
    assert answer == cluster.get("/api/gpu/processes", job="4711").json()
    assert [p["pid"] for p in client.processes(user=1001, since=cluster.step1 / 1000)[
        "processes"]] == [102, 103]
    with pytest.raises(ApiError) as raised:
        client.processes(job="4711_3")
    assert (raised.value.status, raised.value.code) == (422, "validation_failed")


def test_search_range_and_unknown_gpu(cluster: Cluster) -> None:
    """since after until is 422; a GPU never recorded is 404 gpu_not_found; the endpoint
    and its parameters are in the OpenAPI document."""
    response = cluster.get("/api/gpu/processes", since="2026-01-02T00:00:00Z",
                           until="2026-01-01T00:00:00Z")
    assert response.status_code == 422 and "since" in response.json()["error"]["message"]
    for params in ({"gpu_id": 7}, {"uuid": "GPU-nope"}):
        missing = cluster.get("/api/gpu/processes", **params)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "gpu_not_found"
    doc = cluster.get("/api/openapi.json").json()
    operation = doc["paths"]["/api/gpu/processes"]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert {"since", "until", "user", "job", "container", "gpu_id", "uuid", "host",
            "limit"} <= names
    assert {"200", "404", "422"} <= set(operation["responses"])


def test_metrics_label_each_live_process_with_user_job_and_container(cluster: Cluster) -> None:
    """gpuhistory_process_memory_bytes has a series per live process with user, job,
    container, pod and unit; a process that exits takes its series with it."""
    _, samples = scrape_url(cluster.url)
    series = {s.labels["pid"]: s for s in samples["gpuhistory_process_memory_bytes"]}
    assert set(series) == {"100", "101", "102", "103"}
    alice = series["100"].labels
    assert (alice["user"], alice["job"], alice["container"], alice["gpu"]) == (
        "alice", "4711", "", "0")
    assert alice["unit"] == "slurmstepd.scope"
    bob = series["102"].labels
    assert (bob["user"], bob["job"], bob["container"]) == ("bob", "", CID)
    assert series["103"].labels["pod"] == POD
    assert series["100"].value == 40_000 * MIB
    cluster.set(0, [(102, 2_000)])
    cluster.tick()
    _, samples = scrape_url(cluster.url)
    assert {s.labels["pid"] for s in samples["gpuhistory_process_memory_bytes"]} == {
        "101", "102", "103"}


@pytest.mark.parametrize("source", ["url", "db"])
def test_cli_status_p_shows_user_and_job_or_container(cluster: Cluster, db_url: str,
                                                      source: str) -> None:
    """``status -p``, from the server (--url) or the database (--db): a USER and a
    JOB/CONTAINER column, each process under its GPU; ``--json`` carries the processes
    with their attribution; without -p there are none."""
    where = ["--url", cluster.url] if source == "url" else ["--db", db_url, "--host",
                                                              "testhost"]
    done = CliRunner().invoke(cli, ["status", *where, "-p"])
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0].split()[:5] == ["GPU", "NAME", "USER", "JOB/CONTAINER", "STATE"]
    rows = [line.split() for line in lines if line.lstrip().startswith("└")]
    assert rows[0][:5] == ["└", "100", "python", "alice", "job"] and rows[0][5] == "4711.1"
    assert rows[1][:5] == ["└", "102", "infer", "bob", "ctr"] and rows[1][5] == CID[:12]
    assert ["└", "103", "server", "bob", "pod", f"{POD[:8]}/{'9' * 12}"] == rows[3][:6]
    as_json = CliRunner().invoke(cli, ["status", *where, "-p", "--json"])
    doc = json.loads(as_json.output)
    by_gpu = {g["gpu_id"]: g["processes"] for g in doc["gpus"]}
    assert [(p["pid"], p["user"], p["slurm_job_id"]) for p in by_gpu[1]] == [
        (101, "alice", "4711")]
    plain = CliRunner().invoke(cli, ["status", *where])
    assert "USER" not in plain.output and "└" not in plain.output
    assert "processes" not in json.loads(
        CliRunner().invoke(cli, ["status", *where, "--json"]).output)["gpus"][0]


def test_post_mortem_says_whose_job_was_running(make_app, tmp_path: Path) -> None:
    """The simulator's GPU 1 overheats while alice's job 4711 runs on it: the post-mortem's
    summary says "job 4711 of alice was running" and lists the process with its owner; the
    CLI's incident text shows the user and the job."""
    proc = FakeProc(tmp_path / "proc")
    proc.add(SIM_PID_BASE + 1, uid=1000, cgroup=["4:memory:/slurm/uid_1000/job_4711/step_0"])
    app = make_app(proc=proc.reader())
    app.tick(1, times=230)
    IncidentDetector(app.engine, app.clock, app.config).run()
    (incident,) = requests.get(f"{app.url}/api/gpu/incidents", params={"gpu_id": 1},
                               timeout=10).json()["incidents"]
    doc = requests.get(f"{app.url}/api/gpu/incidents/{incident['id']}", timeout=10).json()
    assert doc["summary"].endswith("; job 4711 of alice was running")
    (p,) = doc["processes"]
    assert (p["pid"], p["user"], p["slurm_job_id"], p["slurm_step"]) == (
        SIM_PID_BASE + 1, "alice", "4711", "0")
    text = CliRunner().invoke(cli, ["incidents", "--url", app.url, "show",
                                    str(incident["id"])])
    assert text.exit_code == 0, text.output
    assert f"{SIM_PID_BASE + 1}  python3  alice  job 4711.0" in text.output


def test_the_running_clause_names_each_owner_once_and_counts_the_rest() -> None:
    """One clause per job, pod, container or service however many processes it had; a
    process with no owner by name and pid; past five, the rest are counted."""
    from gpuhistory.domain.processes import running_clause

    job = {"pid": 1, "name": "python", "user": "alice", "slurm_job_id": "4711"}
    assert running_clause([job, {**job, "pid": 2}]) == "job 4711 of alice was running"
    assert running_clause([job, {"pid": 9, "name": "nvtop"},
                           {"pid": 3, "user": "bob", "pod_uid": POD, "container_id": CID},
                           {"pid": 4, "systemd_unit": "ollama.service", "user": "ollama"},
                           {"pid": 5, "systemd_unit": "session-2.scope", "name": "sh"}]) == (
        "job 4711 of alice, nvtop (pid 9), pod 0f1d2c3b of bob, ollama.service of ollama "
        "and sh (pid 5) were running")
    many = [{"pid": i, "slurm_job_id": str(i)} for i in range(8)]
    assert running_clause(many) == ("job 0, job 1, job 2, job 3, job 4 and 3 more "
                                    "were running")
    assert running_clause([]) is None
